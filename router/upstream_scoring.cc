#include "router/upstream_scoring.h"

#include <cstring>
#include <limits>

namespace shoal::router {

double GroupLoadScore(const GroupLoad& group, const ScoringWeights& weights) {
  const double tokens_per_request = weights.tokens_per_request > 0 ? weights.tokens_per_request : 1.0;
  return static_cast<double>(group.inflight_requests) +
         static_cast<double>(group.inflight_tokens) / tokens_per_request +
         weights.waiting_weight * group.waiting_sequences + weights.kv_usage_weight * group.kv_cache_usage_ratio;
}

int PickGroup(std::span<const GroupLoad> groups, int prefix_blocks, const ScoringWeights& weights,
              uint64_t tie_breaker) {
  const size_t n = groups.size();
  if (n == 0) return -1;
  int best = -1;
  double best_score = std::numeric_limits<double>::infinity();
  // Visit in rotated order so the first of several equal scores is the rotation's pick.
  const size_t start = static_cast<size_t>(tie_breaker % n);
  for (size_t k = 0; k < n; ++k) {
    const size_t i = (start + k) % n;
    const GroupLoad& group = groups[i];
    if (!group.eligible) continue;
    double overlap = 0;
    if (prefix_blocks > 0) {
      overlap = static_cast<double>(std::min(group.matched_prefix_blocks, prefix_blocks)) / prefix_blocks;
    }
    const double score = GroupLoadScore(group, weights) - weights.affinity_bonus * overlap;
    if (score < best_score) {
      best_score = score;
      best = static_cast<int>(i);
    }
  }
  return best;
}

namespace {

// FNV-1a, 64 bit: stable across processes and releases, which std::hash is not.
uint64_t Fnv1a(uint64_t seed, const void* data, size_t size) {
  uint64_t h = seed;
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < size; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}
constexpr uint64_t kFnvOffset = 0xcbf29ce484222325ULL;

}  // namespace

std::string PromptBytes(const v1::GenerateRequest& request) {
  switch (request.input_case()) {
    case v1::GenerateRequest::kPrompt:
      return request.prompt();
    case v1::GenerateRequest::kChat: {
      std::string bytes;
      for (const auto& message : request.chat().messages()) {
        bytes += message.role();
        bytes += '\x1f';
        bytes += message.content();
        bytes += '\x1e';
      }
      return bytes;
    }
    default:
      return {};
  }
}

std::vector<uint64_t> PrefixBlockHashes(const v1::GenerateRequest& request, const PrefixOptions& options) {
  std::vector<uint64_t> hashes;
  uint64_t h = Fnv1a(kFnvOffset, request.model().data(), request.model().size());
  if (request.input_case() == v1::GenerateRequest::kTokenIds) {
    const auto& ids = request.token_ids().ids();
    const int block = std::max(1, options.block_tokens);
    for (int begin = 0; begin + block <= ids.size() && static_cast<int>(hashes.size()) < options.max_blocks;
         begin += block) {
      h = Fnv1a(h, ids.data() + begin, sizeof(int32_t) * block);
      hashes.push_back(h);
    }
    return hashes;
  }
  const std::string bytes = PromptBytes(request);
  const size_t block = static_cast<size_t>(std::max(1, options.block_chars));
  for (size_t begin = 0; begin + block <= bytes.size() && static_cast<int>(hashes.size()) < options.max_blocks;
       begin += block) {
    h = Fnv1a(h, bytes.data() + begin, block);
    hashes.push_back(h);
  }
  return hashes;
}

int64_t EstimateRequestTokens(const v1::GenerateRequest& request, int64_t default_completion_tokens) {
  int64_t prompt = 0;
  if (request.input_case() == v1::GenerateRequest::kTokenIds) {
    prompt = request.token_ids().ids_size();
  } else {
    prompt = static_cast<int64_t>(PromptBytes(request).size() + 3) / 4;
  }
  const int64_t completion = request.max_tokens() > 0 ? request.max_tokens() : default_completion_tokens;
  return prompt + completion;
}

}  // namespace shoal::router
