#pragma once
// Gloo's rendezvous store (gloo::rendezvous::Store) over the leader's GroupRendezvous
// service: Gloo ranks publish their TCP addresses under a key and read the others'. Gloo
// expects a store to throw on failure; GlooCommunicator::Create catches and returns a
// Status, so nothing escapes the parallel library.
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <gloo/rendezvous/store.h>

#include "grpcpp/grpcpp.h"
#include "shoal/v1/group.grpc.pb.h"

namespace shoal::worker {

class GrpcStore final : public gloo::rendezvous::Store {
 public:
  GrpcStore(std::shared_ptr<grpc::Channel> channel, std::chrono::milliseconds timeout);

  void set(const std::string& key, const std::vector<char>& data) override;
  std::vector<char> get(const std::string& key) override;
  void wait(const std::vector<std::string>& keys) override { wait(keys, timeout_); }
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override;

 private:
  std::vector<std::vector<char>> Fetch(const std::vector<std::string>& keys, std::chrono::milliseconds timeout);

  std::unique_ptr<v1::GroupRendezvous::Stub> stub_;
  std::chrono::milliseconds timeout_;
};

}  // namespace shoal::worker
