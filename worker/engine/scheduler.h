#pragma once
// Decides what one engine step computes. Pure: no threads, no model; the engine turns the
// plan into a ForwardBatch and calls OnStepComputed() when the model has run it.
#include <cstdint>
#include <deque>
#include <vector>

#include "worker/engine/kv_block_pool.h"
#include "worker/engine/sequence.h"

namespace shoal::worker {

struct SchedulerOptions {
  int max_num_seqs = 256;
  int max_num_batched_tokens = 2048;
};

// Tokens [start_pos, start_pos + num_tokens) of `seq` are computed this step.
struct ScheduledChunk {
  Sequence* seq = nullptr;
  int64_t start_pos = 0;
  int64_t num_tokens = 0;
  bool want_logits = false;  // the chunk reaches the sequence's end: sample a token after it
};

struct SchedulePlan {
  std::vector<ScheduledChunk> chunks;
  std::vector<Sequence*> preempted;  // running sequences sent back to waiting this step
  int64_t num_batched_tokens = 0;
  // Prompt-prefix lookups done for admissions this step (for stats).
  int64_t num_cache_query_tokens = 0;
  int64_t num_cache_hit_tokens = 0;
  bool empty() const { return chunks.empty(); }
};

class Scheduler {
 public:
  Scheduler(const SchedulerOptions& options, KvBlockPool* pool);

  // Queues a new sequence at the back of the waiting queue.
  void Add(Sequence* seq);
  SchedulePlan Schedule();
  // The model has computed every chunk of `plan`: advance num_computed_tokens and commit
  // newly full blocks to the prefix cache.
  void OnStepComputed(const SchedulePlan& plan);
  // Takes `seq` out of the scheduler (finished, cancelled or failed) and frees its blocks.
  void Remove(Sequence* seq);

  int num_running() const { return static_cast<int>(running_.size()); }
  int num_waiting() const { return static_cast<int>(waiting_.size()); }
  bool has_work() const { return !running_.empty() || !waiting_.empty(); }
  const std::vector<Sequence*>& running() const { return running_; }
  const std::deque<Sequence*>& waiting() const { return waiting_; }
  const KvBlockPool& pool() const { return *pool_; }

 private:
  // Makes the block table of `seq` cover num_computed_tokens + num_new_tokens, first
  // taking `cached` (prefix-cache hits, not yet referenced) then fresh blocks. Returns
  // false and changes nothing when the pool cannot supply them.
  bool AllocateSlots(Sequence* seq, int64_t num_new_tokens, std::span<const int32_t> cached);
  void FreeBlocks(Sequence* seq);
  void Preempt(Sequence* seq);

  SchedulerOptions options_;
  KvBlockPool* pool_;
  std::vector<Sequence*> running_;  // admission order
  std::deque<Sequence*> waiting_;
};

}  // namespace shoal::worker
