#pragma once
// A small Kubernetes REST client over libcurl. Requests and answers are JSON; a failed
// request is an absl::Status whose message carries the API server's own Status message
// and whose payload carries the HTTP code (see HttpCodeOf). Thread-safe: each request
// borrows a curl handle from a pool, so connections are reused.
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "operator/kube/kube_config.h"

struct curl_slist;

namespace shoal::kube {

// The HTTP status a request failed with (0 when it never got one, e.g. connection refused).
int HttpCodeOf(const absl::Status& status);
// 404, 409 (AlreadyExists/Conflict), 410 (watch resourceVersion too old).
inline bool IsHttpNotFound(const absl::Status& s) { return HttpCodeOf(s) == 404; }
inline bool IsConflict(const absl::Status& s) { return HttpCodeOf(s) == 409; }
inline bool IsGone(const absl::Status& s) { return HttpCodeOf(s) == 410; }

// Turns an API server `Status` object (or any error body) into an absl::Status.
absl::Status StatusFromResponse(int http_code, const std::string& what, const std::string& body);

class KubeClient {
 public:
  static absl::StatusOr<std::unique_ptr<KubeClient>> Create(KubeConfig config);
  ~KubeClient();

  // `path` is the API path with query, e.g. "/api/v1/namespaces/ns/pods?labelSelector=a%3Db".
  absl::StatusOr<nlohmann::json> Get(const std::string& path);
  absl::StatusOr<nlohmann::json> Post(const std::string& path, const nlohmann::json& body);
  absl::StatusOr<nlohmann::json> Put(const std::string& path, const nlohmann::json& body);
  absl::StatusOr<nlohmann::json> Patch(const std::string& path, const nlohmann::json& body,
                                       const std::string& content_type = "application/merge-patch+json");
  // Server-side apply: PATCH application/apply-patch+yaml (JSON is YAML) with
  // fieldManager and force, so this manager owns the fields it sends.
  absl::StatusOr<nlohmann::json> Apply(const std::string& path, const nlohmann::json& object,
                                       const std::string& field_manager);
  // DELETE with propagationPolicy (Background, Foreground, Orphan); 404 counts as done.
  absl::Status Delete(const std::string& path, const std::string& propagation = "Background");

  // Streams a watch (path already carries ?watch=1...): `on_event` gets every event
  // object; returning false ends the watch. Returns when the server closes the stream,
  // on an error, or soon after `*stop` turns true.
  absl::Status Watch(const std::string& path, const std::function<bool(const nlohmann::json&)>& on_event,
                     const std::atomic<bool>* stop);

  const KubeConfig& config() const { return config_; }
  // Requests sent so far (watches included), for the metrics and the scale benchmark.
  uint64_t request_count() const { return request_count_.load(); }

 private:
  explicit KubeClient(KubeConfig config) : config_(std::move(config)) {}
  struct Response {
    long http_code = 0;
    std::string body;
  };
  absl::StatusOr<nlohmann::json> Call(const std::string& method, const std::string& path,
                                      const std::string* body, const std::string& content_type);
  void* BorrowHandle();
  void ReturnHandle(void* handle);
  void ConfigureHandle(void* handle, ::curl_slist** headers, const std::string& content_type);
  std::string Token();

  KubeConfig config_;
  std::mutex mu_;
  std::vector<void*> idle_handles_;
  std::atomic<uint64_t> request_count_{0};
};

// Percent-encodes a query value (label selectors carry '=' and ',').
std::string UrlEncode(const std::string& value);

}  // namespace shoal::kube
