#include "worker/engine/stop_checker.h"

#include <algorithm>
#include <utility>

namespace shoal::worker {

StopChecker::StopChecker(const StopOptions& options, std::vector<int32_t> eos_ids,
                         int64_t max_model_len)
    : options_(options), eos_ids_(std::move(eos_ids)), max_model_len_(max_model_len) {
  std::erase_if(options_.stop_strings, [](const std::string& s) { return s.empty(); });
}

bool StopChecker::IsStopToken(int32_t token) const {
  if (!options_.ignore_eos && std::find(eos_ids_.begin(), eos_ids_.end(), token) != eos_ids_.end()) {
    return true;
  }
  const auto& ids = options_.stop_token_ids;
  return std::find(ids.begin(), ids.end(), token) != ids.end();
}

StopDecision StopChecker::Step(int32_t token, std::string_view piece, int64_t num_output_tokens,
                               int64_t num_tokens) {
  StopDecision d;
  if (IsStopToken(token)) {
    d.finish = FinishReason::kStop;
    d.text = std::exchange(pending_, {});
    return d;
  }
  pending_.append(piece);
  // The earliest stop string in the held text wins; everything before pending_ was
  // released only after it could no longer start one.
  size_t best_pos = std::string::npos;
  const std::string* best = nullptr;
  for (const std::string& s : options_.stop_strings) {
    size_t pos = pending_.find(s);
    if (pos != std::string::npos && (pos < best_pos || (pos == best_pos && s.size() > best->size()))) {
      best_pos = pos;
      best = &s;
    }
  }
  if (best != nullptr) {
    d.finish = FinishReason::kStop;
    d.text = pending_.substr(0, best_pos);
    d.matched_stop = *best;
    pending_.clear();
    return d;
  }
  if ((options_.max_tokens > 0 && num_output_tokens >= options_.max_tokens) ||
      num_tokens >= max_model_len_) {
    d.finish = FinishReason::kLength;
    d.text = std::exchange(pending_, {});
    return d;
  }
  size_t hold = HeldBackLength();
  d.text = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return d;
}

std::string StopChecker::Release(std::string_view tail) {
  std::string out = std::exchange(pending_, {});
  out.append(tail);
  return out;
}

size_t StopChecker::HeldBackLength() const {
  size_t hold = 0;
  for (const std::string& s : options_.stop_strings) {
    // Longest k < |s| with pending_ ending in s[0, k).
    size_t max_k = std::min(s.size() - 1, pending_.size());
    for (size_t k = max_k; k > hold; --k) {
      if (std::string_view(pending_).substr(pending_.size() - k) == std::string_view(s).substr(0, k)) {
        hold = k;
        break;
      }
    }
  }
  return hold;
}

}  // namespace shoal::worker
