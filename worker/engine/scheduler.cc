#include "worker/engine/scheduler.h"

#include <algorithm>

namespace shoal::worker {

Scheduler::Scheduler(const SchedulerOptions& options, KvBlockPool* pool)
    : options_(options), pool_(pool) {}

void Scheduler::Add(Sequence* seq) {
  seq->status = SequenceStatus::kWaiting;
  waiting_.push_back(seq);
}

// There is no prefill phase nor decode phase: each sequence has num_computed_tokens and
// wants to catch up with its num_tokens(). A step spends a budget of
// max_num_batched_tokens on that catching up:
//  1. running sequences first, oldest admission first: a decoding one needs one token, one
//     still prefilling takes as much of its prompt as the budget allows (chunked prefill).
//     When the pool has no block for it, the most recently admitted running sequence is
//     preempted by recompute (blocks freed, back to the front of the waiting queue with
//     nothing computed) until it fits; if that is the sequence itself, it waits.
//  2. then, if nobody was preempted, waiting sequences in order while there is budget,
//     room under max_num_seqs and blocks: each first takes what the prefix cache already
//     holds of its tokens, then computes a chunk of the rest. A waiting sequence that
//     does not fit stops admission (first come, first served).
SchedulePlan Scheduler::Schedule() {
  SchedulePlan plan;
  int64_t budget = options_.max_num_batched_tokens;

  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Sequence* seq = running_[i];
    int64_t n = std::min(seq->num_tokens() - seq->num_computed_tokens, budget);
    bool self_preempted = false;
    while (!AllocateSlots(seq, n, {})) {
      Sequence* victim = running_.back();  // index >= i: never one already planned
      Preempt(victim);
      plan.preempted.push_back(victim);
      if (victim == seq) {
        self_preempted = true;
        break;
      }
    }
    if (self_preempted) break;
    plan.chunks.push_back({seq, seq->num_computed_tokens, n,
                           seq->num_computed_tokens + n == seq->num_tokens()});
    budget -= n;
    ++i;
  }

  if (!plan.preempted.empty()) {
    plan.num_batched_tokens = options_.max_num_batched_tokens - budget;
    return plan;
  }

  while (!waiting_.empty() && budget > 0 &&
         static_cast<int>(running_.size()) < options_.max_num_seqs) {
    Sequence* seq = waiting_.front();
    // Look up at most num_tokens - 1 tokens: the last one is always computed so there are
    // logits to sample from, and a fully cached last block is never written into.
    std::vector<int32_t> cached;
    std::vector<BlockHash> cached_hashes;
    std::span<const int32_t> lookup(seq->tokens.data(), seq->tokens.size() - 1);
    pool_->FindCachedPrefix(lookup, &cached, &cached_hashes);
    int64_t num_cached_tokens = static_cast<int64_t>(cached.size()) * pool_->block_size();

    int64_t n = std::min(seq->num_tokens() - num_cached_tokens, budget);
    seq->num_computed_tokens = num_cached_tokens;
    if (!AllocateSlots(seq, n, cached)) {
      seq->num_computed_tokens = 0;
      break;
    }
    seq->block_hashes = std::move(cached_hashes);
    if (pool_->prefix_caching()) {
      plan.num_cache_query_tokens += static_cast<int64_t>(lookup.size());
      plan.num_cache_hit_tokens += num_cached_tokens;
    }
    if (!seq->admitted_once) {
      seq->admitted_once = true;
      seq->num_cached_prompt_tokens = num_cached_tokens;
    }
    waiting_.pop_front();
    seq->status = SequenceStatus::kRunning;
    running_.push_back(seq);
    plan.chunks.push_back({seq, num_cached_tokens, n, num_cached_tokens + n == seq->num_tokens()});
    budget -= n;
  }
  plan.num_batched_tokens = options_.max_num_batched_tokens - budget;
  return plan;
}

void Scheduler::OnStepComputed(const SchedulePlan& plan) {
  const int bs = pool_->block_size();
  for (const ScheduledChunk& c : plan.chunks) {
    Sequence* seq = c.seq;
    seq->num_computed_tokens = c.start_pos + c.num_tokens;
    // Full blocks whose every token now has K/V in the cache become shareable.
    while (static_cast<int64_t>(seq->block_hashes.size() + 1) * bs <= seq->num_computed_tokens) {
      size_t k = seq->block_hashes.size();
      BlockHash parent = k == 0 ? kNoParentHash : seq->block_hashes.back();
      std::span<const int32_t> tokens(seq->tokens.data() + k * bs, bs);
      seq->block_hashes.push_back(pool_->Commit(seq->block_table[k], parent, tokens));
    }
  }
}

void Scheduler::Remove(Sequence* seq) {
  if (auto it = std::find(running_.begin(), running_.end(), seq); it != running_.end()) {
    running_.erase(it);
  }
  if (auto it = std::find(waiting_.begin(), waiting_.end(), seq); it != waiting_.end()) {
    waiting_.erase(it);
  }
  FreeBlocks(seq);
  seq->status = SequenceStatus::kFinished;
}

bool Scheduler::AllocateSlots(Sequence* seq, int64_t num_new_tokens,
                              std::span<const int32_t> cached) {
  const int64_t bs = pool_->block_size();
  int64_t num_needed = (seq->num_computed_tokens + num_new_tokens + bs - 1) / bs;
  int64_t num_have = static_cast<int64_t>(seq->block_table.size() + cached.size());
  int64_t num_new_blocks = std::max<int64_t>(0, num_needed - num_have);
  if (pool_->CountUnreferenced(cached) + num_new_blocks > pool_->num_free_blocks()) return false;
  pool_->Acquire(cached);
  seq->block_table.insert(seq->block_table.end(), cached.begin(), cached.end());
  bool ok = pool_->Allocate(num_new_blocks, &seq->block_table);
  (void)ok;  // checked above
  return true;
}

void Scheduler::FreeBlocks(Sequence* seq) {
  // Back to front: the tail of a sequence is evicted before its shareable head.
  std::vector<int32_t> reversed(seq->block_table.rbegin(), seq->block_table.rend());
  pool_->Release(reversed);
  seq->block_table.clear();
  seq->block_hashes.clear();
}

void Scheduler::Preempt(Sequence* seq) {
  running_.erase(std::find(running_.begin(), running_.end(), seq));
  FreeBlocks(seq);
  seq->num_computed_tokens = 0;
  seq->status = SequenceStatus::kWaiting;
  ++seq->num_preemptions;
  waiting_.push_front(seq);
}

}  // namespace shoal::worker
