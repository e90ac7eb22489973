#include "operator/kube/informer.h"

#include <chrono>
#include <random>
#include <set>

#include <spdlog/spdlog.h>

namespace shoal::kube {
namespace {

ObjectPtr Strip(nlohmann::json obj) {
  if (auto m = obj.find("metadata"); m != obj.end() && m->is_object()) m->erase("managedFields");
  return std::make_shared<const nlohmann::json>(std::move(obj));
}

std::string CacheKey(const std::string& ns, const std::string& name) { return ns + "/" + name; }

}  // namespace

Informer::Informer(KubeClient* client, ResourceType type, std::string ns, std::string label_selector)
    : client_(client), type_(std::move(type)), ns_(std::move(ns)), label_selector_(std::move(label_selector)) {}

Informer::~Informer() { Stop(); }

void Informer::AddHandler(std::function<void(ChangeType, const ObjectPtr&)> handler) {
  std::lock_guard<std::mutex> lock(mu_);
  handlers_.push_back(std::move(handler));
}

void Informer::Start() {
  stop_ = false;
  thread_ = std::thread([this] { Run(); });
}

void Informer::Stop() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

bool Informer::WaitForSync(int timeout_ms) const {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (!synced_ && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return synced_;
}

ObjectPtr Informer::Get(const std::string& ns, const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = cache_.find(CacheKey(type_.namespaced ? ns : "", name));
  return it == cache_.end() ? nullptr : it->second;
}

std::vector<ObjectPtr> Informer::List() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<ObjectPtr> out;
  out.reserve(cache_.size());
  for (const auto& [key, obj] : cache_) out.push_back(obj);
  return out;
}

std::vector<ObjectPtr> Informer::ListByLabel(const std::string& ns, const std::string& key,
                                             const std::string& value) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<ObjectPtr> out;
  const std::string prefix = ns + "/";
  for (auto it = cache_.lower_bound(prefix); it != cache_.end() && it->first.compare(0, prefix.size(), prefix) == 0;
       ++it) {
    if (LabelOf(*it->second, key) == value) out.push_back(it->second);
  }
  return out;
}

void Informer::Upsert(const nlohmann::json& obj) {
  ObjectPtr stored = Strip(obj);
  bool added = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto& slot = cache_[CacheKey(NamespaceOf(obj), NameOf(obj))];
    if (slot && ResourceVersionOf(*slot) >= ResourceVersionOf(obj)) return;
    added = slot == nullptr;
    slot = stored;
  }
  (void)added;  // handlers are not told: our own writes need no reconcile of their own
}

void Informer::Erase(const std::string& ns, const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  cache_.erase(CacheKey(type_.namespaced ? ns : "", name));
}

void Informer::Notify(ChangeType change, const ObjectPtr& obj) {
  std::vector<std::function<void(ChangeType, const ObjectPtr&)>> handlers;
  {
    std::lock_guard<std::mutex> lock(mu_);
    handlers = handlers_;
  }
  for (const auto& h : handlers) h(change, obj);
}

absl::Status Informer::ListOnce(std::string* resource_version) {
  std::string path = type_.CollectionPath(ns_);
  if (!label_selector_.empty()) path += "?labelSelector=" + UrlEncode(label_selector_);
  auto list = client_->Get(path);
  if (!list.ok()) return list.status();
  *resource_version = (*list)["metadata"].value("resourceVersion", "");
  std::map<std::string, ObjectPtr> fresh;
  if (list->contains("items") && (*list)["items"].is_array()) {
    for (auto& item : (*list)["items"]) {
      // List items of built-in kinds come without apiVersion/kind; Events and owner
      // references need them.
      if (!item.contains("kind")) {
        item["kind"] = type_.kind;
        item["apiVersion"] = type_.ApiVersion();
      }
      std::string key = CacheKey(NamespaceOf(item), NameOf(item));
      fresh[key] = Strip(std::move(item));
    }
  }
  // Diff against the old cache so handlers see what changed while we were not watching.
  std::vector<std::pair<ChangeType, ObjectPtr>> changes;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [key, obj] : fresh) {
      auto it = cache_.find(key);
      if (it == cache_.end()) {
        changes.emplace_back(ChangeType::kAdded, obj);
      } else if (ResourceVersionOf(*it->second) != ResourceVersionOf(*obj)) {
        changes.emplace_back(ChangeType::kModified, obj);
      }
    }
    for (const auto& [key, obj] : cache_) {
      if (!fresh.count(key)) changes.emplace_back(ChangeType::kDeleted, obj);
    }
    cache_ = std::move(fresh);
  }
  synced_ = true;
  for (const auto& [change, obj] : changes) Notify(change, obj);
  return absl::OkStatus();
}

absl::Status Informer::WatchFrom(std::string* resource_version) {
  // Server-side timeout spread over 5-10 minutes so many informers do not reconnect at once.
  static thread_local std::mt19937 rng(std::random_device{}());
  const int timeout_s = 300 + static_cast<int>(rng() % 300);
  std::string path = type_.CollectionPath(ns_) + "?watch=1&allowWatchBookmarks=true&resourceVersion=" +
                     UrlEncode(*resource_version) + "&timeoutSeconds=" + std::to_string(timeout_s);
  if (!label_selector_.empty()) path += "&labelSelector=" + UrlEncode(label_selector_);
  absl::Status event_error;
  auto on_event = [&](const nlohmann::json& event) -> bool {
    const std::string type = event.value("type", "");
    if (!event.contains("object")) return true;
    const nlohmann::json& obj = event["object"];
    if (type == "ERROR") {
      event_error = StatusFromResponse(obj.value("code", 500), "WATCH " + type_.plural, obj.dump());
      return false;
    }
    std::string rv = obj.contains("metadata") ? obj["metadata"].value("resourceVersion", "") : "";
    if (!rv.empty()) *resource_version = rv;
    if (type == "BOOKMARK") return true;
    ObjectPtr stored = Strip(obj);
    const std::string key = CacheKey(NamespaceOf(obj), NameOf(obj));
    ChangeType change = ChangeType::kModified;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (type == "DELETED") {
        cache_.erase(key);
        change = ChangeType::kDeleted;
      } else {
        auto& slot = cache_[key];
        change = slot ? ChangeType::kModified : ChangeType::kAdded;
        // Keep a newer copy written through by Upsert; still notify.
        if (!slot || ResourceVersionOf(*slot) <= ResourceVersionOf(*stored)) slot = stored;
      }
    }
    Notify(change, stored);
    return !stop_;
  };
  absl::Status status = client_->Watch(path, on_event, &stop_);
  if (!event_error.ok()) return event_error;
  return status;
}

// Idea: list once, then watch from the list's resourceVersion for as long as the stream
// lives; a normal end (server timeout) re-watches from the last seen version, an error
// relists after an exponential backoff (0.5 s .. 8 s).
void Informer::Run() {
  std::string rv;
  bool need_list = true;
  int backoff_ms = 500;
  while (!stop_) {
    if (need_list) {
      absl::Status listed = ListOnce(&rv);
      if (!listed.ok()) {
        spdlog::warn("informer resource={} list failed: {}", type_.plural, std::string(listed.message()));
        for (int waited = 0; waited < backoff_ms && !stop_; waited += 50) {
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
        backoff_ms = std::min(backoff_ms * 2, 8000);
        continue;
      }
      relists_++;
      need_list = false;
    }
    absl::Status watched = WatchFrom(&rv);
    if (stop_) break;
    if (watched.ok()) {
      backoff_ms = 500;
      continue;
    }
    if (IsGone(watched)) {
      spdlog::info("informer resource={} watch expired (410), relisting", type_.plural);
      need_list = true;
      continue;
    }
    spdlog::warn("informer resource={} watch failed: {}", type_.plural, std::string(watched.message()));
    need_list = true;
    for (int waited = 0; waited < backoff_ms && !stop_; waited += 50) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    backoff_ms = std::min(backoff_ms * 2, 8000);
  }
}

}  // namespace shoal::kube
