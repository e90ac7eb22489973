#pragma once
// Leader election on a coordination.k8s.io/v1 Lease, like client-go's: a candidate takes
// the Lease when it is free or its holder has not renewed for leaseDuration (measured
// on our own clock from when we last saw the record change, so clock skew between
// replicas does not matter), renews every retry period, and steps down when it cannot
// renew within the renew deadline. Writes use the Lease's resourceVersion, so two
// candidates can never both win the same round.
#include <atomic>
#include <chrono>
#include <functional>
#include <string>

#include "operator/kube/kube_client.h"

namespace shoal::kube {

struct LeaderElectionOptions {
  std::string lease_namespace = "default";
  std::string lease_name = "shoal-operator";
  std::string identity;
  std::chrono::seconds lease_duration{15};
  std::chrono::seconds renew_deadline{10};
  std::chrono::seconds retry_period{2};
};

class LeaderElector {
 public:
  LeaderElector(KubeClient* client, LeaderElectionOptions options);

  // Blocks until leadership is acquired (returns true) or `stop` turns true (false).
  bool Acquire(const std::atomic<bool>& stop);
  // Renews until leadership is lost (returns false) or `stop` turns true (returns true).
  // Lost: no renewal within the renew deadline, or the Lease names another holder.
  bool HoldUntil(const std::atomic<bool>& stop);
  // Time since the last successful acquire or renewal: a watchdog's measure, since one
  // renewal's HTTP calls can take longer than the renew deadline.
  std::chrono::steady_clock::duration SinceRenewal() const {
    return std::chrono::steady_clock::now() -
           std::chrono::steady_clock::time_point(std::chrono::steady_clock::duration(last_renewal_.load()));
  }
  const LeaderElectionOptions& options() const { return options_; }
  // Gives the Lease up so a standby takes over at once (call after our controllers stopped).
  void Release();
  bool is_leader() const { return is_leader_.load(); }
  const std::string& identity() const { return options_.identity; }

 private:
  // One attempt to acquire or renew; true when we hold the Lease afterwards.
  bool TryAcquireOrRenew();

  KubeClient* client_;
  LeaderElectionOptions options_;
  std::atomic<bool> is_leader_{false};
  bool held_by_other_ = false;  // the last attempt found another holder's unexpired Lease
  std::atomic<std::chrono::steady_clock::rep> last_renewal_{0};
  std::string observed_record_;  // holder + renewTime last seen
  std::chrono::steady_clock::time_point observed_at_;
};

// RFC 3339 with microseconds, as the API's MicroTime.
std::string MicroTimeNow();
// RFC 3339 seconds, as the API's Time.
std::string TimeNow();

}  // namespace shoal::kube
