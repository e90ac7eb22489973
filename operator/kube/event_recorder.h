#pragma once
// Kubernetes Events (core/v1) about an object, aggregated like client-go's recorder: the
// same (object, type, reason, message) within 10 minutes bumps `count` on the existing
// Event instead of creating another, so a condition that persists costs one small PATCH
// per occurrence, not a new object.
#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <string>

#include <nlohmann/json.hpp>

#include "operator/kube/kube_client.h"

namespace shoal::kube {

class EventRecorder {
 public:
  EventRecorder(KubeClient* client, std::string component);
  // `object` is the involved object (needs apiVersion, kind, metadata.name/namespace/uid).
  // `type` is "Normal" or "Warning". Failures are logged, never returned: events are advisory.
  void Record(const nlohmann::json& object, const std::string& type, const std::string& reason,
              const std::string& message);

 private:
  struct Seen {
    std::string event_name;
    int count = 0;
    std::chrono::steady_clock::time_point last;
  };
  KubeClient* client_;
  std::string component_;
  std::mutex mu_;
  std::map<std::string, Seen> seen_;
  std::atomic<uint64_t> sequence_{0};
};

}  // namespace shoal::kube
