#include "worker/parallel/group_causal_lm.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>

#include "shoal/v1/group.pb.h"
#include "worker/common/status_macros.h"

namespace shoal::worker {
namespace {

using Clock = std::chrono::steady_clock;

// Tags of point-to-point messages: unique per step, micro-batch and kind.
enum class Payload : uint64_t { kHidden = 0, kLogits = 1 };
uint64_t Tag(int64_t step, size_t micro_batch, Payload kind) {
  return (static_cast<uint64_t>(step) << 20) | (static_cast<uint64_t>(micro_batch) << 1) | static_cast<uint64_t>(kind);
}

std::span<std::byte> Bytes(std::vector<float>& v) { return std::as_writable_bytes(std::span<float>(v)); }

// Contiguous runs of sequences with about equal token counts, at most one per
// `min_tokens` tokens; every rank computes the same.
std::vector<ForwardBatch> SplitMicroBatches(const ForwardBatch& batch, int wanted, int min_tokens) {
  int64_t total = 0;
  for (const SequenceChunk& c : batch.seqs) total += static_cast<int64_t>(c.tokens.size());
  wanted = static_cast<int>(std::min<int64_t>(wanted, std::max<int64_t>(1, total / min_tokens)));
  const int m = std::max(1, std::min<int>(wanted, static_cast<int>(batch.seqs.size())));
  std::vector<ForwardBatch> out(m);
  int64_t seen = 0;
  size_t next = 0;
  for (int i = 0; i < m; ++i) {
    const int64_t target = total * (i + 1) / m;
    // Leave at least one sequence for each micro-batch still to come.
    const size_t limit = batch.seqs.size() - (m - 1 - i);
    while (next < limit && (out[i].seqs.empty() || seen < target || i == m - 1)) {
      seen += static_cast<int64_t>(batch.seqs[next].tokens.size());
      out[i].seqs.push_back(batch.seqs[next++]);
    }
  }
  return out;
}

int64_t NumTokens(const ForwardBatch& b) {
  int64_t n = 0;
  for (const SequenceChunk& c : b.seqs) n += static_cast<int64_t>(c.tokens.size());
  return n;
}

int64_t NumLogitRows(const ForwardBatch& b) {
  int64_t n = 0;
  for (const SequenceChunk& c : b.seqs) n += c.want_logits ? 1 : 0;
  return n;
}

void EncodeBatch(const ForwardBatch& batch, v1::GroupStep* step) {
  for (const SequenceChunk& c : batch.seqs) {
    v1::StepSequence* s = step->add_seqs();
    s->mutable_tokens()->Add(c.tokens.begin(), c.tokens.end());
    s->set_start_pos(c.start_pos);
    s->mutable_block_table()->Add(c.block_table.begin(), c.block_table.end());
    s->set_want_logits(c.want_logits);
  }
}

// The batch as views into the decoded proto (which must outlive it).
ForwardBatch DecodeBatch(const v1::GroupStep& step) {
  ForwardBatch b;
  for (const v1::StepSequence& s : step.seqs()) {
    b.seqs.push_back({std::span<const int32_t>(s.tokens().data(), s.tokens_size()), s.start_pos(),
                      std::span<const int32_t>(s.block_table().data(), s.block_table_size()), s.want_logits()});
  }
  return b;
}

// Every rank's KV bytes per cached token; the leader sizes the cache by the largest.
absl::StatusOr<size_t> ExchangeKvBytes(GroupMember& member, const CausalLM& local) {
  Communicator& world = member.world();
  std::vector<float> mine = {static_cast<float>(local.KvBytesPerBlock(1))};
  std::vector<float> all(world.size());
  RETURN_IF_ERROR(world.AllGather(mine, all));
  return static_cast<size_t>(*std::max_element(all.begin(), all.end()));
}

}  // namespace

absl::Status RunStageStep(GroupMember& member, CausalLM& local, const ForwardBatch& batch, int64_t step,
                          std::vector<float>* logits) {
  const GroupLayout& g = member.layout();
  const int rank = member.rank();
  const int stage = g.stage_of(rank), tp = g.tp_rank_of(rank);
  const bool first = stage == 0, last = stage == g.pipeline - 1;
  const int64_t hidden = local.config().hidden_size, vocab = local.config().vocab_size;
  Communicator& world = member.world();

  const std::vector<ForwardBatch> mbs = g.pipeline > 1 ? SplitMicroBatches(batch, member.micro_batches(),
                                                                           member.min_micro_batch_tokens())
                                                       : std::vector<ForwardBatch>{batch};
  std::vector<std::vector<float>> outs(mbs.size());  // alive until their sends complete
  std::vector<float> in;
  if (logits != nullptr) logits->clear();
  for (size_t i = 0; i < mbs.size(); ++i) {
    if (!first) {
      in.resize(NumTokens(mbs[i]) * hidden);
      const int src = g.rank_of(stage - 1, tp);
      if (absl::Status st = world.Recv(Bytes(in), src, Tag(step, i, Payload::kHidden)); !st.ok()) {
        return absl::Status(st.code(), fmt::format("receiving the hidden states of step {} micro-batch {} from {}: {}",
                                                   step, i, g.Describe(src), std::string(st.message())));
      }
    }
    // A rank holding the whole model runs it as one (any CausalLM can); stages take and
    // give hidden states.
    RETURN_IF_ERROR(first && last ? local.Forward(mbs[i], &outs[i])
                                  : local.ForwardStage(mbs[i], first ? std::span<const float>() : std::span<const float>(in),
                                                       &outs[i]));
    if (!last) {
      RETURN_IF_ERROR(world.SendAsync(Bytes(outs[i]), g.rank_of(stage + 1, tp), Tag(step, i, Payload::kHidden)));
    } else if (rank == 0) {
      logits->insert(logits->end(), outs[i].begin(), outs[i].end());
    } else if (tp == 0 && !outs[i].empty()) {
      RETURN_IF_ERROR(world.SendAsync(Bytes(outs[i]), 0, Tag(step, i, Payload::kLogits)));
    }
  }
  if (rank == 0 && !last) {
    // The leader's micro-batches are all on their way; collect the logits in order.
    for (size_t i = 0; i < mbs.size(); ++i) {
      const int64_t rows = NumLogitRows(mbs[i]);
      if (rows == 0) continue;
      const size_t at = logits->size();
      logits->resize(at + rows * vocab);
      const int src = g.rank_of(g.pipeline - 1, 0);
      if (absl::Status st = world.Recv(std::as_writable_bytes(std::span<float>(logits->data() + at, rows * vocab)), src,
                                       Tag(step, i, Payload::kLogits));
          !st.ok()) {
        return absl::Status(st.code(), fmt::format("receiving the logits of step {} micro-batch {} from {}: {}", step, i,
                                                   g.Describe(src), std::string(st.message())));
      }
    }
  }
  return world.WaitSends();
}

absl::StatusOr<std::unique_ptr<GroupCausalLM>> GroupCausalLM::Create(std::unique_ptr<GroupMember> member,
                                                                     std::unique_ptr<CausalLM> local) {
  if (!member->is_leader()) return absl::InvalidArgumentError("GroupCausalLM runs on the group leader (rank 0) only");
  auto g = std::unique_ptr<GroupCausalLM>(new GroupCausalLM());
  g->member_ = std::move(member);
  g->local_ = std::move(local);
  ASSIGN_OR_RETURN(g->max_kv_bytes_per_token_, ExchangeKvBytes(*g->member_, *g->local_));
  g->last_activity_ = Clock::now();
  GroupCausalLM* raw = g.get();
  g->member_->SetOnPeerLost([raw](const std::string& what) {
    raw->Fail(absl::UnavailableError(what), "watching the group's connections").IgnoreError();
  });
  g->prober_ = std::thread([raw] { raw->ProbeLoop(); });
  return g;
}

GroupCausalLM::~GroupCausalLM() {
  {
    std::lock_guard lock(probe_mu_);
    probe_stop_ = true;
    probe_cv_.notify_all();
  }
  if (prober_.joinable()) prober_.join();
  Stop();
}

void GroupCausalLM::SetOnFailure(FailureCallback fn) {
  std::lock_guard lock(probe_mu_);
  on_failure_ = std::move(fn);
}

absl::Status GroupCausalLM::health() const {
  std::lock_guard lock(probe_mu_);
  return failed_;
}

absl::Status GroupCausalLM::Fail(const absl::Status& cause, const char* during) {
  absl::Status status;
  FailureCallback fn;
  {
    std::unique_lock lock(probe_mu_);
    if (!failed_.ok()) return failed_;
    // A dead follower is usually seen by Gloo and by its broken rendezvous stream at about
    // the same moment; give the stream a moment so the error can name the rank.
    auto lost = member_->lost_rank();
    for (int i = 0; i < 20 && !lost && cause.code() == absl::StatusCode::kUnavailable; ++i) {
      lock.unlock();
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      lock.lock();
      if (!failed_.ok()) return failed_;
      lost = member_->lost_rank();
    }
    std::string who = lost ? fmt::format("{} on {} is lost", member_->layout().Describe(lost->first), lost->second)
                           : std::string("a rank stopped answering");
    status = absl::UnavailableError(fmt::format("model group failed while {}: {} ({})", during, who,
                                                std::string(cause.message())));
    failed_ = status;
    fn = on_failure_;
    probe_stop_ = true;
    probe_cv_.notify_all();
  }
  spdlog::error("group failed error=\"{}\"", std::string(status.message()));
  if (fn && !failure_reported_.exchange(true)) fn(status);
  return status;
}

absl::Status GroupCausalLM::Broadcast(const std::string& step_bytes) {
  Communicator& world = member_->world();
  int64_t header[2] = {static_cast<int64_t>(step_bytes.size()), step_};
  RETURN_IF_ERROR(world.Broadcast(std::as_writable_bytes(std::span<int64_t>(header, 2)), 0));
  std::string copy = step_bytes;
  return world.Broadcast(std::as_writable_bytes(std::span<char>(copy.data(), copy.size())), 0);
}

absl::Status GroupCausalLM::AllocateKvCache(int64_t num_blocks, int block_size) {
  std::lock_guard lock(mu_);
  if (absl::Status h = health(); !h.ok()) return h;
  v1::GroupStep step;
  step.set_kind(v1::GroupStep::ALLOCATE_KV);
  step.set_step(++step_);
  step.set_num_blocks(num_blocks);
  step.set_block_size(block_size);
  absl::Status st = Broadcast(step.SerializeAsString());
  absl::Status mine = local_->AllocateKvCache(num_blocks, block_size);
  std::vector<float> failures = {mine.ok() ? 0.0f : 1.0f};
  if (st.ok()) st = member_->world().AllReduceSum(failures);
  if (!st.ok()) return Fail(st, "allocating the KV cache");
  RETURN_IF_ERROR(mine);
  if (failures[0] > 0) {
    return absl::ResourceExhaustedError(fmt::format(
        "{} of the group's ranks could not allocate a KV cache of {} blocks of {} tokens (see their logs)",
        static_cast<int>(failures[0]), num_blocks, block_size));
  }
  last_activity_ = Clock::now();
  return absl::OkStatus();
}

absl::Status GroupCausalLM::Forward(const ForwardBatch& batch, std::vector<float>* logits) {
  std::lock_guard lock(mu_);
  if (absl::Status h = health(); !h.ok()) return h;
  v1::GroupStep step;
  step.set_kind(v1::GroupStep::FORWARD);
  step.set_step(++step_);
  EncodeBatch(batch, &step);
  absl::Status st = Broadcast(step.SerializeAsString());
  if (st.ok()) st = RunStageStep(*member_, *local_, batch, step_, logits);
  last_activity_ = Clock::now();
  if (st.ok()) return st;
  // Whatever failed, the ranks may now disagree about where in the step they are: the
  // group cannot go on.
  return Fail(st, "running a step");
}

absl::Status GroupCausalLM::Probe() {
  std::lock_guard lock(mu_);
  if (absl::Status h = health(); !h.ok()) return h;
  Communicator& world = member_->world();
  v1::GroupStep step;
  step.set_kind(v1::GroupStep::PROBE);
  step.set_step(++step_);
  const auto saved = world.timeout();
  world.SetTimeout(member_->probe_interval());
  absl::Status st = Broadcast(step.SerializeAsString());
  std::vector<float> one = {1.0f};
  if (st.ok()) st = world.AllReduceSum(one);
  world.SetTimeout(saved);
  last_activity_ = Clock::now();
  if (!st.ok()) return Fail(st, "probing the group's links");
  if (one[0] != static_cast<float>(world.size())) {
    return Fail(absl::InternalError(fmt::format("probe all-reduce summed to {}, expected {}", one[0], world.size())),
                "probing the group's links");
  }
  return absl::OkStatus();
}

void GroupCausalLM::ProbeLoop() {
  const auto interval = member_->probe_interval();
  for (;;) {
    {
      std::unique_lock lock(probe_mu_);
      if (probe_cv_.wait_for(lock, interval, [&] { return probe_stop_; })) return;
    }
    bool idle;
    {
      std::unique_lock lock(mu_, std::try_to_lock);
      if (!lock.owns_lock()) continue;  // a step is running: the group is busy, not idle
      idle = Clock::now() - last_activity_ >= interval;
    }
    if (idle) Probe().IgnoreError();  // a failure is recorded and reported by Fail
  }
}

void GroupCausalLM::Stop() {
  std::lock_guard lock(mu_);
  if (stopped_) return;
  stopped_ = true;
  member_->SetStopping();
  if (!health().ok()) return;
  v1::GroupStep step;
  step.set_kind(v1::GroupStep::STOP);
  step.set_step(++step_);
  // The barrier returns once every follower has taken the STOP in, so none of them
  // mistakes the leader's exit that follows for a lost leader.
  absl::Status st = Broadcast(step.SerializeAsString());
  if (st.ok()) st = member_->world().Barrier();
  if (!st.ok()) spdlog::warn("group stop: {}", st.ToString());
}

absl::Status FollowerLoop(GroupMember& member, CausalLM& local) {
  Communicator& world = member.world();
  RETURN_IF_ERROR(ExchangeKvBytes(member, local).status());
  // Between steps a follower waits for the leader, which probes at least every probe
  // interval while idle: silence much longer than that means the leader is gone or wedged.
  const auto step_timeout = world.timeout();
  const auto idle_timeout = step_timeout + 3 * member.probe_interval();
  for (;;) {
    int64_t header[2] = {0, 0};
    world.SetTimeout(idle_timeout);
    absl::Status st = world.Broadcast(std::as_writable_bytes(std::span<int64_t>(header, 2)), 0);
    world.SetTimeout(step_timeout);
    if (!st.ok()) {
      return absl::UnavailableError(fmt::format("{}: waiting for the leader's next step: {}",
                                                member.layout().Describe(member.rank()), std::string(st.message())));
    }
    // The leader's header sizes the step message; a garbled one must not size an allocation.
    constexpr int64_t kMaxStepBytes = int64_t{256} << 20;
    if (header[0] <= 0 || header[0] > kMaxStepBytes) {
      return absl::DataLossError(fmt::format("step {}: the leader announced a step message of {} bytes (expected 1..{})",
                                             header[1], header[0], kMaxStepBytes));
    }
    std::string bytes(header[0], '\0');
    RETURN_IF_ERROR(world.Broadcast(std::as_writable_bytes(std::span<char>(bytes.data(), bytes.size())), 0));
    v1::GroupStep step;
    if (!step.ParseFromString(bytes)) return absl::DataLossError(fmt::format("step {}: undecodable step message", header[1]));
    switch (step.kind()) {
      case v1::GroupStep::FORWARD: {
        const ForwardBatch batch = DecodeBatch(step);
        RETURN_IF_ERROR(RunStageStep(member, local, batch, step.step(), nullptr));
        break;
      }
      case v1::GroupStep::ALLOCATE_KV: {
        absl::Status mine = local.AllocateKvCache(step.num_blocks(), step.block_size());
        if (!mine.ok()) spdlog::error("group kv_allocation_failed error=\"{}\"", std::string(mine.message()));
        std::vector<float> failures = {mine.ok() ? 0.0f : 1.0f};
        RETURN_IF_ERROR(world.AllReduceSum(failures));
        if (failures[0] > 0) return absl::ResourceExhaustedError("the group could not allocate its KV cache");
        break;
      }
      case v1::GroupStep::PROBE: {
        std::vector<float> one = {1.0f};
        world.SetTimeout(member.probe_interval());
        st = world.AllReduceSum(one);
        world.SetTimeout(step_timeout);
        RETURN_IF_ERROR(st);
        break;
      }
      case v1::GroupStep::STOP:
        member.SetStopping();
        return world.Barrier();
      default:
        return absl::DataLossError(fmt::format("step {}: unknown kind {}", step.step(), static_cast<int>(step.kind())));
    }
  }
}

}  // namespace shoal::worker
