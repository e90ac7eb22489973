#include "worker/parallel/gloo_communicator.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <csignal>
#include <mutex>

#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/common/error.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/prefix_store.h>
#include <gloo/transport/tcp/device.h>
#include <gloo/transport/unbound_buffer.h>

#include <exception>

namespace shoal::worker {
namespace {

void SumFloats(void* c, const void* a, const void* b, size_t n) {
  float* out = static_cast<float*>(c);
  const float* x = static_cast<const float*>(a);
  const float* y = static_cast<const float*>(b);
  for (size_t i = 0; i < n; ++i) out[i] = x[i] + y[i];
}

// Point-to-point slots get a top byte no Gloo collective uses (they take 0x01..0x08), so
// a Send's tag can never match a collective's message.
uint64_t PointToPointSlot(uint64_t tag) { return (uint64_t{0xF0} << 56) | (tag & ((uint64_t{1} << 56) - 1)); }

// Gloo says "Timed out" for silence and names the socket for a closed connection.
absl::Status FromGlooError(const std::string& what, const std::exception& e) {
  const std::string msg = e.what();
  if (msg.find("imed out") != std::string::npos || msg.find("imeout") != std::string::npos) {
    return absl::DeadlineExceededError(fmt::format("{}: {}", what, msg));
  }
  return absl::UnavailableError(fmt::format("{}: {}", what, msg));
}

}  // namespace

absl::StatusOr<std::unique_ptr<GlooCommunicator>> GlooCommunicator::Create(gloo::rendezvous::Store& store,
                                                                           const GlooOptions& options) {
  const int size = static_cast<int>(options.group_ranks.size());
  if (size < 1 || options.rank < 0 || options.rank >= size) {
    return absl::InvalidArgumentError(fmt::format("communicator '{}': rank {} of {} is out of range", options.prefix,
                                                  options.rank, size));
  }
  // Gloo's TCP transport writes without MSG_NOSIGNAL: a write to a peer that just died
  // would end this process with SIGPIPE instead of an error naming the lost rank.
  static std::once_flag ignore_sigpipe;
  std::call_once(ignore_sigpipe, [] { std::signal(SIGPIPE, SIG_IGN); });
  auto comm = std::unique_ptr<GlooCommunicator>(new GlooCommunicator());
  comm->prefix_ = options.prefix;
  comm->rank_ = options.rank;
  comm->group_ranks_ = options.group_ranks;
  comm->timeout_ = options.timeout;
  comm->connect_timeout_ = options.timeout;
  try {
    gloo::transport::tcp::attr attr;
    attr.hostname = options.hostname;
    auto device = gloo::transport::tcp::CreateDevice(attr);
    gloo::rendezvous::PrefixStore prefixed(options.prefix, store);
    auto context = std::make_shared<gloo::rendezvous::Context>(options.rank, size);
    context->setTimeout(options.timeout);
    context->connectFullMesh(prefixed, device);
    comm->context_ = std::move(context);
  } catch (const std::exception& e) {
    return FromGlooError(fmt::format("communicator '{}' rank {} of {} (group ranks [{}]): connecting", options.prefix,
                                     options.rank, size, fmt::join(options.group_ranks, ", ")),
                         e);
  }
  return comm;
}

// Pending sends are dropped unwaited only when the group is already broken.
GlooCommunicator::~GlooCommunicator() = default;

template <typename Fn>
absl::Status GlooCommunicator::Guarded(const char* op, Fn&& fn) {
  if (!broken_.ok()) return broken_;
  try {
    fn();
    return absl::OkStatus();
  } catch (const std::exception& e) {
    broken_ = FromGlooError(fmt::format("{} in '{}' (rank {} of {}, timeout {} ms)", op, prefix_, rank_, size(),
                                        timeout_.count()),
                            e);
    return broken_;
  }
}

absl::Status GlooCommunicator::AllReduceSum(std::span<float> data) {
  if (size() == 1 || data.empty()) return absl::OkStatus();
  return Guarded("all-reduce", [&] {
    gloo::AllreduceOptions opts(context_);
    opts.setOutput(data.data(), data.size());
    opts.setReduceFunction(&SumFloats);
    // A layer's all-reduce is small ([tokens, hidden]) and latency-bound: bcube exchanges
    // in log2(size) rounds where ring takes 2 (size - 1), 3x faster for 24 KB over two
    // ranks here (parallel-bench's tp2_allreduce_*_us: 930 -> 230-310 us). But bcube
    // waits with the transport's timeout from Create, not opts' one, so a call under a
    // shorter timeout (the health probe's) takes ring, which honours it.
    opts.setAlgorithm(timeout_ == connect_timeout_ ? gloo::AllreduceOptions::Algorithm::BCUBE
                                                   : gloo::AllreduceOptions::Algorithm::RING);
    opts.setTag(next_tag_++);
    opts.setTimeout(timeout_);
    gloo::allreduce(opts);
  });
}

absl::Status GlooCommunicator::AllGather(std::span<const float> in, std::span<float> out) {
  if (out.size() != in.size() * size()) {
    return absl::InvalidArgumentError(fmt::format("all-gather in '{}': output has {} floats, expected {} x {}", prefix_,
                                                  out.size(), size(), in.size()));
  }
  if (size() == 1) {
    std::copy(in.begin(), in.end(), out.begin());
    return absl::OkStatus();
  }
  return Guarded("all-gather", [&] {
    gloo::AllgatherOptions opts(context_);
    opts.setInput(const_cast<float*>(in.data()), in.size());
    opts.setOutput(out.data(), out.size());
    opts.setTag(next_tag_++);
    opts.setTimeout(timeout_);
    gloo::allgather(opts);
  });
}

absl::Status GlooCommunicator::Broadcast(std::span<std::byte> data, int root) {
  if (size() == 1 || data.empty()) return absl::OkStatus();
  return Guarded("broadcast", [&] {
    gloo::BroadcastOptions opts(context_);
    opts.setOutput(reinterpret_cast<uint8_t*>(data.data()), data.size());
    opts.setRoot(root);
    opts.setTag(next_tag_++);
    opts.setTimeout(timeout_);
    gloo::broadcast(opts);
  });
}

absl::Status GlooCommunicator::SendAsync(std::span<const std::byte> data, int dst, uint64_t tag) {
  return Guarded("send", [&] {
    PendingSend send{std::vector<std::byte>(data.begin(), data.end()), nullptr};
    send.buffer = context_->createUnboundBuffer(send.bytes.data(), send.bytes.size());
    send.buffer->send(dst, PointToPointSlot(tag));
    pending_sends_.push_back(std::move(send));
  });
}

absl::Status GlooCommunicator::WaitSends() {
  absl::Status st = Guarded("send", [&] {
    for (PendingSend& send : pending_sends_) send.buffer->waitSend(timeout_);
  });
  pending_sends_.clear();
  return st;
}

absl::Status GlooCommunicator::Recv(std::span<std::byte> data, int src, uint64_t tag) {
  return Guarded("recv", [&] {
    auto buf = context_->createUnboundBuffer(data.data(), data.size());
    buf->recv(src, PointToPointSlot(tag));
    buf->waitRecv(timeout_);
  });
}

absl::Status GlooCommunicator::Barrier() {
  if (size() == 1) return absl::OkStatus();
  return Guarded("barrier", [&] {
    gloo::BarrierOptions opts(context_);
    opts.setTag(next_tag_++);
    opts.setTimeout(timeout_);
    gloo::barrier(opts);
  });
}

}  // namespace shoal::worker
