#pragma once
// The serving loop of one model replica: a thread that admits requests, asks the
// Scheduler what to run, runs the CausalLM, samples, checks stops, detokenizes and hands
// each request its pieces through its callback.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/engine/request.h"

namespace shoal::worker {

class CausalLM;
class Tokenizer;

struct EngineOptions {
  int block_size = 16;                   // tokens per KV block
  int64_t num_kv_blocks = 0;             // 0 = kv_cache_bytes / model.KvBytesPerBlock
  size_t kv_cache_bytes = 256ull << 20;  // budget when num_kv_blocks == 0
  int max_num_seqs = 256;                // running sequences at most
  int max_num_batched_tokens = 2048;     // token budget of one step (chunked prefill)
  int max_model_len = 0;                 // 0 = the model's max_position_embeddings
  bool enable_prefix_caching = true;
  int max_waiting = 4096;                // queued requests beyond this are refused (RESOURCE_EXHAUSTED)
};

// Counters and gauges after a step, for metrics and the router.
struct EngineStats {
  int running = 0;
  int waiting = 0;
  int64_t num_free_blocks = 0;
  int64_t num_total_blocks = 0;
  double kv_cache_usage = 0.0;           // used / total blocks
  int64_t prefix_cache_hits_total = 0;   // prompt tokens served from cache
  int64_t prefix_cache_queries_total = 0;
  int64_t preemptions_total = 0;
  int64_t steps_total = 0;
  int64_t last_step_tokens = 0;
  double last_step_seconds = 0.0;
};

// Observes each step (metrics). Called on the engine thread.
using StepObserver = std::function<void(const EngineStats&)>;

class Engine {
 public:
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const EngineOptions& options,
                                                        std::unique_ptr<CausalLM> model,
                                                        std::shared_ptr<const Tokenizer> tokenizer);
  virtual ~Engine() = default;

  // INVALID_ARGUMENT naming the field (e.g. "sampling.top_p must be in (0, 1], got 1.5"),
  // or for a prompt that with max_tokens cannot fit max_model_len.
  virtual absl::Status Validate(const GenerationRequest& request) const = 0;
  // Queues the request (after Validate). RESOURCE_EXHAUSTED when the wait queue is full,
  // UNAVAILABLE after Shutdown. The callback gets every piece, the last one with finish set.
  virtual absl::Status Submit(GenerationRequest request, OutputCallback on_output) = 0;
  // Idempotent; the request ends with FinishReason::kCancelled and frees its blocks.
  virtual void Cancel(const std::string& request_id) = 0;
  virtual EngineStats Stats() const = 0;
  virtual void SetStepObserver(StepObserver observer) = 0;
  // Fails queued/running requests with UNAVAILABLE and stops the loop.
  virtual void Shutdown() = 0;

  virtual const CausalLM& model() const = 0;
  virtual const Tokenizer& tokenizer() const = 0;
  virtual int max_model_len() const = 0;
};

}  // namespace shoal::worker
