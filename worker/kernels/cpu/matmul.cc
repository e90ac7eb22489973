#include "worker/kernels/cpu/matmul.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "worker/kernels/cpu/fp8_matmul.h"
#include "worker/kernels/cpu/quant.h"
#include "worker/kernels/cpu/simd.h"
#include "worker/kernels/cpu/thread_pool.h"

namespace shoal::worker::cpu {
namespace {

constexpr int64_t kRowTile = 16;      // output rows per work unit (fits L1 for reuse)
constexpr int64_t kTokenChunk = 64;   // tokens per work unit (their activations fit L2)
constexpr int kTokenTile = 4;         // tokens computed together per weight row
// With one token tile (decode steps of up to 4 sequences) a 16-row unit costs too little
// for its claim (an atomic add on a line both cores write) to be cheap: rows are then
// split into about kUnitsPerThread units per thread instead, still claimed so that a
// thread slowed by other work on its core hands its share to the others. With more tokens
// each 16-row unit is reused from L1 by every token tile, which pays for its claim.
constexpr int64_t kUnitsPerThread = 4;
// The one-token kernel reads four rows at once, an access pattern the hardware prefetcher
// follows poorly, so it prefetches the rows two groups ahead itself. Measured on Zen 3,
// one token with weights from memory, GB per CPU-second: Q4_1 6.0 without, 8.7 one group
// ahead, 10.1 two groups ahead (three: the same); Q8_0 4.4 without, 10.5 two ahead.
constexpr int64_t kPrefetchRows = 8;

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

// One token, NR (<= 4) weight rows: the decode case, where the dot is compute bound
// unless each block costs only a few instructions. Same per-row summation order as
// DotQuantRows (GGML's), with the per-block work cut down:
//  - the nibbles are unpacked by one 128-bit broadcast load, a per-half shift and a mask;
//  - the scales of the NR rows' blocks are gathered as 4-byte words (d and m for Q4_1, d
//    and two quant bytes, masked off, otherwise), converted from f16 in one instruction
//    and multiplied by the activation block's (d, s) pair in one more: even lanes hold
//    d_w·d_a for each row, odd lanes m·s, which one vector add accumulates per row in
//    block order (GGML's scalar `summs += m * s`, lane by lane);
//  - the NR lane sums are reduced together at the end (same tree as HorizontalSum8).
// `prefetch` (or null) is where the rows after these start: its next NR blocks' worth of
// bytes are prefetched per block step (a prefetch never faults, even past the matrix).
template <DType kType, int NR>
void DotQuantRowsOneToken(const std::byte* const* rows, const BlockQ8Act* a, int64_t nb,
                          const std::byte* prefetch, float* out) {
  static_assert(NR >= 1 && NR <= 4);
  constexpr size_t kBlockBytes = kType == DType::kQ4_1 ? sizeof(BlockQ4_1)
                                 : kType == DType::kQ4_0 ? sizeof(BlockQ4_0)
                                                         : sizeof(BlockQ8_0);
  constexpr size_t kQuantsAt = kType == DType::kQ4_1 ? 4 : 2;
  const __m256i low_nibbles = _mm256_set1_epi8(0x0F);
  const __m256i half_shift = _mm256_setr_epi64x(0, 0, 4, 4);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[NR];
#pragma GCC unroll 4
  for (int r = 0; r < NR; ++r) acc[r] = _mm256_setzero_ps();
  __m256 mins = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const std::byte* blk[NR];
    for (int r = 0; r < NR; ++r) blk[r] = rows[r] + b * kBlockBytes;
    int32_t head[4];
    for (int r = 0; r < 4; ++r) std::memcpy(&head[r], blk[r < NR ? r : 0], 4);
    __m128i dm16 = _mm_setr_epi32(head[0], head[1], head[2], head[3]);
    if constexpr (kType != DType::kQ4_1) dm16 = _mm_and_si128(dm16, _mm_set1_epi32(0xFFFF));
    // [d_a, s_a] repeated: BlockQ8Act keeps the two floats next to each other.
    const __m256 ds = _mm256_castpd_ps(_mm256_broadcast_sd(reinterpret_cast<const double*>(&a[b].d)));
    const __m256 scales = _mm256_mul_ps(_mm256_cvtph_ps(dm16), ds);
    if constexpr (kType == DType::kQ4_1) mins = _mm256_add_ps(mins, scales);
    const __m256i aq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[b].q));
    if (prefetch != nullptr) {
      const char* p = reinterpret_cast<const char*>(prefetch) + b * NR * kBlockBytes;
      for (size_t off = 0; off < NR * kBlockBytes + 64; off += 64) _mm_prefetch(p + off, _MM_HINT_T0);
    }
#pragma GCC unroll 4
    for (int r = 0; r < NR; ++r) {
      __m256i prod;
      if constexpr (kType == DType::kQ8_0) {
        const __m256i wq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk[r] + kQuantsAt));
        prod = _mm256_maddubs_epi16(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(aq, wq));
      } else {
        const __m256i raw = _mm256_broadcastsi128_si256(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk[r] + kQuantsAt)));
        __m256i wq = _mm256_and_si256(_mm256_srlv_epi64(raw, half_shift), low_nibbles);
        if constexpr (kType == DType::kQ4_0) {
          wq = _mm256_sub_epi8(wq, _mm256_set1_epi8(8));
          prod = _mm256_maddubs_epi16(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(aq, wq));
        } else {
          prod = _mm256_maddubs_epi16(wq, aq);
        }
      }
      const __m256 p = _mm256_cvtepi32_ps(_mm256_madd_epi16(prod, ones));
      const __m256 scale = _mm256_permutevar8x32_ps(scales, _mm256_set1_epi32(2 * r));
      acc[r] = _mm256_fmadd_ps(scale, p, acc[r]);
    }
  }
  // Per row: [l0+l4, l1+l5, l2+l6, l3+l7], then (r0+r2) + (r1+r3), four rows side by side.
  __m128 h[4];
  for (int r = 0; r < 4; ++r) {
    h[r] = r < NR ? _mm_add_ps(_mm256_castps256_ps128(acc[r]), _mm256_extractf128_ps(acc[r], 1))
                  : _mm_setzero_ps();
  }
  const __m128 s01 = _mm_add_ps(_mm_unpacklo_ps(h[0], h[1]), _mm_unpackhi_ps(h[0], h[1]));
  const __m128 s23 = _mm_add_ps(_mm_unpacklo_ps(h[2], h[3]), _mm_unpackhi_ps(h[2], h[3]));
  __m128 sum = _mm_add_ps(_mm_movelh_ps(s01, s23), _mm_movehl_ps(s23, s01));
  if constexpr (kType == DType::kQ4_1) {
    const __m256 odd = _mm256_permutevar8x32_ps(mins, _mm256_setr_epi32(1, 3, 5, 7, 1, 3, 5, 7));
    sum = _mm_add_ps(sum, _mm256_castps256_ps128(odd));
  }
  float all[4];
  _mm_storeu_ps(all, sum);
  for (int r = 0; r < NR; ++r) out[r] = all[r];
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

// Rows computed together for 2-4 tokens (one token takes DotQuantRowsOneToken). Two or
// four rows per step (sharing activation loads) measured no faster on Zen 3 for Q4
// weights and markedly slower for Q8_0 (34-byte blocks), so one row at a time it is;
// DotQuantRows keeps the row count as a parameter for other CPUs.
template <DType kType, int NT>
constexpr int RowsPerStep() {
  return 1;
}

// One token over rows [r0, r1), four rows per kernel call.
template <DType kType>
void RunOneTokenQuant(const MatmulTarget& tg, const Inputs& in, int64_t r0, int64_t r1, int64_t t) {
  const WeightMatrix& w = *tg.w;
  const BlockQ8Act* a = in.xq + t * in.xq_stride;
  const int64_t nb = w.cols / 32;
  float* y = tg.y + t * tg.ldy;
  auto store = [&](int64_t r, int nr, const float* out) {
    for (int i = 0; i < nr; ++i) {
      const float bias = tg.bias != nullptr ? tg.bias[r + i] : 0.0f;
      y[r + i] = (tg.accumulate ? y[r + i] : 0.0f) + out[i] + bias;
    }
  };
  float out[4];
  int64_t r = r0;
  const bool contiguous = w.row_stride == RowBytes(kType, w.cols);
  for (; r + 4 <= r1; r += 4) {
    const std::byte* rows[4] = {w.row(r), w.row(r + 1), w.row(r + 2), w.row(r + 3)};
    const std::byte* pf = contiguous ? w.row(r + kPrefetchRows) : nullptr;
    DotQuantRowsOneToken<kType, 4>(rows, a, nb, pf, out);
    store(r, 4, out);
  }
  const std::byte* rows[3] = {w.row(r), w.row(std::min(r + 1, r1 - 1)), w.row(std::min(r + 2, r1 - 1))};
  switch (r1 - r) {
    case 3: DotQuantRowsOneToken<kType, 3>(rows, a, nb, nullptr, out); break;
    case 2: DotQuantRowsOneToken<kType, 2>(rows, a, nb, nullptr, out); break;
    case 1: DotQuantRowsOneToken<kType, 1>(rows, a, nb, nullptr, out); break;
    default: return;
  }
  store(r, static_cast<int>(r1 - r), out);
}

template <DType kType, int NT>
void RunTokenTile(const MatmulTarget& tg, const Inputs& in, int64_t r0, int64_t r1, int64_t t) {
  if constexpr (NT == 1 && IsQuantized(kType)) {
    return RunOneTokenQuant<kType>(tg, in, r0, r1, t);
  }
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
    case DType::kF8E4M3: return MatmulFp8Tile(tg, in.x, in.ldx, r0, r1, t0, t1);
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
  int64_t total_rows = 0;
  for (const MatmulTarget& t : targets) total_rows += t.w->rows;
  int64_t row_tile = kRowTile;
  if (num_tokens <= kTokenTile) {
    const int64_t per_unit = total_rows / (pool->size() * kUnitsPerThread);
    row_tile = std::clamp<int64_t>((per_unit + kRowTile - 1) / kRowTile * kRowTile, kRowTile, 512);
  }
  std::vector<int64_t> first_unit(targets.size() + 1, 0);
  for (size_t k = 0; k < targets.size(); ++k) {
    first_unit[k + 1] = first_unit[k] + (targets[k].w->rows + row_tile - 1) / row_tile;
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
      const int64_t r0 = (in_chunk - first_unit[k]) * row_tile;
      const int64_t r1 = std::min(r0 + row_tile, tg.w->rows);
      const int64_t t0 = chunk * kTokenChunk;
      const int64_t t1 = std::min(t0 + kTokenChunk, num_tokens);
      RunTileAnyType(tg, in, r0, r1, t0, t1);
    }
  };
  pool->ParallelFor(std::min<int64_t>(pool->size(), num_units), worker);
}

}  // namespace shoal::worker::cpu
