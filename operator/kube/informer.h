#pragma once
// An informer: one list+watch loop per resource type feeding an in-memory cache and
// change handlers. The loop lists (remembering the list's resourceVersion), then watches
// from there with bookmarks; a 410 Gone (history compacted) or a broken stream leads to
// a relist after a backoff, and the relist diff is delivered as adds/updates/deletes so
// no change is lost. managedFields are dropped from cached objects (they are most of an
// object's bytes and no controller reads them).
#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "operator/kube/kube_client.h"
#include "operator/kube/resource_type.h"

namespace shoal::kube {

using ObjectPtr = std::shared_ptr<const nlohmann::json>;

enum class ChangeType { kAdded, kModified, kDeleted };

class Informer {
 public:
  // `ns` empty = all namespaces; `label_selector` empty = everything.
  Informer(KubeClient* client, ResourceType type, std::string ns = "", std::string label_selector = "");
  ~Informer();

  // Handlers run on the informer's thread; keep them short (enqueue a key).
  void AddHandler(std::function<void(ChangeType, const ObjectPtr&)> handler);
  void Start();
  void Stop();
  // Asks the loop to end without waiting (Stop joins); lets many informers stop in parallel.
  void SignalStop() { stop_ = true; }
  bool HasSynced() const { return synced_.load(); }
  // Waits until the first list landed or `timeout_ms` passed.
  bool WaitForSync(int timeout_ms) const;

  ObjectPtr Get(const std::string& ns, const std::string& name) const;
  std::vector<ObjectPtr> List() const;
  // Objects in `ns` whose label `key` equals `value`.
  std::vector<ObjectPtr> ListByLabel(const std::string& ns, const std::string& key, const std::string& value) const;
  // Write-through after our own write: stores `obj` unless the cache already holds a
  // newer resourceVersion, so the next reconcile does not act on a stale copy.
  void Upsert(const nlohmann::json& obj);
  // Drops a deleted object at once (the watch event confirms later).
  void Erase(const std::string& ns, const std::string& name);

  const ResourceType& type() const { return type_; }
  uint64_t relists() const { return relists_.load(); }

 private:
  void Run();
  absl::Status ListOnce(std::string* resource_version);
  absl::Status WatchFrom(std::string* resource_version);
  void Notify(ChangeType change, const ObjectPtr& obj);

  KubeClient* client_;
  ResourceType type_;
  std::string ns_;
  std::string label_selector_;
  mutable std::mutex mu_;
  std::map<std::string, ObjectPtr> cache_;  // "ns/name" -> object
  std::vector<std::function<void(ChangeType, const ObjectPtr&)>> handlers_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> synced_{false};
  std::atomic<uint64_t> relists_{0};
  std::thread thread_;
};

}  // namespace shoal::kube
