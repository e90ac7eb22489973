#include "worker/kernels/cpu/matmul.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "worker/kernels/cpu/quant.h"
#include "worker/kernels/cpu/simd.h"
#include "worker/kernels/cpu/thread_pool.h"

namespace shoal::worker::cpu {
namespace {

constexpr int64_t kRowTile = 16;      // output rows per work unit (fits L1 for reuse)
constexpr int64_t kTokenChunk = 64;   // tokens per work unit (their activations fit L2)
constexpr int kTokenTile = 4;         // tokens computed together per weight row

inline __m256 SumPairsToFloat(__m256i prod16) {
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(prod16, _mm256_set1_epi16(1)));
}

// Weight formats whose block values are signed bytes (Q4_0's q - 8, Q8_0's q): their
// integer dot with the activations needs the sign trick; Q4_1's nibbles are unsigned and
// its min m meets the activations through their block sums instead.
template <DType kType>
constexpr bool kSignedWeights = kType != DType::kQ4_1;

// Unpacks block b of a quantized weight row into 32 bytes (unsigned for Q4_1, signed
// otherwise), its scale and, for Q4_1, the min that multiplies the activations' block sum.
// Q4_0's -8 is applied to the bytes, not folded into the block sum: the integer dot then
// equals GGML's Q4_0·Q8_0 exactly, so the float results are the same numbers.
template <DType kType>
inline __m256i LoadWeightBlock(const std::byte* row, int64_t b, float* scale, float* offset) {
  if constexpr (kType == DType::kQ4_1) {
    const BlockQ4_1& w = reinterpret_cast<const BlockQ4_1*>(row)[b];
    *scale = HalfToFloat(w.d);
    *offset = HalfToFloat(w.m);
    return UnpackNibbles(w.q);
  } else if constexpr (kType == DType::kQ4_0) {
    const BlockQ4_0& w = reinterpret_cast<const BlockQ4_0*>(row)[b];
    *scale = HalfToFloat(w.d);
    *offset = 0.0f;
    return _mm256_sub_epi8(UnpackNibbles(w.q), _mm256_set1_epi8(8));
  } else {
    const BlockQ8_0& w = reinterpret_cast<const BlockQ8_0*>(row)[b];
    *scale = HalfToFloat(w.d);
    *offset = 0.0f;
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.q));
  }
}

// out[r][j] = weight row r · activations a[j], for NR rows and NT tokens at once: each
// weight block is unpacked once per NT tokens and each activation block loaded once per
// NR rows, and the NR·NT accumulators are independent FMA chains. Q4_1's min meets the
// activations through their block sums `s`. Per block and in summation order this is
// GGML's vec_dot for the format (acc += d_w·d_a · int dot in 8 lanes, then the lanes
// summed and the min term added), so results match llama.cpp bit for bit.
template <DType kType, int NR, int NT>
void DotQuantRows(const std::byte* const* rows, const BlockQ8Act* const* a, int64_t nb,
                  float (*out)[kTokenTile]) {
  __m256 acc[NR][NT];
  float offset[NR][NT];
  for (int r = 0; r < NR; ++r) {
    for (int j = 0; j < NT; ++j) {
      acc[r][j] = _mm256_setzero_ps();
      offset[r][j] = 0.0f;
    }
  }
  for (int64_t b = 0; b < nb; ++b) {
    __m256i wq[NR], wu[NR];
    float dw[NR], off[NR];
    for (int r = 0; r < NR; ++r) {
      wq[r] = LoadWeightBlock<kType>(rows[r], b, &dw[r], &off[r]);
      // maddubs multiplies unsigned by signed bytes: Q4_1's nibbles are unsigned already;
      // for signed weights the sign moves onto the activations.
      wu[r] = kSignedWeights<kType> ? _mm256_sign_epi8(wq[r], wq[r]) : wq[r];
    }
    for (int j = 0; j < NT; ++j) {
      const __m256i aq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[j][b].q));
      const float da = a[j][b].d;
      for (int r = 0; r < NR; ++r) {
        const __m256i as = kSignedWeights<kType> ? _mm256_sign_epi8(aq, wq[r]) : aq;
        const __m256 p = SumPairsToFloat(_mm256_maddubs_epi16(wu[r], as));
        acc[r][j] = _mm256_fmadd_ps(p, _mm256_set1_ps(dw[r] * da), acc[r][j]);
        if constexpr (!kSignedWeights<kType>) offset[r][j] += off[r] * a[j][b].s;
      }
    }
  }
  for (int r = 0; r < NR; ++r) {
    for (int j = 0; j < NT; ++j) out[r][j] = HorizontalSum8(acc[r][j]) + offset[r][j];
  }
}

template <DType kType>
inline __m256 Load8(const std::byte* row, int64_t i) {
  if constexpr (kType == DType::kF32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(row) + i);
  } else if constexpr (kType == DType::kF16) {
    return _mm256_cvtph_ps(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(reinterpret_cast<const uint16_t*>(row) + i)));
  } else {
    const __m128i v =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(reinterpret_cast<const uint16_t*>(row) + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
  }
}

template <DType kType>
inline float Load1(const std::byte* row, int64_t i) {
  if constexpr (kType == DType::kF32) return reinterpret_cast<const float*>(row)[i];
  const uint16_t h = reinterpret_cast<const uint16_t*>(row)[i];
  if constexpr (kType == DType::kF16) return HalfToFloat(h);
  return Bf16ToFloat(h);
}

template <DType kType, int NT>
void DotFloatRow(const std::byte* wrow, const float* const* x, int64_t n, float* out) {
  __m256 acc[NT], acc2[NT];
  for (int j = 0; j < NT; ++j) acc[j] = acc2[j] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 w0 = Load8<kType>(wrow, i), w1 = Load8<kType>(wrow, i + 8);
    for (int j = 0; j < NT; ++j) {
      acc[j] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x[j] + i), acc[j]);
      acc2[j] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x[j] + i + 8), acc2[j]);
    }
  }
  for (; i + 8 <= n; i += 8) {
    const __m256 w0 = Load8<kType>(wrow, i);
    for (int j = 0; j < NT; ++j) acc[j] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x[j] + i), acc[j]);
  }
  for (int j = 0; j < NT; ++j) out[j] = HorizontalSum8(_mm256_add_ps(acc[j], acc2[j]));
  for (; i < n; ++i) {
    const float w = Load1<kType>(wrow, i);
    for (int j = 0; j < NT; ++j) out[j] += w * x[j][i];
  }
}

// The inputs of one Matmul call as the tile loop sees them.
struct Inputs {
  const float* x;
  int64_t ldx;
  const BlockQ8Act* xq;  // [T, blocks_per_row] or null
  int64_t xq_stride;     // blocks per token row
};

template <DType kType, int NR, int NT>
void DotRows(const WeightMatrix& w, int64_t r, const Inputs& in, int64_t t,
             float (*out)[kTokenTile]) {
  if constexpr (IsQuantized(kType)) {
    const BlockQ8Act* a[NT];
    for (int j = 0; j < NT; ++j) a[j] = in.xq + (t + j) * in.xq_stride;
    const std::byte* rows[NR];
    for (int i = 0; i < NR; ++i) rows[i] = w.row(r + i);
    DotQuantRows<kType, NR, NT>(rows, a, w.cols / 32, out);
  } else {
    static_assert(NR == 1);
    const float* a[NT];
    for (int j = 0; j < NT; ++j) a[j] = in.x + (t + j) * in.ldx;
    DotFloatRow<kType, NT>(w.row(r), a, w.cols, out[0]);
  }
}

// Rows computed together. Two or four rows per step (sharing activation loads) measured no
// faster on Zen 3 for Q4 weights and markedly slower for Q8_0 (34-byte blocks), so one
// row at a time it is; DotQuantRows keeps the row count as a parameter for other CPUs.
template <DType kType, int NT>
constexpr int RowsPerStep() {
  return 1;
}

template <DType kType, int NT>
void RunTokenTile(const MatmulTarget& tg, const Inputs& in, int64_t r0, int64_t r1, int64_t t) {
  constexpr int NR = RowsPerStep<kType, NT>();
  float out[NR][kTokenTile];
  auto store = [&](int64_t r, int nr) {
    for (int i = 0; i < nr; ++i) {
      const float bias = tg.bias != nullptr ? tg.bias[r + i] : 0.0f;
      for (int j = 0; j < NT; ++j) {
        float* y = tg.y + (t + j) * tg.ldy + r + i;
        *y = (tg.accumulate ? *y : 0.0f) + out[i][j] + bias;
      }
    }
  };
  int64_t r = r0;
  for (; r + NR <= r1; r += NR) {
    DotRows<kType, NR, NT>(*tg.w, r, in, t, out);
    store(r, NR);
  }
  for (; r < r1; ++r) {
    DotRows<kType, 1, NT>(*tg.w, r, in, t, out);
    store(r, 1);
  }
}

template <DType kType>
void RunTile(const MatmulTarget& tg, const Inputs& in, int64_t r0, int64_t r1, int64_t t0,
             int64_t t1) {
  for (int64_t t = t0; t < t1; t += kTokenTile) {
    switch (std::min<int64_t>(kTokenTile, t1 - t)) {
      case 4: RunTokenTile<kType, 4>(tg, in, r0, r1, t); break;
      case 3: RunTokenTile<kType, 3>(tg, in, r0, r1, t); break;
      case 2: RunTokenTile<kType, 2>(tg, in, r0, r1, t); break;
      default: RunTokenTile<kType, 1>(tg, in, r0, r1, t); break;
    }
  }
}

void RunTileAnyType(const MatmulTarget& tg, const Inputs& in, int64_t r0, int64_t r1,
                    int64_t t0, int64_t t1) {
  switch (tg.w->dtype) {
    case DType::kQ4_1: return RunTile<DType::kQ4_1>(tg, in, r0, r1, t0, t1);
    case DType::kQ4_0: return RunTile<DType::kQ4_0>(tg, in, r0, r1, t0, t1);
    case DType::kQ8_0: return RunTile<DType::kQ8_0>(tg, in, r0, r1, t0, t1);
    case DType::kF16: return RunTile<DType::kF16>(tg, in, r0, r1, t0, t1);
    case DType::kBF16: return RunTile<DType::kBF16>(tg, in, r0, r1, t0, t1);
    case DType::kF32: return RunTile<DType::kF32>(tg, in, r0, r1, t0, t1);
    default: std::abort();  // rejected by MatmulSupports when the model is built
  }
}

}  // namespace

bool MatmulSupports(DType dtype) {
  switch (dtype) {
    case DType::kQ4_1:
    case DType::kQ4_0:
    case DType::kQ8_0:
    case DType::kF16:
    case DType::kBF16:
    case DType::kF32:
      return true;
    default:
      return false;
  }
}

void Matmul(ThreadPool* pool, const float* x, int64_t num_tokens, int64_t ldx,
            std::span<const MatmulTarget> targets) {
  if (num_tokens <= 0 || targets.empty()) return;
  const int64_t cols = targets[0].w->cols;
  bool any_quantized = false;
  for (const MatmulTarget& t : targets) any_quantized |= IsQuantized(t.w->dtype);

  // The 8-bit activations live in a per-calling-thread buffer reused across calls.
  thread_local std::vector<BlockQ8Act> xq;
  Inputs in{x, ldx, nullptr, cols / 32};
  if (any_quantized) {
    xq.resize(num_tokens * in.xq_stride);
    // A plain pointer: inside the lambda `xq` would name each helper's own buffer.
    BlockQ8Act* xq_data = xq.data();
    const int64_t stride = in.xq_stride;
    auto quantize = [=](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) QuantizeRowQ8Act(x + t * ldx, xq_data + t * stride, cols);
    };
    if (num_tokens >= 8) {
      pool->ParallelFor(num_tokens, quantize);
    } else {
      quantize(0, num_tokens);
    }
    in.xq = xq_data;
  }

  // Work units, token chunk outermost so that neighbouring units (taken by different
  // threads at about the same time) share the activations in cache.
  std::vector<int64_t> first_unit(targets.size() + 1, 0);
  for (size_t k = 0; k < targets.size(); ++k) {
    first_unit[k + 1] = first_unit[k] + (targets[k].w->rows + kRowTile - 1) / kRowTile;
  }
  const int64_t units_per_chunk = first_unit.back();
  const int64_t num_chunks = (num_tokens + kTokenChunk - 1) / kTokenChunk;
  const int64_t num_units = units_per_chunk * num_chunks;

  // Threads take units from a shared counter rather than a fixed split: on a machine
  // shared with other work one slow core must not hold up the whole step.
  std::atomic<int64_t> next{0};
  auto worker = [&](int64_t, int64_t) {
    while (true) {
      const int64_t u = next.fetch_add(1, std::memory_order_relaxed);
      if (u >= num_units) return;
      const int64_t chunk = u / units_per_chunk;
      const int64_t in_chunk = u % units_per_chunk;
      const size_t k = std::upper_bound(first_unit.begin(), first_unit.end(), in_chunk) -
                       first_unit.begin() - 1;
      const MatmulTarget& tg = targets[k];
      const int64_t r0 = (in_chunk - first_unit[k]) * kRowTile;
      const int64_t r1 = std::min(r0 + kRowTile, tg.w->rows);
      const int64_t t0 = chunk * kTokenChunk;
      const int64_t t1 = std::min(t0 + kTokenChunk, num_tokens);
      RunTileAnyType(tg, in, r0, r1, t0, t1);
    }
  };
  pool->ParallelFor(std::min<int64_t>(pool->size(), num_units), worker);
}

}  // namespace shoal::worker::cpu
