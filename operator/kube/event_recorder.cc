#include "operator/kube/event_recorder.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "operator/kube/leader_election.h"
#include "operator/kube/resource_type.h"

namespace shoal::kube {

EventRecorder::EventRecorder(KubeClient* client, std::string component)
    : client_(client), component_(std::move(component)) {}

void EventRecorder::Record(const nlohmann::json& object, const std::string& type, const std::string& reason,
                           const std::string& message) {
  const std::string ns = NamespaceOf(object);
  const std::string name = NameOf(object);
  const std::string uid = object["metadata"].value("uid", "");
  const std::string key = fmt::format("{}|{}|{}|{}", uid, type, reason, message);
  const auto now = std::chrono::steady_clock::now();
  const std::string time = TimeNow();
  spdlog::info("event object={}/{} type={} reason={} message=\"{}\"", ns, name, type, reason, message);
  std::string existing;
  int count = 1;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (seen_.size() > 4096) seen_.clear();  // bounded memory; worst case a duplicate Event
    auto it = seen_.find(key);
    if (it != seen_.end() && now - it->second.last < std::chrono::minutes(10)) {
      existing = it->second.event_name;
      count = ++it->second.count;
      it->second.last = now;
    }
  }
  if (!existing.empty()) {
    auto patched = client_->Patch(resources::kEvents.ObjectPath(ns, existing),
                                  {{"count", count}, {"lastTimestamp", time}});
    if (patched.ok()) return;
  }
  const std::string event_name = fmt::format("{}.{:x}{:04x}", name,
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch()).count(),
      sequence_++ & 0xffff);
  nlohmann::json event = {
      {"apiVersion", "v1"},
      {"kind", "Event"},
      {"metadata", {{"name", event_name}, {"namespace", ns}}},
      {"involvedObject",
       {{"apiVersion", object.value("apiVersion", "")},
        {"kind", object.value("kind", "")},
        {"name", name},
        {"namespace", ns},
        {"uid", uid},
        {"resourceVersion", object["metadata"].value("resourceVersion", "")}}},
      {"reason", reason},
      {"message", message},
      {"type", type},
      {"source", {{"component", component_}}},
      {"reportingComponent", component_},
      {"firstTimestamp", time},
      {"lastTimestamp", time},
      {"count", 1}};
  auto created = client_->Post(resources::kEvents.CollectionPath(ns), event);
  if (!created.ok()) {
    spdlog::warn("event object={}/{} reason={} not recorded: {}", ns, name, reason,
                 std::string(created.status().message()));
    return;
  }
  std::lock_guard<std::mutex> lock(mu_);
  seen_[key] = Seen{event_name, 1, now};
}

}  // namespace shoal::kube
