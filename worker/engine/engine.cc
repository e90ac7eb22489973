// The step loop. One thread owns the scheduler, the block pool, the sequences and the
// model; other threads only hand it requests and cancellations through a mutex-guarded
// inbox and read a stats snapshot. Each loop iteration:
//   admit new requests -> apply cancellations -> schedule -> Forward -> sample -> stop
//   checks -> detokenize -> publish stats -> invoke callbacks (without the lock held).
// The loop sleeps on a condition variable whenever there is nothing to run.
#include "worker/engine/engine.h"

#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "worker/common/log.h"
#include "worker/common/status_macros.h"
#include "worker/engine/kv_block_pool.h"
#include "worker/engine/sampler.h"
#include "worker/engine/scheduler.h"
#include "worker/engine/sequence.h"
#include "worker/engine/stop_checker.h"
#include "worker/models/causal_lm.h"
#include "worker/tokenizer/tokenizer.h"

namespace shoal::worker {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int kMaxTopLogprobs = 20;

// Everything the loop keeps about one request besides its Sequence.
struct RequestState {
  RequestState(std::unique_ptr<Sequence> s, OutputCallback cb, StopChecker stop,
               const Tokenizer& tok, Clock::time_point arrival)
      : seq(std::move(s)), on_output(std::move(cb)), stop(std::move(stop)), detok(tok),
        arrival(arrival) {}
  std::unique_ptr<Sequence> seq;
  OutputCallback on_output;
  StopChecker stop;
  StreamingDetokenizer detok;
  Clock::time_point arrival;
  double ttft_seconds = -1.0;
};

struct Incoming {
  GenerationRequest request;
  OutputCallback on_output;
  Clock::time_point arrival;
};

absl::Status FieldError(const std::string& message) { return absl::InvalidArgumentError(message); }

class EngineImpl final : public Engine {
 public:
  EngineImpl(const EngineOptions& options, std::unique_ptr<CausalLM> model,
             std::shared_ptr<const Tokenizer> tokenizer, int64_t num_blocks, int max_model_len)
      : options_(options),
        model_(std::move(model)),
        tokenizer_(std::move(tokenizer)),
        max_model_len_(max_model_len),
        vocab_size_(model_->config().vocab_size),
        pool_(num_blocks, options.block_size, options.enable_prefix_caching),
        scheduler_({options.max_num_seqs, options.max_num_batched_tokens}, &pool_),
        seed_source_(std::random_device{}()) {
    eos_ids_ = tokenizer_->eos_ids();
    for (int32_t id : model_->config().eos_token_ids) {
      if (std::find(eos_ids_.begin(), eos_ids_.end(), id) == eos_ids_.end()) eos_ids_.push_back(id);
    }
    stats_.num_total_blocks = num_blocks;
    stats_.num_free_blocks = num_blocks;
    thread_ = std::thread([this] { Loop(); });
  }

  ~EngineImpl() override { Shutdown(); }

  absl::Status Validate(const GenerationRequest& r) const override {
    const SamplingOptions& s = r.sampling;
    if (r.request_id.empty()) return FieldError("request_id must not be empty");
    if (std::isnan(s.temperature) || s.temperature < 0.0f) {
      return FieldError(fmt::format("sampling.temperature must be >= 0, got {}", s.temperature));
    }
    if (!(s.top_p > 0.0f && s.top_p <= 1.0f)) {
      return FieldError(fmt::format("sampling.top_p must be in (0, 1], got {}", s.top_p));
    }
    if (s.top_k < 0) return FieldError(fmt::format("sampling.top_k must be >= 0, got {}", s.top_k));
    if (!(s.min_p >= 0.0f && s.min_p <= 1.0f)) {
      return FieldError(fmt::format("sampling.min_p must be in [0, 1], got {}", s.min_p));
    }
    if (!(s.repetition_penalty > 0.0f) || std::isinf(s.repetition_penalty)) {
      return FieldError(fmt::format("sampling.repetition_penalty must be > 0, got {}",
                                    s.repetition_penalty));
    }
    if (!(s.presence_penalty >= -2.0f && s.presence_penalty <= 2.0f)) {
      return FieldError(fmt::format("sampling.presence_penalty must be in [-2, 2], got {}",
                                    s.presence_penalty));
    }
    if (!(s.frequency_penalty >= -2.0f && s.frequency_penalty <= 2.0f)) {
      return FieldError(fmt::format("sampling.frequency_penalty must be in [-2, 2], got {}",
                                    s.frequency_penalty));
    }
    if (r.stop.max_tokens < 0) {
      return FieldError(fmt::format("stop.max_tokens must be >= 0, got {}", r.stop.max_tokens));
    }
    for (size_t i = 0; i < r.stop.stop_strings.size(); ++i) {
      if (r.stop.stop_strings[i].empty()) {
        return FieldError(fmt::format("stop.stop_strings[{}] must not be empty", i));
      }
    }
    for (size_t i = 0; i < r.stop.stop_token_ids.size(); ++i) {
      int32_t t = r.stop.stop_token_ids[i];
      if (t < 0 || t >= vocab_size_) {
        return FieldError(fmt::format("stop.stop_token_ids[{}] = {} is outside the vocabulary of {}",
                                      i, t, vocab_size_));
      }
    }
    if (r.top_logprobs < 0 || r.top_logprobs > kMaxTopLogprobs) {
      return FieldError(fmt::format("top_logprobs must be in [0, {}], got {}", kMaxTopLogprobs,
                                    r.top_logprobs));
    }
    const int64_t n = static_cast<int64_t>(r.prompt_tokens.size());
    if (n == 0) return FieldError("prompt_tokens must not be empty");
    if (n >= max_model_len_) {
      return FieldError(fmt::format("prompt has {} tokens, the model's context is {}", n,
                                    max_model_len_));
    }
    if (r.stop.max_tokens > 0 && n + r.stop.max_tokens > max_model_len_) {
      return FieldError(fmt::format(
          "prompt has {} tokens and stop.max_tokens is {}, more than the model's context of {}", n,
          r.stop.max_tokens, max_model_len_));
    }
    for (int64_t i = 0; i < n; ++i) {
      int32_t t = r.prompt_tokens[i];
      if (t < 0 || t >= vocab_size_) {
        return FieldError(fmt::format("prompt_tokens[{}] = {} is outside the vocabulary of {}", i,
                                      t, vocab_size_));
      }
    }
    std::lock_guard lock(mu_);
    if (active_ids_.contains(r.request_id)) {
      return FieldError(fmt::format("request_id \"{}\" is already in use", r.request_id));
    }
    return absl::OkStatus();
  }

  absl::Status Submit(GenerationRequest request, OutputCallback on_output) override {
    RETURN_IF_ERROR(Validate(request));
    std::lock_guard lock(mu_);
    if (stopping_) return absl::UnavailableError("the engine is shut down");
    if (active_ids_.contains(request.request_id)) {
      return FieldError(fmt::format("request_id \"{}\" is already in use", request.request_id));
    }
    const int64_t queued = static_cast<int64_t>(inbox_.size()) + num_scheduler_waiting_;
    if (queued >= options_.max_waiting) {
      return absl::ResourceExhaustedError(fmt::format(
          "{} requests are already waiting, the limit is {}", queued, options_.max_waiting));
    }
    active_ids_.insert(request.request_id);
    inbox_.push_back({std::move(request), std::move(on_output), Clock::now()});
    cv_.notify_one();
    return absl::OkStatus();
  }

  void Cancel(const std::string& request_id) override {
    std::lock_guard lock(mu_);
    if (!active_ids_.contains(request_id)) return;
    cancels_.insert(request_id);
    cv_.notify_one();
  }

  EngineStats Stats() const override {
    std::lock_guard lock(mu_);
    return stats_;
  }

  // Returns only once no call of the previous observer is running, so its owner may go
  // away right after clearing it (WorkerServer's metrics do).
  void SetStepObserver(StepObserver observer) override {
    std::lock_guard lock(observer_mu_);
    observer_ = std::move(observer);
  }

  void Shutdown() override {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
      cv_.notify_one();
    }
    // Callbacks must not call Shutdown (the loop cannot join itself).
    std::lock_guard join_lock(join_mu_);
    if (thread_.joinable() && std::this_thread::get_id() != thread_.get_id()) thread_.join();
  }

  const CausalLM& model() const override { return *model_; }
  const Tokenizer& tokenizer() const override { return *tokenizer_; }
  int max_model_len() const override { return max_model_len_; }

 private:
  void Loop();
  void Admit(std::vector<Incoming> incoming);
  void ApplyCancels(const std::unordered_set<std::string>& ids);
  void RunStep();
  // Samples the row on the host, then Emit.
  void EmitToken(RequestState* st, std::span<float> row);
  // The chosen token into the sequence, the detokenizer and the stop checks; out to the client.
  void Emit(RequestState* st, SampleResult r);
  // Ends a request: takes it out of the scheduler (freeing its blocks) and queues its
  // final output.
  void Finish(RequestState* st, GenerationOutput out, FinishReason reason, absl::Status error);
  GenerationOutput NewOutput(const RequestState& st) const;
  void PublishAndDeliver(bool stepped, int64_t step_tokens, double step_seconds);

  const EngineOptions options_;
  std::unique_ptr<CausalLM> model_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  const int max_model_len_;
  const int64_t vocab_size_;
  std::vector<int32_t> eos_ids_;

  // Loop thread only.
  KvBlockPool pool_;
  Scheduler scheduler_;
  std::unordered_map<Sequence*, std::unique_ptr<RequestState>> requests_;
  std::unordered_map<std::string, RequestState*> by_id_;
  std::vector<std::pair<OutputCallback*, GenerationOutput>> outbox_;
  std::vector<std::unique_ptr<RequestState>> finished_;  // kept until their callbacks ran
  std::vector<float> logits_;
  std::vector<int32_t> device_tokens_;  // a step's tokens from a model that samples on its device
  std::mt19937_64 seed_source_;
  int64_t next_seq_id_ = 0;
  int64_t hits_total_ = 0, queries_total_ = 0, preemptions_total_ = 0, steps_total_ = 0;
  std::vector<std::string> retired_ids_;

  // Shared with callers.
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::deque<Incoming> inbox_;
  std::unordered_set<std::string> cancels_;
  std::unordered_set<std::string> active_ids_;
  EngineStats stats_;
  int num_scheduler_waiting_ = 0;
  std::mutex observer_mu_;  // held while the observer runs; never with mu_
  StepObserver observer_;   // guarded by observer_mu_
  std::mutex join_mu_;
  std::thread thread_;
};

void EngineImpl::Loop() {
  for (;;) {
    std::vector<Incoming> incoming;
    std::unordered_set<std::string> cancels;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] {
        return stopping_ || !inbox_.empty() || !cancels_.empty() || scheduler_.has_work();
      });
      if (stopping_) break;
      incoming.assign(std::make_move_iterator(inbox_.begin()), std::make_move_iterator(inbox_.end()));
      inbox_.clear();
      cancels.swap(cancels_);
    }
    Admit(std::move(incoming));
    ApplyCancels(cancels);
    if (scheduler_.has_work()) {
      RunStep();
    } else {
      PublishAndDeliver(false, 0, 0.0);
    }
  }
  // Shutdown: everything still queued or running fails with UNAVAILABLE.
  std::vector<Incoming> incoming;
  {
    std::lock_guard lock(mu_);
    incoming.assign(std::make_move_iterator(inbox_.begin()), std::make_move_iterator(inbox_.end()));
    inbox_.clear();
  }
  Admit(std::move(incoming));
  std::vector<RequestState*> all;
  for (auto& [seq, st] : requests_) all.push_back(st.get());
  for (RequestState* st : all) {
    Finish(st, NewOutput(*st), FinishReason::kError,
           absl::UnavailableError("the engine shut down before the request finished"));
  }
  PublishAndDeliver(false, 0, 0.0);
}

void EngineImpl::Admit(std::vector<Incoming> incoming) {
  for (Incoming& in : incoming) {
    GenerationRequest& r = in.request;
    auto seq = std::make_unique<Sequence>(next_seq_id_++, r.request_id, std::move(r.prompt_tokens));
    seq->sampling = r.sampling;
    seq->stop = r.stop;
    seq->include_logprobs = r.include_logprobs;
    seq->top_logprobs = r.top_logprobs;
    seq->rng.seed(r.sampling.seed.has_value() ? *r.sampling.seed : seed_source_());
    StopChecker stop(r.stop, r.stop.ignore_eos ? std::vector<int32_t>{} : eos_ids_, max_model_len_);
    Sequence* raw = seq.get();
    auto st = std::make_unique<RequestState>(std::move(seq), std::move(in.on_output),
                                             std::move(stop), *tokenizer_, in.arrival);
    by_id_[raw->request_id] = st.get();
    requests_[raw] = std::move(st);
    scheduler_.Add(raw);
    spdlog::debug("engine admit request_id={} prompt_tokens={}", raw->request_id, raw->num_tokens());
  }
}

void EngineImpl::ApplyCancels(const std::unordered_set<std::string>& ids) {
  for (const std::string& id : ids) {
    auto it = by_id_.find(id);
    if (it == by_id_.end()) continue;  // finished in the meantime
    RequestState* st = it->second;
    Finish(st, NewOutput(*st), FinishReason::kCancelled, absl::OkStatus());
  }
}

void EngineImpl::RunStep() {
  const auto t0 = Clock::now();
  SchedulePlan plan = scheduler_.Schedule();
  hits_total_ += plan.num_cache_hit_tokens;
  queries_total_ += plan.num_cache_query_tokens;
  preemptions_total_ += static_cast<int64_t>(plan.preempted.size());
  for (Sequence* s : plan.preempted) {
    spdlog::debug("engine preempt request_id={} num_tokens={}", s->request_id, s->num_tokens());
  }
  if (plan.empty()) {
    // Only a waiting sequence that needs more blocks than the whole pool gets here, which
    // max_model_len (clamped to the pool) rules out; fail it rather than spin.
    if (plan.preempted.empty() && scheduler_.num_running() == 0 && scheduler_.num_waiting() > 0) {
      Sequence* s = scheduler_.waiting().front();
      RequestState* st = requests_.at(s).get();
      Finish(st, NewOutput(*st), FinishReason::kError,
             absl::ResourceExhaustedError(fmt::format(
                 "request needs more KV blocks than the cache's {}", pool_.num_total_blocks())));
    }
    PublishAndDeliver(false, 0, 0.0);
    return;
  }

  ForwardBatch batch;
  batch.seqs.reserve(plan.chunks.size());
  int64_t num_rows = 0;
  for (const ScheduledChunk& c : plan.chunks) {
    SequenceChunk sc;
    sc.tokens = std::span<const int32_t>(c.seq->tokens.data() + c.start_pos, c.num_tokens);
    sc.start_pos = c.start_pos;
    sc.block_table = c.seq->block_table;
    sc.want_logits = c.want_logits;
    num_rows += c.want_logits ? 1 : 0;
    batch.seqs.push_back(sc);
  }
  // A model that samples on its device gets each row's rules and draw, and returns only
  // tokens; logprobs need the logits here, so a step with such a request samples here.
  bool on_device = model_->SamplesOnDevice();
  for (const ScheduledChunk& c : plan.chunks) on_device = on_device && !(c.want_logits && c.seq->include_logprobs);
  logits_.clear();
  device_tokens_.clear();
  absl::Status status;
  if (on_device) {
    std::vector<RowSampling> rows;
    for (const ScheduledChunk& c : plan.chunks) {
      if (!c.want_logits) continue;
      Sequence& seq = *c.seq;
      const SamplingOptions& o = seq.sampling;
      RowSampling r;
      cuda::SamplingRow& p = r.params;
      p.temperature = o.temperature;
      p.top_k = o.top_k;
      p.top_p = o.top_p;
      p.min_p = o.min_p;
      p.repetition_penalty = o.repetition_penalty;
      p.presence_penalty = o.presence_penalty;
      p.frequency_penalty = o.frequency_penalty;
      // The draw Sampler::Sample would take from the sequence's RNG, taken now.
      if (!Sampler::IsGreedy(o)) p.uniform = Sampler::Uniform(&seq.rng);
      r.tokens = seq.tokens;
      r.num_prompt_tokens = seq.num_prompt_tokens;
      rows.push_back(r);
    }
    status = model_->ForwardSample(batch, rows, &device_tokens_);
    if (status.ok() && static_cast<int64_t>(device_tokens_.size()) != num_rows) {
      status = absl::InternalError(
          fmt::format("model returned {} tokens for {} rows", device_tokens_.size(), num_rows));
    }
  } else {
    status = model_->Forward(batch, &logits_);
    if (status.ok() && static_cast<int64_t>(logits_.size()) != num_rows * vocab_size_) {
      status = absl::InternalError(fmt::format("model returned {} logits for {} rows of {}",
                                               logits_.size(), num_rows, vocab_size_));
    }
  }
  if (!status.ok()) {
    // The KV these sequences were writing is in an unknown state: fail exactly them.
    spdlog::error("engine forward failed step={} seqs={} error={}", steps_total_,
                  plan.chunks.size(), status.ToString());
    absl::Status err(status.code(), fmt::format("model forward failed: {}", std::string(status.message())));
    for (const ScheduledChunk& c : plan.chunks) {
      RequestState* st = requests_.at(c.seq).get();
      Finish(st, NewOutput(*st), FinishReason::kError, err);
    }
    ++steps_total_;
    PublishAndDeliver(true, plan.num_batched_tokens,
                      std::chrono::duration<double>(Clock::now() - t0).count());
    return;
  }
  scheduler_.OnStepComputed(plan);
  int64_t row = 0;
  for (const ScheduledChunk& c : plan.chunks) {
    if (!c.want_logits) continue;
    RequestState* st = requests_.at(c.seq).get();
    if (on_device) {
      const int32_t token = device_tokens_[row++];
      if (token < 0) {
        Finish(st, NewOutput(*st), FinishReason::kError, absl::InternalError("model produced NaN logits"));
      } else {
        SampleResult r;
        r.token_id = token;
        Emit(st, std::move(r));
      }
      continue;
    }
    std::span<float> logits(logits_.data() + row * vocab_size_, vocab_size_);
    ++row;
    EmitToken(st, logits);
  }
  ++steps_total_;
  PublishAndDeliver(true, plan.num_batched_tokens,
                    std::chrono::duration<double>(Clock::now() - t0).count());
}

void EngineImpl::EmitToken(RequestState* st, std::span<float> logits) {
  Sequence& seq = *st->seq;
  for (float x : logits) {
    if (std::isnan(x)) {
      Finish(st, NewOutput(*st), FinishReason::kError,
             absl::InternalError("model produced NaN logits"));
      return;
    }
  }
  Emit(st, Sampler::Sample(logits, seq.sampling, seq.tokens, seq.num_prompt_tokens, &seq.rng,
                           seq.include_logprobs, seq.top_logprobs));
}

void EngineImpl::Emit(RequestState* st, SampleResult r) {
  Sequence& seq = *st->seq;
  seq.tokens.push_back(r.token_id);
  if (st->ttft_seconds < 0) {
    st->ttft_seconds = std::chrono::duration<double>(Clock::now() - st->arrival).count();
  }
  const bool stop_token = st->stop.IsStopToken(r.token_id);
  std::string piece = stop_token ? std::string() : st->detok.Push(r.token_id);
  StopDecision d = st->stop.Step(r.token_id, piece, seq.num_output_tokens(), seq.num_tokens());

  GenerationOutput out = NewOutput(*st);
  out.token_ids.push_back(r.token_id);
  out.text = std::move(d.text);
  if (seq.include_logprobs) {
    out.logprobs.push_back({r.token_id, r.logprob, std::move(r.top)});
  }
  if (d.finish == FinishReason::kNone) {
    outbox_.emplace_back(&st->on_output, std::move(out));
    return;
  }
  // A stop string drops everything after it; any other end releases the bytes the
  // detokenizer still holds.
  if (d.matched_stop.empty()) out.text += st->detok.Flush();
  out.matched_stop = std::move(d.matched_stop);
  Finish(st, std::move(out), d.finish, absl::OkStatus());
}

GenerationOutput EngineImpl::NewOutput(const RequestState& st) const {
  GenerationOutput out;
  out.request_id = st.seq->request_id;
  return out;
}

void EngineImpl::Finish(RequestState* st, GenerationOutput out, FinishReason reason,
                        absl::Status error) {
  Sequence* seq = st->seq.get();
  scheduler_.Remove(seq);
  out.finish = reason;
  out.error = std::move(error);
  out.prompt_tokens = static_cast<int32_t>(seq->num_prompt_tokens);
  out.completion_tokens = static_cast<int32_t>(seq->num_output_tokens());
  out.cached_prompt_tokens = static_cast<int32_t>(seq->num_cached_prompt_tokens);
  out.time_to_first_token_seconds = std::max(0.0, st->ttft_seconds);
  spdlog::debug("engine finish request_id={} reason={} completion_tokens={}", seq->request_id,
                static_cast<int>(reason), out.completion_tokens);
  retired_ids_.push_back(seq->request_id);
  by_id_.erase(seq->request_id);
  auto node = requests_.extract(seq);
  outbox_.emplace_back(&node.mapped()->on_output, std::move(out));
  finished_.push_back(std::move(node.mapped()));
}

// Publishes the stats snapshot and retires finished ids under the lock, then runs the
// callbacks without it (a callback may call Cancel()).
void EngineImpl::PublishAndDeliver(bool stepped, int64_t step_tokens, double step_seconds) {
  EngineStats snapshot;
  {
    std::lock_guard lock(mu_);
    stats_.running = scheduler_.num_running();
    num_scheduler_waiting_ = scheduler_.num_waiting();
    // Requests not yet taken in by the loop are waiting too.
    stats_.waiting = num_scheduler_waiting_ + static_cast<int>(inbox_.size());
    stats_.num_free_blocks = pool_.num_free_blocks();
    stats_.num_total_blocks = pool_.num_total_blocks();
    stats_.kv_cache_usage =
        pool_.num_total_blocks() == 0
            ? 0.0
            : 1.0 - static_cast<double>(pool_.num_free_blocks()) / pool_.num_total_blocks();
    stats_.prefix_cache_hits_total = hits_total_;
    stats_.prefix_cache_queries_total = queries_total_;
    stats_.preemptions_total = preemptions_total_;
    stats_.steps_total = steps_total_;
    if (stepped) {
      stats_.last_step_tokens = step_tokens;
      stats_.last_step_seconds = step_seconds;
    }
    for (const std::string& id : retired_ids_) active_ids_.erase(id);
    retired_ids_.clear();
    snapshot = stats_;
  }
  for (auto& [cb, out] : outbox_) {
    if (*cb) (*cb)(std::move(out));
  }
  outbox_.clear();
  finished_.clear();
  if (stepped) {
    std::lock_guard lock(observer_mu_);
    if (observer_) observer_(snapshot);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const EngineOptions& options,
                                                       std::unique_ptr<CausalLM> model,
                                                       std::shared_ptr<const Tokenizer> tokenizer) {
  if (model == nullptr) return absl::InvalidArgumentError("engine needs a model");
  if (tokenizer == nullptr) return absl::InvalidArgumentError("engine needs a tokenizer");
  if (options.block_size <= 0) {
    return FieldError(fmt::format("block_size must be > 0, got {}", options.block_size));
  }
  if (options.max_num_seqs <= 0) {
    return FieldError(fmt::format("max_num_seqs must be > 0, got {}", options.max_num_seqs));
  }
  if (options.max_num_batched_tokens <= 0) {
    return FieldError(fmt::format("max_num_batched_tokens must be > 0, got {}",
                                  options.max_num_batched_tokens));
  }
  if (options.num_kv_blocks < 0) {
    return FieldError(fmt::format("num_kv_blocks must be >= 0, got {}", options.num_kv_blocks));
  }
  if (options.max_model_len < 0) {
    return FieldError(fmt::format("max_model_len must be >= 0, got {}", options.max_model_len));
  }
  int64_t num_blocks = options.num_kv_blocks;
  if (num_blocks == 0) {
    const size_t per_block = model->KvBytesPerBlock(options.block_size);
    if (per_block == 0) return absl::InternalError("model reports 0 KV bytes per block");
    num_blocks = static_cast<int64_t>(options.kv_cache_bytes / per_block);
    if (num_blocks == 0) {
      return FieldError(fmt::format(
          "kv_cache_bytes {} holds no KV block: one block of {} tokens takes {} bytes",
          options.kv_cache_bytes, options.block_size, per_block));
    }
  }
  if (num_blocks > INT32_MAX) num_blocks = INT32_MAX;
  int64_t max_len = options.max_model_len > 0 ? options.max_model_len
                                              : model->config().max_position_embeddings;
  const int64_t pool_tokens = num_blocks * options.block_size;
  if (max_len > pool_tokens) {
    // A sequence must fit the cache alone, or preemption could never make room for it.
    spdlog::warn("engine max_model_len={} exceeds the KV cache's {} tokens; using {}", max_len,
                 pool_tokens, pool_tokens);
    max_len = pool_tokens;
  }
  RETURN_IF_ERROR(model->AllocateKvCache(num_blocks, options.block_size));
  spdlog::info("engine kv_blocks={} block_size={} max_model_len={} prefix_caching={}", num_blocks,
               options.block_size, max_len, options.enable_prefix_caching);
  return std::unique_ptr<Engine>(new EngineImpl(options, std::move(model), std::move(tokenizer),
                                                num_blocks, static_cast<int>(max_len)));
}

}  // namespace shoal::worker
