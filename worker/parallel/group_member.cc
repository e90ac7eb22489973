#include "worker/parallel/group_member.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <charconv>
#include <cstdlib>
#include <random>

#include "worker/common/status_macros.h"
#include "worker/parallel/gloo_communicator.h"
#include "worker/parallel/grpc_store.h"
#include "worker/parallel/rendezvous_service.h"
#include "worker/parallel/tensor_transport.h"
#ifdef SHOAL_HAVE_NCCL
#include "worker/parallel/nccl_communicator.h"
#endif

namespace shoal::worker {
namespace {

absl::StatusOr<int> EnvInt(const char* name, const char* value) {
  int v = 0;
  const char* end = value + std::strlen(value);
  auto [p, ec] = std::from_chars(value, end, v);
  if (ec != std::errc() || p != end || v < 0) {
    return absl::InvalidArgumentError(fmt::format("environment {}=\"{}\" is not a non-negative integer", name, value));
  }
  return v;
}

std::string PortOf(const std::string& address) {
  const size_t colon = address.rfind(':');
  return colon == std::string::npos ? "" : address.substr(colon + 1);
}

std::string NewRunId() {
  std::random_device rd;
  return fmt::format("{:08x}{:08x}", rd(), rd());
}

}  // namespace

int LeaderPort(const GroupOptions& o) {
  const std::string port = PortOf(o.leader_address);
  int v = -1;
  if (port.empty() || std::from_chars(port.data(), port.data() + port.size(), v).ec != std::errc()) return -1;
  return v;
}

absl::Status ApplyGroupEnv(GroupOptions* o) {
  if (const char* v = std::getenv(kEnvGroup); v && *v) {
    ASSIGN_OR_RETURN(o->group, EnvInt(kEnvGroup, v));
  }
  if (const char* v = std::getenv(kEnvPodRank); v && *v) {
    ASSIGN_OR_RETURN(o->rank, EnvInt(kEnvPodRank, v));
  }
  if (const char* v = std::getenv(kEnvPodsPerGroup); v && *v) {
    ASSIGN_OR_RETURN(o->world_size, EnvInt(kEnvPodsPerGroup, v));
  }
  if (const char* v = std::getenv(kEnvTensorParallel); v && *v) {
    ASSIGN_OR_RETURN(o->tensor, EnvInt(kEnvTensorParallel, v));
  }
  if (const char* v = std::getenv(kEnvPipelineParallel); v && *v) {
    ASSIGN_OR_RETURN(o->pipeline, EnvInt(kEnvPipelineParallel, v));
  }
  if (o->tensor < 1 || o->pipeline < 1) {
    return absl::InvalidArgumentError(fmt::format("tensor {} and pipeline {} ({}, {}) must be >= 1", o->tensor,
                                                  o->pipeline, kEnvTensorParallel, kEnvPipelineParallel));
  }
  if (const char* v = std::getenv(kEnvLeaderAddr); v && *v) {
    o->leader_address = v;
    if (PortOf(o->leader_address).empty()) {
      return absl::InvalidArgumentError(fmt::format("environment {}=\"{}\" is not host:port", kEnvLeaderAddr, v));
    }
    // Across pods the collectives must listen where peers can reach them: the pod's own
    // hostname, which a StatefulSet pod resolves to its IP.
    const std::string leader_host = o->leader_address.substr(0, o->leader_address.rfind(':'));
    if (o->host == "127.0.0.1" && leader_host != "127.0.0.1" && leader_host != "localhost") {
      char hostname[256] = {};
      if (gethostname(hostname, sizeof(hostname) - 1) == 0 && hostname[0] != '\0') o->host = hostname;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<GroupMember>> GroupMember::Join(const GroupOptions& options, int64_t num_layers) {
  auto m = std::unique_ptr<GroupMember>(new GroupMember());
  m->rank_ = options.rank;
  if (options.leader_address.empty() || PortOf(options.leader_address).empty()) {
    return absl::InvalidArgumentError(fmt::format(
        "group rank {}: the leader's rendezvous address (--leader-addr or {}) must be host:port, got \"{}\"",
        options.rank, kEnvLeaderAddr, options.leader_address));
  }
  if (m->is_leader()) {
    ASSIGN_OR_RETURN(m->layout_, GroupLayout::Make(options.tensor, options.pipeline, num_layers, options.pipeline_layers));
    if (options.world_size != 0 && options.world_size != m->layout_.world_size()) {
      return absl::InvalidArgumentError(fmt::format("group of {} ranks ({}) cannot run tensor {} x pipeline {}",
                                                    options.world_size, kEnvPodsPerGroup, options.tensor,
                                                    options.pipeline));
    }
    m->run_id_ = fmt::format("g{}-{}", options.group, NewRunId());
    m->collective_timeout_ = options.collective_timeout;
    m->probe_interval_ = options.probe_interval;
    m->micro_batches_ = options.micro_batches > 0 ? options.micro_batches : options.pipeline;
    v1::JoinResponse settings;
    settings.set_tensor(options.tensor);
    settings.set_pipeline(options.pipeline);
    for (int64_t b : m->layout_.stage_begin) settings.add_stage_layer_begin(b);
    settings.set_collective_timeout_ms(options.collective_timeout.count());
    settings.set_probe_interval_ms(options.probe_interval.count());
    settings.set_micro_batches(m->micro_batches_);
    m->min_micro_batch_tokens_ = std::max(1, options.min_micro_batch_tokens);
    settings.set_min_micro_batch_tokens(m->min_micro_batch_tokens_);
    std::string port = PortOf(options.leader_address);
    if (options.rendezvous != nullptr) {
      m->service_ = options.rendezvous;
    } else {
      m->owned_service_ = std::make_unique<RendezvousService>();
      m->service_ = m->owned_service_.get();
      grpc::ServerBuilder builder;
      int bound = 0;
      builder.AddListeningPort(fmt::format("0.0.0.0:{}", port), grpc::InsecureServerCredentials(), &bound);
      builder.RegisterService(m->service_);
      m->server_ = builder.BuildAndStart();
      if (m->server_ == nullptr || bound == 0) {
        return absl::UnavailableError(
            fmt::format("group leader: cannot listen on 0.0.0.0:{} for rendezvous (port in use?)", port));
      }
      port = std::to_string(bound);
    }
    m->service_->Configure(m->layout_, m->run_id_, settings);
    spdlog::info("group leader rendezvous_port={} run_id={} tensor={} pipeline={} waiting_for={}", port, m->run_id_,
                 options.tensor, options.pipeline, m->layout_.world_size() - 1);
    m->channel_ = grpc::CreateChannel(fmt::format("127.0.0.1:{}", port), grpc::InsecureChannelCredentials());
    RETURN_IF_ERROR(m->service_->AwaitJoins(options.join_timeout));
  } else {
    m->channel_ = grpc::CreateChannel(options.leader_address, grpc::InsecureChannelCredentials());
    auto stub = v1::GroupRendezvous::NewStub(m->channel_);
    grpc::ClientContext ctx;
    // A little past the leader's own join timeout, so its answer (naming the missing
    // ranks) arrives before our deadline.
    ctx.set_deadline(std::chrono::system_clock::now() + options.join_timeout + std::chrono::seconds(3));
    ctx.set_wait_for_ready(true);  // the leader may still be starting
    v1::JoinRequest req;
    req.set_rank(options.rank);
    req.set_world_size(options.world_size);
    char hostname[256] = {};
    gethostname(hostname, sizeof(hostname) - 1);
    req.set_host(fmt::format("{} ({})", hostname, options.host));
    v1::JoinResponse resp;
    const grpc::Status st = stub->Join(&ctx, req, &resp);
    if (!st.ok()) {
      return absl::Status(static_cast<absl::StatusCode>(st.error_code()),
                          fmt::format("group rank {}: joining the leader at {} failed: {}", options.rank,
                                      options.leader_address, st.error_message()));
    }
    std::vector<int64_t> counts;
    for (int i = 0; i + 1 < resp.stage_layer_begin_size(); ++i) {
      counts.push_back(resp.stage_layer_begin(i + 1) - resp.stage_layer_begin(i));
    }
    ASSIGN_OR_RETURN(m->layout_, GroupLayout::Make(resp.tensor(), resp.pipeline(), num_layers, counts));
    m->run_id_ = resp.run_id();
    m->collective_timeout_ = std::chrono::milliseconds(resp.collective_timeout_ms());
    m->probe_interval_ = std::chrono::milliseconds(resp.probe_interval_ms());
    m->micro_batches_ = resp.micro_batches();
    m->min_micro_batch_tokens_ = std::max(1, resp.min_micro_batch_tokens());
    m->attend_ctx_ = std::make_unique<grpc::ClientContext>();
    m->attend_thread_ = std::thread([raw = m.get()] { raw->Attend(); });
  }
  RETURN_IF_ERROR(m->Connect(options));
  spdlog::info("group connected run_id={} {} layers=[{}, {})", m->run_id_, m->layout_.Describe(m->rank_),
               m->shard().first_layer, m->shard().end_layer);
  return m;
}

absl::Status GroupMember::Connect(const GroupOptions& options) {
  store_ = std::make_unique<GrpcStore>(channel_, options.join_timeout);
  GlooOptions world;
  world.prefix = run_id_ + "/world";
  world.rank = rank_;
  for (int r = 0; r < layout_.world_size(); ++r) world.group_ranks.push_back(r);
  world.hostname = options.host;
  world.timeout = collective_timeout_;
  ASSIGN_OR_RETURN(world_, GlooCommunicator::Create(*store_, world));
  const int stage = layout_.stage_of(rank_);
  GlooOptions tp;
  tp.prefix = fmt::format("{}/stage{}/tensor", run_id_, stage);
  tp.rank = layout_.tp_rank_of(rank_);
  for (int t = 0; t < layout_.tensor; ++t) tp.group_ranks.push_back(layout_.rank_of(stage, t));
  tp.hostname = options.host;
  tp.timeout = collective_timeout_;
  std::string why_gloo = "one tensor rank";
  if (layout_.tensor > 1) {
    TensorRankDevice me;
    me.gpu = options.gpu_identity;
    me.allow_nccl = options.allow_nccl;
#ifdef SHOAL_HAVE_NCCL
    if (!me.gpu.empty()) NcclAvailable(&me.nccl_error);
#else
    me.nccl_error = "this build has no NCCL";
#endif
    ASSIGN_OR_RETURN(const std::vector<TensorRankDevice> all,
                     ExchangeTensorDevices(tp.prefix, tp.rank, layout_.tensor, me, options.join_timeout));
    why_gloo = WhyNotNccl(all);
#ifdef SHOAL_HAVE_NCCL
    if (why_gloo.empty()) {
      ASSIGN_OR_RETURN(tensor_, NcclCommunicator::CreateThroughStore(*store_, tp.prefix + "/nccl-id", tp.rank,
                                                                    tp.group_ranks, collective_timeout_,
                                                                    options.cuda_device));
      tensor_transport_ = "nccl";
      spdlog::info("group rank={} tensor collectives over NCCL on GPU {}", rank_, me.gpu);
      return absl::OkStatus();
    }
#endif
  }
  ASSIGN_OR_RETURN(tensor_, GlooCommunicator::Create(*store_, tp));
  tensor_transport_ = "gloo: " + why_gloo;
  if (layout_.tensor > 1) spdlog::info("group rank={} tensor collectives over Gloo: {}", rank_, why_gloo);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<TensorRankDevice>> GroupMember::ExchangeTensorDevices(const std::string& prefix, int tp_rank,
                                                                                 int tensor, const TensorRankDevice& me,
                                                                                 std::chrono::milliseconds timeout) {
  const std::string mine = me.Encode();
  std::vector<TensorRankDevice> all;
  try {
    store_->set(fmt::format("{}/device/{}", prefix, tp_rank), std::vector<char>(mine.begin(), mine.end()));
    std::vector<std::string> keys;
    for (int t = 0; t < tensor; ++t) keys.push_back(fmt::format("{}/device/{}", prefix, t));
    store_->wait(keys, timeout);
    for (const std::string& key : keys) {
      const std::vector<char> bytes = store_->get(key);
      ASSIGN_OR_RETURN(TensorRankDevice d, TensorRankDevice::Decode(std::string_view(bytes.data(), bytes.size())));
      all.push_back(std::move(d));
    }
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        fmt::format("group rank {}: exchanging the tensor ranks' devices under '{}': {}", rank_, prefix, e.what()));
  }
  return all;
}

// Follower: holds the Attend stream; when it ends without a clean shutdown the leader is
// gone, and the owner hears of it.
void GroupMember::Attend() {
  auto stub = v1::GroupRendezvous::NewStub(channel_);
  v1::AttendRequest req;
  req.set_rank(rank_);
  req.set_run_id(run_id_);
  auto reader = stub->Attend(attend_ctx_.get(), req);
  v1::AttendEvent ev;
  while (reader->Read(&ev)) {
  }
  const grpc::Status st = reader->Finish();
  if (st.ok()) {
    // The leader closed the stream itself: it is shutting down and will send STOP.
    spdlog::info("group rank={} the leader closed its rendezvous (shutting down)", rank_);
    return;
  }
  std::function<void(const std::string&)> fn;
  {
    std::lock_guard lock(mu_);
    if (stopping_) return;
    fn = on_peer_lost_;
  }
  const std::string what = fmt::format("the group leader (group rank 0) is gone: its rendezvous stream ended ({})",
                                       st.error_message());
  spdlog::error("group {}", what);
  if (fn) fn(what);
}

std::optional<std::pair<int, std::string>> GroupMember::lost_rank() const {
  return service_ ? service_->lost_rank() : std::nullopt;
}

void GroupMember::SetOnPeerLost(std::function<void(const std::string&)> fn) {
  {
    std::lock_guard lock(mu_);
    on_peer_lost_ = fn;
  }
  if (service_) {
    service_->SetOnRankLost([this, fn](int rank, const std::string& host) {
      // Fail() names the rank from lost_rank(); this says how it was noticed.
      if (fn) fn("its connection to the leader broke");
    });
  }
}

void GroupMember::SetStopping() {
  std::lock_guard lock(mu_);
  stopping_ = true;
  if (service_) service_->SetStopping();
}

GroupMember::~GroupMember() {
  SetStopping();
  if (service_) service_->SetOnRankLost(nullptr);  // the callback points at this member
  {
    std::lock_guard lock(mu_);
    if (attend_ctx_) attend_ctx_->TryCancel();
  }
  if (attend_thread_.joinable()) attend_thread_.join();
  if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
}

}  // namespace shoal::worker
