#include "worker/models/deepseek_mla.h"

#include <fmt/format.h>

#include <algorithm>

#include "worker/common/status_macros.h"
#include "worker/kernels/cpu/fp8_matmul.h"
#include "worker/kernels/cpu/matmul.h"
#include "worker/kernels/cpu/ops.h"
#include "worker/kernels/cpu/quant.h"
#include "worker/kernels/cpu/thread_pool.h"

namespace shoal::worker {
namespace {

// DeepSeek builds q_a_layernorm and kv_a_layernorm with the RMSNorm default epsilon,
// not config.rms_norm_eps.
constexpr float kLatentNormEps = 1e-6f;

// w as a dense f32 [rows, cols] matrix. FP8 weights become code × their block's scale,
// the one f32 rounding of HF's `fp8.float() * scale` (and of the FP8 matmul).
std::vector<float> DenseF32(ThreadPool* pool, const cpu::WeightMatrix& w) {
  std::vector<float> out(w.rows * w.cols);
  if (w.dtype != DType::kF8E4M3) {
    for (int64_t r = 0; r < w.rows; ++r) cpu::DequantizeRow(w.dtype, w.row(r), out.data() + r * w.cols, w.cols);
    return out;
  }
  for (int64_t r = 0; r < w.rows; ++r) {
    const auto* codes = reinterpret_cast<const uint8_t*>(w.row(r));
    for (int64_t c = 0; c < w.cols; ++c) out[r * w.cols + c] = cpu::E4M3ToFloat(codes[c]) * cpu::Fp8BlockScale(w, r, c);
  }
  return out;
}

}  // namespace

absl::StatusOr<MlaAttention> MlaAttention::Load(ThreadPool* pool, const WeightStore& store, const std::string& p,
                                                const ModelConfig& c, ShardOf tp) {
  const DeepseekConfig& d = c.deepseek;
  if (c.attention_bias) {
    return absl::UnimplementedError(fmt::format("{}: {}: attention_bias is not supported for DeepSeek "
                                                "(no DeepSeek checkpoint has it)",
                                                store.Source(), p));
  }
  MlaAttention a;
  a.hidden_ = c.hidden_size;
  a.heads_ = c.num_heads / tp.count;
  a.nope_ = d.qk_nope_head_dim;
  a.rope_dim_ = d.qk_rope_head_dim;
  a.v_dim_ = d.v_head_dim;
  a.rank_ = d.kv_lora_rank;
  a.interleave_ = d.rope_interleave;
  a.scale_ = static_cast<float>(cpu::MlaSoftmaxScale(d.qk_head_dim(), c.rope_scaling));
  const int64_t H = c.num_heads, qk = d.qk_head_dim();
  if (d.q_lora_rank) {
    ASSIGN_OR_RETURN(a.q_a_, ColumnParallelLinear::Load(store, p + "q_a_proj", c.hidden_size, *d.q_lora_rank,
                                                        false, ShardOf{}));
    ASSIGN_OR_RETURN(a.q_a_norm_, VectorParam::Load(store, p + "q_a_layernorm.weight", *d.q_lora_rank));
    ASSIGN_OR_RETURN(a.q_proj_, ColumnParallelLinear::Load(store, p + "q_b_proj", *d.q_lora_rank, H * qk, false, tp));
  } else {
    ASSIGN_OR_RETURN(a.q_proj_, ColumnParallelLinear::Load(store, p + "q_proj", c.hidden_size, H * qk, false, tp));
  }
  ASSIGN_OR_RETURN(a.kv_a_, ColumnParallelLinear::Load(store, p + "kv_a_proj_with_mqa", c.hidden_size,
                                                       d.kv_lora_rank + d.qk_rope_head_dim, false,
                                                       ShardOf{}));
  ASSIGN_OR_RETURN(a.kv_a_norm_, VectorParam::Load(store, p + "kv_a_layernorm.weight", d.kv_lora_rank));
  ASSIGN_OR_RETURN(a.kv_b_, ColumnParallelLinear::Load(store, p + "kv_b_proj", d.kv_lora_rank,
                                                       H * (d.qk_nope_head_dim + d.v_head_dim), false, tp));
  ASSIGN_OR_RETURN(a.o_, RowParallelLinear::Load(store, p + "o_proj", H * d.v_head_dim, c.hidden_size, tp));

  // The absorbed form's per-head W_uk^T and W_uv, from kv_b_proj whatever its dtype.
  const std::vector<float> kv_b = DenseF32(pool, a.kv_b_.weight());
  a.absorbed_ = cpu::MlaAbsorbedWeights(kv_b.data(), a.heads_, a.rank_, a.nope_, a.v_dim_,
                                        a.kv_b_.weight().dtype == DType::kBF16 ? DType::kBF16 : DType::kF32);
  return a;
}

size_t MlaAttention::bytes() const {
  size_t n = (q_a_ ? q_a_->bytes() + q_a_norm_->bytes() : 0) + q_proj_->bytes() + kv_a_.bytes() + kv_a_norm_->bytes() +
             kv_b_.bytes() + o_.bytes();
  return n + absorbed_.bytes();
}

// Multiply-adds per head of each form for n new tokens over a context of L:
//   expanded  L * r * (dn + dv)       materializing k/v for every position
//           + n * L * (dn + dr + dv)  attention
//   absorbed  n * r * (dn + dv)       q into latent space, output out of it
//           + n * L * (2r + dr)       attention over [c, k_pe] entries, latent outputs
// Decode (n = 1) and short chunks over a long context come out absorbed, prompts
// (n = L) expanded. Past kMaxExpandedPositions the expanded form's k/v buffer
// (L x heads x (dn + dv) floats) would grow without bound, so long contexts stay absorbed.
bool MlaAttention::PreferAbsorbed(const cpu::AttentionSequence& s) const {
  constexpr int64_t kMaxExpandedPositions = 8192;
  const double n = static_cast<double>(s.num_tokens), L = static_cast<double>(s.start_pos + s.num_tokens);
  if (L > kMaxExpandedPositions) return true;
  const double r = static_cast<double>(rank_), dn = static_cast<double>(nope_), dr = static_cast<double>(rope_dim_),
               dv = static_cast<double>(v_dim_);
  const double expanded = L * r * (dn + dv) + n * L * (dn + dr + dv);
  const double absorbed = n * r * (dn + dv) + n * L * (2 * r + dr);
  return absorbed < expanded;
}

// k_nope and v for every position the sequence sees, from the cached latents (this
// chunk's included), then attention as usual.
void MlaAttention::AttendExpanded(ThreadPool* pool, const cpu::AttentionSequence& s,
                                  const cpu::PagedLatentLayer& cache) {
  const int64_t e = rank_ + rope_dim_, L = s.start_pos + s.num_tokens, kvw = heads_ * (nope_ + v_dim_);
  latents_.resize(L * e);
  kv_.resize(L * kvw);
  cpu::ReadLatents(cache, s.block_table, L, latents_.data(), e);
  const cpu::MatmulTarget t = kv_b_.Target(kv_.data(), kvw);
  cpu::Matmul(pool, latents_.data(), L, e, {&t, 1});
  const int64_t qk = nope_ + rope_dim_;
  cpu::MlaExpandedAttention(pool, s, {heads_, nope_, rope_dim_, v_dim_}, q_.data() + s.first_row * heads_ * qk,
                            heads_ * qk, kv_.data(), kvw, latents_.data() + rank_, e, scale_,
                            attn_.data() + s.first_row * heads_ * v_dim_, heads_ * v_dim_);
}

void MlaAttention::Forward(ThreadPool* pool, const float* xn, int64_t T, std::span<const cpu::AttentionSequence> seqs,
                           const int64_t* positions, const cpu::YarnRopeTable& rope,
                           const cpu::PagedLatentLayer& cache, MlaMode mode, float* h) {
  const int64_t qk = nope_ + rope_dim_, e = rank_ + rope_dim_, q_width = heads_ * qk;
  q_.resize(T * q_width);
  ckv_.resize(T * e);
  attn_.resize(T * heads_ * v_dim_);

  // q (via the low-rank bottleneck when there is one) and [c, k_pe], sharing one pass over xn.
  if (q_a_) {
    const int64_t qr = q_a_->out_features();
    qa_.resize(T * qr);
    const cpu::MatmulTarget first[2] = {q_a_->Target(qa_.data(), qr), kv_a_.Target(ckv_.data(), e)};
    cpu::Matmul(pool, xn, T, hidden_, first);
    cpu::RmsNorm(qa_.data(), q_a_norm_->data(), qa_.data(), T, qr, kLatentNormEps);
    const cpu::MatmulTarget second = q_proj_->Target(q_.data(), q_width);
    cpu::Matmul(pool, qa_.data(), T, qr, {&second, 1});
  } else {
    const cpu::MatmulTarget both[2] = {q_proj_->Target(q_.data(), q_width), kv_a_.Target(ckv_.data(), e)};
    cpu::Matmul(pool, xn, T, hidden_, both);
  }
  for (int64_t t = 0; t < T; ++t) {
    cpu::RmsNorm(&ckv_[t * e], kv_a_norm_->data(), &ckv_[t * e], 1, rank_, kLatentNormEps);
  }
  cpu::ApplyYarnRope(rope, q_.data() + nope_, T, q_width, positions, heads_, qk, interleave_);
  cpu::ApplyYarnRope(rope, ckv_.data() + rank_, T, e, positions, 1, e, interleave_);
  for (const cpu::AttentionSequence& s : seqs) cpu::WriteLatents(cache, s, ckv_.data(), e);

  std::vector<cpu::AttentionSequence> absorbed;
  for (const cpu::AttentionSequence& s : seqs) {
    const bool use_absorbed = mode == MlaMode::kAbsorbed || (mode == MlaMode::kAuto && PreferAbsorbed(s));
    if (use_absorbed) {
      absorbed.push_back(s);
    } else {
      AttendExpanded(pool, s, cache);
    }
  }
  if (!absorbed.empty()) {
    q_lat_.resize(T * heads_ * e);
    o_lat_.resize(T * heads_ * rank_);
    cpu::MlaAbsorbQueries(pool, absorbed_, absorbed, q_.data(), q_width, rope_dim_, q_lat_.data(), heads_ * e);
    cpu::MlaLatentAttention(pool, cache, absorbed, q_lat_.data(), heads_ * e, heads_, scale_, o_lat_.data(),
                            heads_ * rank_);
    cpu::MlaLatentToValues(pool, absorbed_, absorbed, o_lat_.data(), heads_ * rank_, attn_.data(), heads_ * v_dim_);
  }
  const cpu::MatmulTarget o = o_.AccumulateInto(h, hidden_);
  cpu::Matmul(pool, attn_.data(), T, heads_ * v_dim_, {&o, 1});
}

}  // namespace shoal::worker
