#pragma once
// One client Generate stream proxied to a group leader, on gRPC's callback API on both
// sides: no thread waits on a stream. The call is admitted by the Balancer (at once, after
// a wait in its queue, or rejected), then an Attempt streams from the chosen group, one
// message at a time: read upstream -> write downstream -> read upstream, so a slow client
// slows the group's stream instead of filling router memory.
//
// Failure rules: a group that fails before anything reached the client is retried once on
// another group; after the first message the stream ends with UNAVAILABLE naming the
// group and the tokens already sent. The client's deadline is the upstream call's
// deadline; a client cancel cancels the upstream call; an upstream DEADLINE_EXCEEDED or
// error reaches the client with the group named.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "grpcpp/grpcpp.h"
#include "router/api_keys.h"
#include "router/balancer.h"
#include "router/router_metrics.h"
#include "router/upstream_pool.h"
#include "router/upstream_scoring.h"
#include "shoal/v1/generate.grpc.pb.h"

namespace shoal::router {

// What every call shares; owned by RouterServer.
struct RouterCore {
  Balancer* balancer = nullptr;
  UpstreamPool* pool = nullptr;
  RouterMetrics* metrics = nullptr;
  const ApiKeys* api_keys = nullptr;
  PrefixOptions prefix;
  int64_t default_completion_tokens = 256;
  int max_attempts = 2;  // the first try and one retry
  std::atomic<bool> draining{false};

  // Calls alive (their reactor not yet done, or an upstream attempt still running);
  // shutdown waits for zero before the pool and channels go away.
  void CallStarted();
  void CallEnded();
  bool WaitForCalls(std::chrono::milliseconds timeout);

 private:
  std::mutex calls_mu_;
  std::condition_variable calls_cv_;
  int live_calls_ = 0;
};

// The `authorization` value of a call's metadata, "" when absent.
std::string AuthorizationOf(const grpc::CallbackServerContext& context);

// absl::Status -> grpc::Status: the one place router errors become wire errors.
grpc::Status ToGrpcStatus(const absl::Status& status);

class GenerateProxyCall final : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  // Starts the call; it deletes itself when both the client stream and every upstream
  // attempt are done.
  static GenerateProxyCall* Start(RouterCore* core, grpc::CallbackServerContext* context,
                                  const v1::GenerateRequest* request);

  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  class Attempt;
  GenerateProxyCall(RouterCore* core, grpc::CallbackServerContext* context, const v1::GenerateRequest* request);
  ~GenerateProxyCall() override;

  void Begin();
  // Asks the Balancer for a group; starts, queues, or finishes the call. Lock held.
  void AcquireLocked();
  void OnAdmitted(absl::StatusOr<Lease> lease);
  void StartAttemptLocked(Lease lease);
  void OnUpstreamResponse(Attempt* attempt);
  void OnUpstreamDone(Attempt* attempt, const grpc::Status& status);
  void FinishLocked(const grpc::Status& status);
  void Ref() { refs_.fetch_add(1, std::memory_order_relaxed); }
  void Unref();

  RouterCore* const core_;
  grpc::CallbackServerContext* const context_;
  v1::GenerateRequest request_;
  RouteRequest route_;
  const std::chrono::steady_clock::time_point started_;

  // Recursive: gRPC may run a reaction inline on the thread that started an operation.
  // State is always updated before an operation starts, so a nested reaction sees it.
  std::recursive_mutex mu_;
  std::atomic<int> refs_{1};  // the client stream's; attempts and queue waits add theirs
  std::vector<std::unique_ptr<Attempt>> attempts_;  // kept until the call is deleted
  Attempt* active_ = nullptr;
  bool queued_ = false;
  uint64_t waiter_id_ = 0;
  bool finished_ = false;
  bool client_cancelled_ = false;
  int64_t forwarded_messages_ = 0;
  int64_t completion_tokens_ = 0;
  int64_t prompt_tokens_ = 0;
  double time_to_first_token_ = -1;
  std::string served_model_;  // model label for metrics
  v1::GenerateResponse out_;  // the message being written to the client
};

}  // namespace shoal::router
