#pragma once
// Lock-step execution of one model replica spread over tensor x pipeline ranks.
//
// The leader (rank 0) runs the ordinary Engine (scheduler, sampler, detokenizer) over a
// GroupCausalLM: each Forward broadcasts the step (a GroupStep proto) to every rank and
// then runs the leader's own shard; followers sit in FollowerLoop, receive each step and
// run theirs. Inside a step, pipeline stages pass hidden states forward and the batch is
// cut into micro-batches so stage s works on micro-batch i while stage s+1 works on i-1;
// the last stage's tensor rank 0 sends the logits back to the leader.
//
// Health: when the group has been idle for a probe interval, the leader broadcasts a
// PROBE step and all-reduces one number across every rank, bounded by the probe interval.
// Any collective failing, or a follower's rendezvous stream breaking, fails the group for
// good: every later Forward returns UNAVAILABLE naming the lost rank, and the owner's
// failure callback runs once (the server turns NOT_SERVING and exits non-zero).
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

#include "absl/status/statusor.h"
#include "worker/models/causal_lm.h"
#include "worker/parallel/group_member.h"

namespace shoal::worker {

// Runs this rank's part of one FORWARD step: its stage over every micro-batch, receiving
// hidden states from the stage before and sending to the one after. On the leader, fills
// *logits (rows of want_logits sequences, in batch order); elsewhere `logits` is unused.
absl::Status RunStageStep(GroupMember& member, CausalLM& local, const ForwardBatch& batch, int64_t step,
                          std::vector<float>* logits);

class GroupCausalLM final : public CausalLM {
 public:
  using FailureCallback = std::function<void(const absl::Status&)>;

  // `member` is the leader's membership; `local` the leader's shard, built with
  // member->tensor_group() as its CausalLMOptions.tensor_group. Exchanges the per-rank KV
  // sizes with the followers (they do the same at the start of FollowerLoop).
  static absl::StatusOr<std::unique_ptr<GroupCausalLM>> Create(std::unique_ptr<GroupMember> member,
                                                               std::unique_ptr<CausalLM> local);
  ~GroupCausalLM() override;

  const ModelConfig& config() const override { return local_->config(); }
  const ShardSpec& shard() const override { return local_->shard(); }
  // The largest of any rank's, so every rank's cache holds the blocks the leader hands out.
  size_t KvBytesPerBlock(int block_size) const override { return max_kv_bytes_per_token_ * block_size; }
  absl::Status AllocateKvCache(int64_t num_blocks, int block_size) override;
  absl::Status Forward(const ForwardBatch& batch, std::vector<float>* logits) override;
  size_t WeightBytes() const override { return local_->WeightBytes(); }

  // Runs once, on whichever thread notices the failure first.
  void SetOnFailure(FailureCallback fn);
  // Health probe now (also run by the prober thread when idle).
  absl::Status Probe();
  // OK while the group is whole.
  absl::Status health() const;
  GroupMember& member() { return *member_; }
  // Tells the followers to leave their loops (clean shutdown).
  void Stop();

 private:
  GroupCausalLM() = default;
  absl::Status Broadcast(const std::string& step_bytes);
  // Turns a collective's error into the group's failure, naming the lost rank when the
  // rendezvous service knows it.
  absl::Status Fail(const absl::Status& cause, const char* during);
  void ProbeLoop();

  std::unique_ptr<GroupMember> member_;
  std::unique_ptr<CausalLM> local_;
  size_t max_kv_bytes_per_token_ = 0;
  int64_t step_ = 0;

  mutable std::mutex mu_;  // the communicators: one step, probe or allocation at a time
  std::chrono::steady_clock::time_point last_activity_;
  absl::Status failed_;
  bool stopped_ = false;
  FailureCallback on_failure_;
  std::atomic<bool> failure_reported_{false};

  mutable std::mutex probe_mu_;
  std::condition_variable probe_cv_;
  bool probe_stop_ = false;
  std::thread prober_;
};

// A follower's life: receives steps from the leader and runs them on `local` until the
// leader says STOP (OK) or the group breaks (the error, naming what broke).
absl::Status FollowerLoop(GroupMember& member, CausalLM& local);

}  // namespace shoal::worker
