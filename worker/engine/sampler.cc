#include "worker/engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <unordered_map>
#include <unordered_set>

namespace shoal::worker {

namespace {

int32_t Argmax(std::span<const float> v) {
  int32_t best = 0;
  for (int32_t i = 1; i < static_cast<int32_t>(v.size()); ++i) {
    if (v[i] > v[best]) best = i;
  }
  return best;
}

// log-softmax over the row; double accumulation so 50k-wide rows keep their precision.
std::vector<float> LogSoftmax(std::span<const float> logits) {
  float mx = logits[Argmax(logits)];
  double sum = 0.0;
  for (float x : logits) sum += std::exp(static_cast<double>(x - mx));
  float log_z = mx + static_cast<float>(std::log(sum));
  std::vector<float> out(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) out[i] = logits[i] - log_z;
  return out;
}

// Fills result->logprob / top from log-softmax of `logits`.
void FillLogprobs(std::span<const float> logits, int top_n, SampleResult* result) {
  std::vector<float> lp = LogSoftmax(logits);
  result->logprob = lp[result->token_id];
  top_n = std::min<int>(top_n, static_cast<int>(lp.size()));
  if (top_n <= 0) return;
  std::vector<int32_t> idx(lp.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + top_n, idx.end(), [&](int32_t a, int32_t b) {
    return lp[a] != lp[b] ? lp[a] > lp[b] : a < b;
  });
  for (int i = 0; i < top_n; ++i) result->top.emplace_back(idx[i], lp[idx[i]]);
}

}  // namespace

double Sampler::Uniform(std::mt19937_64* rng) {
  return static_cast<double>((*rng)() >> 11) * 0x1.0p-53;
}

void Sampler::ApplyPenalties(std::span<float> logits, const SamplingOptions& options,
                             std::span<const int32_t> prompt_and_output,
                             int64_t num_prompt_tokens) {
  const int64_t vocab = static_cast<int64_t>(logits.size());
  if (options.repetition_penalty != 1.0f) {
    std::unordered_set<int32_t> seen(prompt_and_output.begin(), prompt_and_output.end());
    for (int32_t t : seen) {
      if (t < 0 || t >= vocab) continue;
      float& l = logits[t];
      l = l > 0 ? l / options.repetition_penalty : l * options.repetition_penalty;
    }
  }
  if (options.presence_penalty != 0.0f || options.frequency_penalty != 0.0f) {
    std::unordered_map<int32_t, int> counts;
    for (int32_t t : prompt_and_output.subspan(num_prompt_tokens)) ++counts[t];
    for (auto [t, c] : counts) {
      if (t < 0 || t >= vocab) continue;
      // One fused multiply-add, written out: the compiler would fuse it or not by flags, and
      // the GPU sampler (sampling.cu) rounds exactly this way.
      logits[t] -= std::fma(options.frequency_penalty, static_cast<float>(c), options.presence_penalty);
    }
  }
}

// Softmax, then keep a prefix of the tokens sorted by probability (top-k, then top-p over
// what top-k kept), then drop those under min_p * max. Sorting the whole vocabulary is
// avoided: top-p sorts a growing prefix until the kept mass is reached.
std::vector<float> Sampler::TruncatedProbs(std::span<const float> logits, int32_t top_k,
                                           float top_p, float min_p) {
  const int64_t vocab = static_cast<int64_t>(logits.size());
  std::vector<float> probs(vocab);
  float mx = logits[Argmax(logits)];
  double total = 0.0;
  for (int64_t i = 0; i < vocab; ++i) {
    probs[i] = std::exp(logits[i] - mx);
    total += probs[i];
  }
  for (float& p : probs) p = static_cast<float>(p / total);

  const bool use_k = top_k > 0 && top_k < vocab;
  const bool use_p = top_p < 1.0f;
  std::vector<char> keep(vocab, 1);
  if (use_k || use_p) {
    std::vector<int32_t> idx(vocab);
    std::iota(idx.begin(), idx.end(), 0);
    auto by_prob = [&](int32_t a, int32_t b) {
      return probs[a] != probs[b] ? probs[a] > probs[b] : a < b;
    };
    int64_t limit = use_k ? top_k : vocab;
    int64_t num_kept = limit;
    if (use_k) std::partial_sort(idx.begin(), idx.begin() + limit, idx.end(), by_prob);
    if (use_p) {
      double mass = 0.0;
      for (int64_t i = 0; i < limit && use_k; ++i) mass += probs[idx[i]];
      if (!use_k) mass = 1.0;
      const double target = static_cast<double>(top_p) * mass;
      int64_t sorted = use_k ? limit : 0;
      double cum = 0.0;
      num_kept = 0;
      while (num_kept < limit) {
        if (num_kept == sorted) {  // sort the next (doubling) slice of the tail
          int64_t next = std::min<int64_t>(limit, std::max<int64_t>(64, 2 * sorted));
          std::partial_sort(idx.begin() + sorted, idx.begin() + next, idx.end(), by_prob);
          sorted = next;
        }
        cum += probs[idx[num_kept++]];
        if (cum >= target) break;
      }
    }
    std::fill(keep.begin(), keep.end(), 0);
    for (int64_t i = 0; i < num_kept; ++i) keep[idx[i]] = 1;
  }
  if (min_p > 0.0f) {
    // The max probability is the same before and after renormalization, so the cut is too.
    const float cut = min_p * probs[Argmax(logits)];
    for (int64_t i = 0; i < vocab; ++i) {
      if (probs[i] < cut) keep[i] = 0;
    }
  }
  double kept_mass = 0.0;
  for (int64_t i = 0; i < vocab; ++i) {
    if (!keep[i]) probs[i] = 0.0f;
    kept_mass += probs[i];
  }
  for (float& p : probs) p = static_cast<float>(p / kept_mass);
  return probs;
}

SampleResult Sampler::Sample(std::span<float> logits, const SamplingOptions& options,
                             std::span<const int32_t> prompt_and_output,
                             int64_t num_prompt_tokens, std::mt19937_64* rng, bool want_logprobs,
                             int top_logprobs) {
  ApplyPenalties(logits, options, prompt_and_output, num_prompt_tokens);
  SampleResult result;
  if (IsGreedy(options)) {
    result.token_id = Argmax(logits);
  } else {
    const float inv_t = 1.0f / options.temperature;
    for (float& l : logits) l *= inv_t;
    std::vector<float> probs =
        TruncatedProbs(logits, options.top_k, options.top_p, options.min_p);
    double u = Uniform(rng);
    double cum = 0.0;
    int32_t last_kept = 0;
    result.token_id = -1;
    for (int32_t i = 0; i < static_cast<int32_t>(probs.size()); ++i) {
      if (probs[i] <= 0.0f) continue;
      last_kept = i;
      cum += probs[i];
      if (u < cum) {
        result.token_id = i;
        break;
      }
    }
    if (result.token_id < 0) result.token_id = last_kept;  // rounding left u above the sum
  }
  if (want_logprobs) FillLogprobs(logits, top_logprobs, &result);
  return result;
}

}  // namespace shoal::worker
