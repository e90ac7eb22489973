#pragma once
// Gathers what an Engine streams for each request and lets a test wait for the end.
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "worker/engine/request.h"

namespace shoal::worker::testing {

struct Collected {
  std::vector<int32_t> tokens;
  std::string text;
  std::vector<TokenLogprob> logprobs;
  int num_pieces = 0;
  bool done = false;
  GenerationOutput final_output;  // the piece with finish set
};

class Collector {
 public:
  OutputCallback Callback() {
    return [this](GenerationOutput out) {
      std::lock_guard lock(mu_);
      Collected& c = results_[out.request_id];
      c.tokens.insert(c.tokens.end(), out.token_ids.begin(), out.token_ids.end());
      c.text += out.text;
      c.logprobs.insert(c.logprobs.end(), out.logprobs.begin(), out.logprobs.end());
      ++c.num_pieces;
      if (out.finish != FinishReason::kNone) {
        c.done = true;
        c.final_output = std::move(out);
      }
      cv_.notify_all();
    };
  }
  // Waits (up to a generous limit) until `id` finished; returns what it got.
  Collected Wait(const std::string& id) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, std::chrono::seconds(600), [&] { return results_[id].done; });
    return results_[id];
  }
  Collected WaitForTokens(const std::string& id, size_t n) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, std::chrono::seconds(600),
                 [&] { return results_[id].tokens.size() >= n || results_[id].done; });
    return results_[id];
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, Collected> results_;
};

}  // namespace shoal::worker::testing
