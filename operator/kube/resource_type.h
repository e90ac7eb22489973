#pragma once
// A Kubernetes resource type as data (group, version, plural) and the REST paths built
// from it, plus the few object fields every controller reads.
#include <cstdint>
#include <cstdlib>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace shoal::kube {

struct ResourceType {
  std::string group;    // "" = core
  std::string version;  // "v1"
  std::string plural;   // "pods"
  std::string kind;     // "Pod"
  bool namespaced = true;

  std::string ApiVersion() const { return group.empty() ? version : group + "/" + version; }
  std::string Prefix() const { return group.empty() ? "/api/" + version : "/apis/" + group + "/" + version; }
  // Collection path; `ns` empty = all namespaces.
  std::string CollectionPath(const std::string& ns) const {
    if (!namespaced || ns.empty()) return fmt::format("{}/{}", Prefix(), plural);
    return fmt::format("{}/namespaces/{}/{}", Prefix(), ns, plural);
  }
  std::string ObjectPath(const std::string& ns, const std::string& name) const {
    return fmt::format("{}/{}", CollectionPath(namespaced ? ns : ""), name);
  }
};

namespace resources {
inline const ResourceType kPods{"", "v1", "pods", "Pod"};
inline const ResourceType kServices{"", "v1", "services", "Service"};
inline const ResourceType kConfigMaps{"", "v1", "configmaps", "ConfigMap"};
inline const ResourceType kEvents{"", "v1", "events", "Event"};
inline const ResourceType kStatefulSets{"apps", "v1", "statefulsets", "StatefulSet"};
inline const ResourceType kDeployments{"apps", "v1", "deployments", "Deployment"};
inline const ResourceType kLeases{"coordination.k8s.io", "v1", "leases", "Lease"};
inline const ResourceType kVolcanoPodGroups{"scheduling.volcano.sh", "v1beta1", "podgroups", "PodGroup"};
inline const ResourceType kSchedulerPluginsPodGroups{"scheduling.x-k8s.io", "v1alpha1", "podgroups", "PodGroup"};
}  // namespace resources

// Field access that never throws on a missing field.
inline std::string NameOf(const nlohmann::json& obj) {
  const auto& m = obj.value("metadata", nlohmann::json::object());
  return m.value("name", "");
}
inline std::string NamespaceOf(const nlohmann::json& obj) {
  const auto& m = obj.value("metadata", nlohmann::json::object());
  return m.value("namespace", "");
}
inline std::string KeyOf(const nlohmann::json& obj) {
  std::string ns = NamespaceOf(obj);
  return ns.empty() ? NameOf(obj) : ns + "/" + NameOf(obj);
}
inline std::string LabelOf(const nlohmann::json& obj, const std::string& key) {
  auto m = obj.find("metadata");
  if (m == obj.end()) return "";
  auto l = m->find("labels");
  if (l == m->end() || !l->is_object()) return "";
  auto v = l->find(key);
  return v != l->end() && v->is_string() ? v->get<std::string>() : "";
}
inline std::string AnnotationOf(const nlohmann::json& obj, const std::string& key) {
  auto m = obj.find("metadata");
  if (m == obj.end()) return "";
  auto a = m->find("annotations");
  if (a == m->end() || !a->is_object()) return "";
  auto v = a->find(key);
  return v != a->end() && v->is_string() ? v->get<std::string>() : "";
}
// resourceVersions are opaque strings; etcd's are integers, which lets a cache tell an
// older copy from a newer one. 0 when not a number.
inline uint64_t ResourceVersionOf(const nlohmann::json& obj) {
  auto m = obj.find("metadata");
  if (m == obj.end()) return 0;
  std::string rv = m->value("resourceVersion", "");
  return std::strtoull(rv.c_str(), nullptr, 10);
}

}  // namespace shoal::kube
