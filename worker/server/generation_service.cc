#include "worker/server/generation_service.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <deque>
#include <mutex>
#include <optional>
#include <random>

#include "worker/server/request_translation.h"

namespace shoal::worker {
namespace {

using Clock = std::chrono::steady_clock;

std::string_view FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kNone: return "none";
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kError: return "error";
  }
  return "none";
}

// One Generate call. Three parties touch it: the gRPC thread that started it (Start), the
// engine thread (OnEngineOutput) and gRPC's reaction threads (OnWriteDone, OnCancel,
// OnDone). Pieces from the engine queue up under mu_; exactly one write is in flight at a
// time; Finish is called once the engine has sent its last piece and every queued piece
// is written (or writing failed). OnDone, which gRPC calls only after Finish, deletes the
// stream; by then the engine holds no more pieces for it.
class GenerateStream final : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  GenerateStream(grpc::CallbackServerContext* context, GenerationService* service)
      : context_(context), service_(service), start_(Clock::now()) {}

  void Start(const v1::GenerateRequest& request);

  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  enum class Next { kNothing, kWrite, kFinish };

  void OnEngineOutput(GenerationOutput output);
  // Fails the call before the engine ever saw it.
  void FinishEarly(const absl::Status& status);
  Next AdvanceLocked();
  void Perform(Next next);
  grpc::Status CancelledStatus() const;

  grpc::CallbackServerContext* context_;
  GenerationService* service_;
  ModelRuntime* runtime_ = nullptr;
  std::string request_id_ = "-";
  const Clock::time_point start_;

  std::mutex mu_;
  std::deque<v1::GenerateResponse> pending_;
  v1::GenerateResponse in_flight_;  // owned here until OnWriteDone
  bool writing_ = false;
  bool write_failed_ = false;
  bool submitted_ = false;
  std::optional<grpc::Status> final_status_;
  bool finish_called_ = false;
  FinishReason finish_reason_ = FinishReason::kNone;
  std::optional<ReasoningSplitter> reasoning_;  // set when the request separates reasoning
  int64_t prompt_tokens_ = 0;
  int64_t completion_tokens_ = 0;
  int64_t cached_prompt_tokens_ = 0;
  double ttft_seconds_ = 0.0;
};

void GenerateStream::Start(const v1::GenerateRequest& request) {
  auto translated = TranslateGenerateRequest(request);
  if (!translated.ok()) return FinishEarly(translated.status());
  auto runtime = service_->FindModel(translated->model);
  if (!runtime.ok()) return FinishEarly(runtime.status());
  runtime_ = *runtime;
  if (translated->engine_request.request_id.empty()) translated->engine_request.request_id = NewRequestId();
  request_id_ = translated->engine_request.request_id;

  // separate_reasoning only means something for a model whose chat template reasons (the
  // R1 family); for the others the text streams as usual. A chat prompt rendered by R1's
  // current template already opened <think>; a raw prompt may or may not have.
  if (request.separate_reasoning()) {
    const ChatTemplate* chat_template = runtime_->chat_template();
    if (chat_template != nullptr && chat_template->reasoning()) {
      reasoning_.emplace(translated->input.kind == PromptInput::Kind::kChat &&
                         chat_template->prompt_opens_reasoning());
    }
  }

  auto engine_request = runtime_->BuildRequest(*std::move(translated));
  if (!engine_request.ok()) return FinishEarly(engine_request.status());
  prompt_tokens_ = static_cast<int64_t>(engine_request->prompt_tokens.size());
  spdlog::info("generate start request_id={} model={} prompt_tokens={} max_tokens={} temperature={} peer={}",
               request_id_, runtime_->served_name(), prompt_tokens_, engine_request->stop.max_tokens,
               engine_request->sampling.temperature, context_->peer());

  {
    std::lock_guard<std::mutex> lock(mu_);
    submitted_ = true;
  }
  absl::Status submitted = runtime_->engine().Submit(
      *std::move(engine_request), [this](GenerationOutput output) { OnEngineOutput(std::move(output)); });
  if (!submitted.ok()) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      submitted_ = false;
    }
    FinishEarly(submitted);
  }
}

void GenerateStream::FinishEarly(const absl::Status& status) {
  const absl::string_view m = status.message();
  spdlog::info("generate rejected request_id={} code={} message=\"{}\"", request_id_,
               StatusCodeName(static_cast<grpc::StatusCode>(status.code())), std::string_view(m.data(), m.size()));
  {
    std::lock_guard<std::mutex> lock(mu_);
    final_status_ = ToGrpcStatus(status);
  }
  Perform(Next::kFinish);
}

grpc::Status GenerateStream::CancelledStatus() const {
  if (context_->deadline() <= std::chrono::system_clock::now()) {
    return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "deadline exceeded during generation");
  }
  return grpc::Status(grpc::StatusCode::CANCELLED, "request cancelled");
}

void GenerateStream::OnEngineOutput(GenerationOutput output) {
  Next next;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const bool last = output.finish != FinishReason::kNone;
    if (ttft_seconds_ == 0.0 && !output.token_ids.empty()) {
      ttft_seconds_ = std::chrono::duration<double>(Clock::now() - start_).count();
    }
    if (last) {
      finish_reason_ = output.finish;
      prompt_tokens_ = output.prompt_tokens;
      completion_tokens_ = output.completion_tokens;
      cached_prompt_tokens_ = output.cached_prompt_tokens;
      if (output.finish == FinishReason::kError) {
        final_status_ = output.error.ok() ? grpc::Status(grpc::StatusCode::INTERNAL, "engine failed the request")
                                          : ToGrpcStatus(output.error);
      } else if (output.finish == FinishReason::kCancelled) {
        final_status_ = CancelledStatus();
      } else {
        final_status_ = grpc::Status::OK;
      }
    }
    if (!write_failed_) {
      pending_.push_back(ToProtoResponse(output));
      pending_.back().set_request_id(request_id_);
      if (reasoning_) SeparateReasoning(&*reasoning_, last, &pending_.back());
    }
    next = AdvanceLocked();
  }
  Perform(next);
}

GenerateStream::Next GenerateStream::AdvanceLocked() {
  if (writing_ || finish_called_) return Next::kNothing;
  if (!write_failed_ && !pending_.empty()) {
    in_flight_ = std::move(pending_.front());
    pending_.pop_front();
    // While the client is slower than the engine, fold queued pieces into one message.
    while (!pending_.empty() && pending_.front().finish_reason() == v1::FINISH_REASON_UNSPECIFIED &&
           in_flight_.finish_reason() == v1::FINISH_REASON_UNSPECIFIED) {
      v1::GenerateResponse& more = pending_.front();
      in_flight_.mutable_token_ids()->MergeFrom(more.token_ids());
      in_flight_.mutable_text()->append(more.text());
      in_flight_.mutable_reasoning_text()->append(more.reasoning_text());
      in_flight_.mutable_logprobs()->MergeFrom(more.logprobs());
      pending_.pop_front();
    }
    writing_ = true;
    return Next::kWrite;
  }
  if (final_status_) {
    finish_called_ = true;
    return Next::kFinish;
  }
  return Next::kNothing;
}

// Outside mu_: gRPC may run reactions on other threads as soon as these return, and
// after Finish this object may already be gone.
void GenerateStream::Perform(Next next) {
  if (next == Next::kWrite) {
    StartWrite(&in_flight_);
  } else if (next == Next::kFinish) {
    grpc::Status status;
    int64_t prompt_tokens, completion_tokens;
    {
      std::lock_guard<std::mutex> lock(mu_);
      status = *final_status_;
      finish_called_ = true;
      prompt_tokens = submitted_ ? prompt_tokens_ : 0;
      completion_tokens = completion_tokens_;
    }
    // Counted before Finish: once the client sees the end of the stream, a scrape of
    // /metrics must already include this request.
    if (WorkerMetrics* metrics = service_->metrics()) {
      metrics->ObserveRequest(status.error_code(), prompt_tokens, completion_tokens);
    }
    Finish(status);
  }
}

void GenerateStream::OnWriteDone(bool ok) {
  bool cancel_engine = false;
  Next next;
  {
    std::lock_guard<std::mutex> lock(mu_);
    writing_ = false;
    if (!ok && !write_failed_) {
      // The client went away; nothing more can be written, so stop generating.
      write_failed_ = true;
      pending_.clear();
      cancel_engine = submitted_ && !final_status_;
    }
    next = AdvanceLocked();
  }
  if (cancel_engine) runtime_->engine().Cancel(request_id_);
  Perform(next);
}

void GenerateStream::OnCancel() {
  // Client cancellation, an expired deadline, or the server's shutdown grace running out.
  bool cancel_engine;
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancel_engine = submitted_ && !final_status_;
  }
  if (cancel_engine) runtime_->engine().Cancel(request_id_);
}

void GenerateStream::OnDone() {
  grpc::Status status;
  bool submitted;
  {
    // Also waits out a thread still inside Perform's critical section.
    std::lock_guard<std::mutex> lock(mu_);
    status = final_status_.value_or(grpc::Status::OK);
    submitted = submitted_;
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start_).count();
  if (submitted) {
    spdlog::info(
        "generate done request_id={} code={} finish={} prompt_tokens={} cached_prompt_tokens={} "
        "completion_tokens={} ttft_s={:.3f} duration_s={:.3f}",
        request_id_, StatusCodeName(status.error_code()), FinishReasonName(finish_reason_), prompt_tokens_,
        cached_prompt_tokens_, completion_tokens_, ttft_seconds_, seconds);
  }
  delete this;
}

}  // namespace

std::string NewRequestId() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  return fmt::format("req-{:016x}", rng());
}

absl::StatusOr<ModelRuntime*> GenerationService::FindModel(const std::string& model) const {
  ModelRuntime* runtime = this->runtime();
  if (runtime == nullptr) return absl::UnavailableError("the model is still loading; retry shortly");
  if (!model.empty() && model != runtime->served_name()) {
    return absl::NotFoundError(
        fmt::format("model \"{}\" is not served here; served models: {}", model, runtime->served_name()));
  }
  return runtime;
}

grpc::ServerWriteReactor<v1::GenerateResponse>* GenerationService::Generate(grpc::CallbackServerContext* context,
                                                                           const v1::GenerateRequest* request) {
  auto* stream = new GenerateStream(context, this);
  stream->Start(*request);
  return stream;
}

grpc::ServerUnaryReactor* GenerationService::ListModels(grpc::CallbackServerContext* context,
                                                        const v1::ListModelsRequest* request,
                                                        v1::ListModelsResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (ModelRuntime* runtime = this->runtime()) {
    *response->add_models() = runtime->Info();
    reactor->Finish(grpc::Status::OK);
  } else {
    reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the model is still loading; retry shortly"));
  }
  return reactor;
}

grpc::ServerUnaryReactor* WorkerStatsService::GetStats(grpc::CallbackServerContext* context,
                                                       const v1::GetStatsRequest* request,
                                                       v1::WorkerStats* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  ModelRuntime* runtime = generation_->runtime();
  if (runtime == nullptr) {
    reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the model is still loading; retry shortly"));
    return reactor;
  }
  const EngineStats s = runtime->engine().Stats();
  response->set_running_sequences(s.running);
  response->set_waiting_sequences(s.waiting);
  response->set_kv_cache_usage_ratio(s.kv_cache_usage);
  response->set_num_free_blocks(s.num_free_blocks);
  response->set_num_total_blocks(s.num_total_blocks);
  response->set_block_size(runtime->block_size());
  response->set_prefix_cache_hits_total(s.prefix_cache_hits_total);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace shoal::worker
