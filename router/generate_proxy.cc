#include "router/generate_proxy.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <random>

namespace shoal::router {

void RouterCore::CallStarted() {
  std::lock_guard<std::mutex> lock(calls_mu_);
  ++live_calls_;
}

void RouterCore::CallEnded() {
  std::lock_guard<std::mutex> lock(calls_mu_);
  if (--live_calls_ == 0) calls_cv_.notify_all();
}

bool RouterCore::WaitForCalls(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(calls_mu_);
  return calls_cv_.wait_for(lock, timeout, [&] { return live_calls_ == 0; });
}

std::string AuthorizationOf(const grpc::CallbackServerContext& context) {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) return {};
  return std::string(it->second.data(), it->second.size());
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

namespace {

std::string NewRequestId() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  return fmt::format("req-{:016x}", rng());
}

// Failures that say nothing about the request itself, so another group may well succeed.
bool RetryableBeforeFirstToken(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::UNKNOWN:
    case grpc::StatusCode::INTERNAL:
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
    case grpc::StatusCode::ABORTED:
    case grpc::StatusCode::CANCELLED:  // the group cancelled (drain), not our client
      return true;
    default:
      return false;
  }
}

double SecondsSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

// One try on one group. Holds a reactor hold from start until its last read fails, so
// OnDone cannot run while the next read is still to be started by the call.
class GenerateProxyCall::Attempt final : public grpc::ClientReadReactor<v1::GenerateResponse> {
 public:
  Attempt(GenerateProxyCall* call, Lease lease, std::shared_ptr<Upstream> upstream)
      : call_(call), lease_(std::move(lease)), upstream_(std::move(upstream)) {}

  void Start(const v1::GenerateRequest& request, std::chrono::system_clock::time_point deadline) {
    if (deadline != std::chrono::system_clock::time_point::max()) context_.set_deadline(deadline);
    upstream_->generation->async()->Generate(&context_, &request, this);
    AddHold();
    StartRead(&response_);
    StartCall();
  }
  void ReadNext() { StartRead(&response_); }
  void Cancel() { context_.TryCancel(); }

  void OnReadDone(bool ok) override {
    if (ok) {
      call_->OnUpstreamResponse(this);
    } else {
      RemoveHold();
    }
  }
  void OnDone(const grpc::Status& status) override { call_->OnUpstreamDone(this, status); }

  Lease& lease() { return lease_; }
  const std::string& endpoint() const { return upstream_->endpoint; }
  v1::GenerateResponse& response() { return response_; }

 private:
  GenerateProxyCall* const call_;
  Lease lease_;
  std::shared_ptr<Upstream> upstream_;
  grpc::ClientContext context_;
  v1::GenerateResponse response_;
};

GenerateProxyCall* GenerateProxyCall::Start(RouterCore* core, grpc::CallbackServerContext* context,
                                            const v1::GenerateRequest* request) {
  auto* call = new GenerateProxyCall(core, context, request);
  call->Begin();
  return call;
}

GenerateProxyCall::GenerateProxyCall(RouterCore* core, grpc::CallbackServerContext* context,
                                     const v1::GenerateRequest* request)
    : core_(core), context_(context), request_(*request), started_(std::chrono::steady_clock::now()) {
  core_->CallStarted();
  core_->metrics->AddInflight(1);
}

GenerateProxyCall::~GenerateProxyCall() { core_->CallEnded(); }

void GenerateProxyCall::Unref() {
  if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
}

void GenerateProxyCall::Begin() {
  Ref();  // held to the end of this function: a reaction may run inline
  {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    served_model_ = request_.model();
    if (const absl::Status auth = core_->api_keys->Check(AuthorizationOf(*context_)); !auth.ok()) {
      served_model_ = "unknown";  // an unauthenticated caller must not mint metric labels
      FinishLocked(ToGrpcStatus(auth));
    } else if (core_->draining.load()) {
      FinishLocked(grpc::Status(grpc::StatusCode::UNAVAILABLE, "router is shutting down; retry on another router"));
    } else {
      if (request_.request_id().empty()) request_.set_request_id(NewRequestId());
      route_.model = request_.model();
      route_.prefix_hashes = PrefixBlockHashes(request_, core_->prefix);
      route_.estimated_tokens = EstimateRequestTokens(request_, core_->default_completion_tokens);
      AcquireLocked();
    }
  }
  Unref();
}

void GenerateProxyCall::AcquireLocked() {
  Ref();  // for the queue's callback, dropped below when it cannot run
  auto admission = core_->balancer->Acquire(route_, [this](absl::StatusOr<Lease> lease) { OnAdmitted(lease); });
  switch (admission.kind) {
    case Balancer::Admission::kAdmitted:
      Unref();
      StartAttemptLocked(std::move(admission.lease));
      break;
    case Balancer::Admission::kRejected:
      Unref();
      spdlog::info("request_id={} rejected code={} reason=\"{}\"", request_.request_id(),
                   StatusCodeName(static_cast<grpc::StatusCode>(admission.status.code())),
                   std::string(admission.status.message()));
      if (admission.status.code() == absl::StatusCode::kNotFound) served_model_ = "unknown";
      FinishLocked(ToGrpcStatus(admission.status));
      break;
    case Balancer::Admission::kQueued:
      queued_ = true;
      waiter_id_ = admission.waiter_id;
      break;
  }
}

void GenerateProxyCall::OnAdmitted(absl::StatusOr<Lease> lease) {
  std::optional<Lease> release;
  {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    queued_ = false;
    if (!lease.ok()) {
      FinishLocked(ToGrpcStatus(lease.status()));
    } else if (client_cancelled_ || finished_) {
      release = *lease;
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client while queued"));
    } else {
      StartAttemptLocked(*std::move(lease));
    }
  }
  if (release) core_->balancer->Release(*release);
  Unref();  // the queue's reference
}

void GenerateProxyCall::StartAttemptLocked(Lease lease) {
  std::shared_ptr<Upstream> upstream = core_->pool->Find(lease.group_id);
  if (upstream == nullptr) {
    // The group left discovery between the pick and now; treat it like a failed try.
    core_->balancer->Release(lease);
    FinishLocked(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                              fmt::format("group {} left the rotation before the request started", lease.endpoint)));
    return;
  }
  spdlog::debug("request_id={} group={} attempt={}", request_.request_id(), lease.endpoint, attempts_.size() + 1);
  attempts_.push_back(std::make_unique<Attempt>(this, std::move(lease), std::move(upstream)));
  active_ = attempts_.back().get();
  Ref();  // the attempt's, dropped after its OnDone
  active_->Start(request_, context_->deadline());
}

void GenerateProxyCall::OnUpstreamResponse(Attempt* attempt) {
  Ref();
  {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    if (finished_ || client_cancelled_) {
      // Nobody to forward to: cancel upstream and let the read fail.
      attempt->Cancel();
      attempt->ReadNext();
    } else {
      v1::GenerateResponse& in = attempt->response();
      if (forwarded_messages_ == 0) {
        time_to_first_token_ = SecondsSince(started_);
        // The prompt is done; what remains of the lease is the completion.
        const int64_t completion_budget =
            request_.max_tokens() > 0 ? request_.max_tokens() : core_->default_completion_tokens;
        core_->balancer->ConsumeTokens(attempt->lease(), attempt->lease().tokens - completion_budget);
      }
      ++forwarded_messages_;
      completion_tokens_ += in.token_ids_size();
      core_->balancer->ConsumeTokens(attempt->lease(), in.token_ids_size());
      if (in.has_usage()) {
        prompt_tokens_ = in.usage().prompt_tokens();
        if (in.usage().completion_tokens() > 0) completion_tokens_ = in.usage().completion_tokens();
      }
      out_.Swap(&in);
      StartWrite(&out_);
    }
  }
  Unref();
}

void GenerateProxyCall::OnWriteDone(bool ok) {
  Ref();
  {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    if (active_ != nullptr) {
      if (!ok) active_->Cancel();  // the client is gone
      active_->ReadNext();
    }
  }
  Unref();
}

void GenerateProxyCall::OnUpstreamDone(Attempt* attempt, const grpc::Status& status) {
  core_->balancer->Release(attempt->lease());
  {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    active_ = nullptr;
    const std::string& group = attempt->endpoint();
    if (finished_) {
      // Already answered (the client went away first).
    } else if (client_cancelled_) {
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client"));
    } else if (status.ok()) {
      FinishLocked(grpc::Status::OK);
    } else if (forwarded_messages_ == 0 && RetryableBeforeFirstToken(status.error_code()) &&
               static_cast<int>(attempts_.size()) < core_->max_attempts) {
      spdlog::warn("request_id={} group={} failed before the first token, retrying code={} error=\"{}\"",
                   request_.request_id(), group, StatusCodeName(status.error_code()), status.error_message());
      if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
        core_->pool->ReportFailure(attempt->lease().group_id, status.error_message());
      }
      core_->metrics->CountRetry();
      route_.excluded_groups.push_back(attempt->lease().group_id);
      AcquireLocked();
    } else if (forwarded_messages_ == 0) {
      // Errors about the request itself (INVALID_ARGUMENT, NOT_FOUND, DEADLINE_EXCEEDED)
      // pass through unchanged; a second group failure says which groups were tried.
      std::string message = status.error_message();
      if (RetryableBeforeFirstToken(status.error_code())) {
        message = fmt::format("group {} failed ({} tries): {}", group, attempts_.size(), message);
      }
      FinishLocked(grpc::Status(status.error_code(), message));
    } else if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
      FinishLocked(status);
    } else {
      if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
        core_->pool->ReportFailure(attempt->lease().group_id, status.error_message());
      }
      spdlog::warn("request_id={} group={} failed mid-stream tokens_sent={} code={} error=\"{}\"",
                   request_.request_id(), group, completion_tokens_, StatusCodeName(status.error_code()),
                   status.error_message());
      FinishLocked(grpc::Status(
          grpc::StatusCode::UNAVAILABLE,
          fmt::format("group {} failed after streaming {} tokens ({}: {}); the output is incomplete, retry the request",
                      group, completion_tokens_, StatusCodeName(status.error_code()), status.error_message())));
    }
  }
  Unref();  // the attempt's
}

void GenerateProxyCall::OnCancel() {
  Ref();
  bool drop_queue_ref = false;
  {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    client_cancelled_ = true;
    if (active_ != nullptr) {
      active_->Cancel();  // OnUpstreamDone finishes the call
    } else if (queued_) {
      if (core_->balancer->CancelWaiter(waiter_id_)) {
        queued_ = false;
        drop_queue_ref = true;
        FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client while queued"));
      }  // else OnAdmitted is on its way and finishes the call
    } else if (!finished_) {
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client"));
    }
  }
  if (drop_queue_ref) Unref();
  Unref();
}

void GenerateProxyCall::OnDone() { Unref(); }

void GenerateProxyCall::FinishLocked(const grpc::Status& status) {
  if (finished_) return;
  finished_ = true;
  RouterMetrics::RequestOutcome outcome;
  outcome.model = served_model_;
  outcome.code = status.error_code();
  if (client_cancelled_ && status.error_code() != grpc::StatusCode::OK) {
    // gRPC cancels a call whose deadline passed the same way as one the client dropped.
    outcome.code = context_->deadline() <= std::chrono::system_clock::now() ? grpc::StatusCode::DEADLINE_EXCEEDED
                                                                             : grpc::StatusCode::CANCELLED;
  }
  outcome.duration_seconds = SecondsSince(started_);
  outcome.time_to_first_token_seconds = time_to_first_token_;
  outcome.completion_tokens = completion_tokens_;
  outcome.prompt_tokens = prompt_tokens_;
  core_->metrics->ObserveRequest(outcome);
  core_->metrics->AddInflight(-1);
  if (!status.ok()) {
    spdlog::info("request_id={} finished code={} tokens={} error=\"{}\"", request_.request_id(),
                 StatusCodeName(outcome.code), completion_tokens_, status.error_message());
  }
  Finish(status);
}

}  // namespace shoal::router
