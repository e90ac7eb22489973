#include "operator/kube/leader_election.h"

#include <ctime>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "operator/kube/resource_type.h"

namespace shoal::kube {

std::string MicroTimeNow() {
  auto now = std::chrono::system_clock::now();
  std::time_t t = std::chrono::system_clock::to_time_t(now);
  auto micros = std::chrono::duration_cast<std::chrono::microseconds>(now.time_since_epoch()).count() % 1000000;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
  return fmt::format("{}.{:06d}Z", buf, micros);
}

std::string TimeNow() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

LeaderElector::LeaderElector(KubeClient* client, LeaderElectionOptions options)
    : client_(client), options_(std::move(options)) {}

bool LeaderElector::TryAcquireOrRenew() {
  held_by_other_ = false;
  const std::string path = resources::kLeases.ObjectPath(options_.lease_namespace, options_.lease_name);
  const std::string now = MicroTimeNow();
  auto current = client_->Get(path);
  if (!current.ok() && !IsHttpNotFound(current.status())) {
    spdlog::warn("leader election lease={} get failed: {}", options_.lease_name, std::string(current.status().message()));
    return false;
  }
  if (!current.ok()) {
    nlohmann::json lease = {
        {"apiVersion", "coordination.k8s.io/v1"},
        {"kind", "Lease"},
        {"metadata", {{"name", options_.lease_name}, {"namespace", options_.lease_namespace}}},
        {"spec",
         {{"holderIdentity", options_.identity},
          {"leaseDurationSeconds", options_.lease_duration.count()},
          {"acquireTime", now},
          {"renewTime", now},
          {"leaseTransitions", 0}}}};
    auto created = client_->Post(resources::kLeases.CollectionPath(options_.lease_namespace), lease);
    if (!created.ok()) return false;
    observed_record_ = options_.identity + "@" + now;
    observed_at_ = std::chrono::steady_clock::now();
    last_renewal_ = observed_at_.time_since_epoch().count();
    return true;
  }
  nlohmann::json lease = *current;
  nlohmann::json& spec = lease["spec"];
  const std::string holder = spec.value("holderIdentity", "");
  const std::string record = holder + "@" + spec.value("renewTime", "");
  if (record != observed_record_) {
    observed_record_ = record;
    observed_at_ = std::chrono::steady_clock::now();
  }
  const auto duration = std::chrono::seconds(spec.value("leaseDurationSeconds", options_.lease_duration.count()));
  const bool held_by_other = !holder.empty() && holder != options_.identity;
  if (held_by_other && std::chrono::steady_clock::now() < observed_at_ + duration) {
    held_by_other_ = true;
    return false;
  }
  if (holder != options_.identity) {
    spec["acquireTime"] = now;
    spec["leaseTransitions"] = spec.value("leaseTransitions", 0) + 1;
  }
  spec["holderIdentity"] = options_.identity;
  spec["renewTime"] = now;
  spec["leaseDurationSeconds"] = options_.lease_duration.count();
  auto updated = client_->Put(path, lease);  // carries resourceVersion: 409 if someone else wrote
  if (!updated.ok()) return false;
  observed_record_ = options_.identity + "@" + now;
  observed_at_ = std::chrono::steady_clock::now();
  last_renewal_ = observed_at_.time_since_epoch().count();
  return true;
}

bool LeaderElector::Acquire(const std::atomic<bool>& stop) {
  spdlog::info("leader election lease={}/{} identity={} waiting", options_.lease_namespace, options_.lease_name,
               options_.identity);
  while (!stop) {
    if (TryAcquireOrRenew()) {
      is_leader_ = true;
      spdlog::info("leader election lease={} identity={} acquired", options_.lease_name, options_.identity);
      return true;
    }
    for (auto waited = std::chrono::milliseconds(0); waited < options_.retry_period && !stop;
         waited += std::chrono::milliseconds(50)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  return false;
}

bool LeaderElector::HoldUntil(const std::atomic<bool>& stop) {
  auto last_renew = std::chrono::steady_clock::now();
  while (!stop) {
    for (auto waited = std::chrono::milliseconds(0); waited < options_.retry_period && !stop;
         waited += std::chrono::milliseconds(50)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (stop) break;
    if (TryAcquireOrRenew()) {
      last_renew = std::chrono::steady_clock::now();
    } else if (held_by_other_) {
      spdlog::error("leader election lease={} identity={} lost: the Lease is held by another replica",
                    options_.lease_name, options_.identity);
      is_leader_ = false;
      return false;
    } else if (std::chrono::steady_clock::now() - last_renew > options_.renew_deadline) {
      spdlog::error("leader election lease={} identity={} lost: no renewal within {}s", options_.lease_name,
                    options_.identity, options_.renew_deadline.count());
      is_leader_ = false;
      return false;
    }
  }
  return true;
}

void LeaderElector::Release() {
  const std::string path = resources::kLeases.ObjectPath(options_.lease_namespace, options_.lease_name);
  auto current = client_->Get(path);
  is_leader_ = false;
  if (!current.ok() || (*current)["spec"].value("holderIdentity", "") != options_.identity) return;
  nlohmann::json lease = *current;
  lease["spec"]["holderIdentity"] = "";
  lease["spec"]["leaseDurationSeconds"] = 1;
  lease["spec"]["renewTime"] = MicroTimeNow();
  auto released = client_->Put(path, lease);
  spdlog::info("leader election lease={} identity={} released ({})", options_.lease_name, options_.identity,
               released.ok() ? "ok" : std::string(released.status().message()));
}

}  // namespace shoal::kube
