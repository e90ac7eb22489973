#include "worker/parallel/grpc_store.h"

#include <fmt/format.h>

#include <stdexcept>

namespace shoal::worker {

GrpcStore::GrpcStore(std::shared_ptr<grpc::Channel> channel, std::chrono::milliseconds timeout)
    : stub_(v1::GroupRendezvous::NewStub(std::move(channel))), timeout_(timeout) {}

void GrpcStore::set(const std::string& key, const std::vector<char>& data) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout_);
  ctx.set_wait_for_ready(true);
  v1::StoreSetRequest req;
  req.set_key(key);
  req.set_value(std::string(data.begin(), data.end()));
  v1::StoreSetResponse resp;
  const grpc::Status st = stub_->StoreSet(&ctx, req, &resp);
  if (!st.ok()) {
    throw std::runtime_error(fmt::format("group store: setting key '{}' at the leader failed: {}", key,
                                         st.error_message()));
  }
}

std::vector<std::vector<char>> GrpcStore::Fetch(const std::vector<std::string>& keys,
                                                std::chrono::milliseconds timeout) {
  grpc::ClientContext ctx;
  // A little longer than the server's own wait, so the server's answer (naming the key)
  // arrives before our deadline does.
  ctx.set_deadline(std::chrono::system_clock::now() + timeout + std::chrono::seconds(2));
  ctx.set_wait_for_ready(true);
  v1::StoreGetRequest req;
  for (const std::string& k : keys) req.add_keys(k);
  req.set_timeout_ms(timeout.count());
  v1::StoreGetResponse resp;
  const grpc::Status st = stub_->StoreGet(&ctx, req, &resp);
  if (!st.ok()) {
    throw std::runtime_error(fmt::format("group store: waiting for {} key(s) from '{}' at the leader: Timed out: {}",
                                         keys.size(), keys.empty() ? "" : keys.front(), st.error_message()));
  }
  std::vector<std::vector<char>> out;
  for (const std::string& v : resp.values()) out.emplace_back(v.begin(), v.end());
  return out;
}

std::vector<char> GrpcStore::get(const std::string& key) { return Fetch({key}, timeout_).at(0); }

void GrpcStore::wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) {
  Fetch(keys, timeout);
}

}  // namespace shoal::worker
