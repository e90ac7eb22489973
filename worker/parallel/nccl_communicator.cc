#include "worker/parallel/nccl_communicator.h"

#include <fmt/format.h>

#include <gloo/rendezvous/store.h>

#include <algorithm>
#include <chrono>
#include <exception>
#include <thread>

#include "worker/parallel/nccl_library.h"

namespace shoal::worker {
namespace {

// The loaded library; every caller got here through Create, which checked it loads.
const NcclLibrary& Nccl() {
  std::string why_not;
  return *LoadNccl(&why_not);
}

}  // namespace

bool NcclAvailable(std::string* why_not) { return LoadNccl(why_not) != nullptr; }

absl::StatusOr<ncclUniqueId> NcclCommunicator::NewUniqueId() {
  std::string why_not;
  if (LoadNccl(&why_not) == nullptr) return absl::FailedPreconditionError(why_not);
  ncclUniqueId id;
  if (ncclResult_t r = Nccl().get_unique_id(&id); r != ncclSuccess) {
    return absl::InternalError(fmt::format("ncclGetUniqueId: {}", Nccl().get_error_string(r)));
  }
  return id;
}

absl::StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::Create(const ncclUniqueId& id, int rank,
                                                                            std::vector<int> group_ranks,
                                                                            std::chrono::milliseconds timeout,
                                                                            int cuda_device) {
  std::string why_not;
  if (LoadNccl(&why_not) == nullptr) return absl::FailedPreconditionError(why_not);
  if (cudaSetDevice(cuda_device) != cudaSuccess) {
    return absl::InvalidArgumentError(fmt::format("NCCL rank {}: cannot use CUDA device {}", rank, cuda_device));
  }
  auto c = std::unique_ptr<NcclCommunicator>(new NcclCommunicator());
  c->device_ = cuda_device;
  c->rank_ = rank;
  c->group_ranks_ = std::move(group_ranks);
  c->timeout_ = timeout;
  if (cudaStreamCreateWithFlags(&c->stream_, cudaStreamNonBlocking) != cudaSuccess ||
      cudaMalloc(&c->scratch_, sizeof(float)) != cudaSuccess) {
    return absl::InternalError(fmt::format("NCCL rank {}: cannot create a CUDA stream or scratch buffer", rank));
  }
  // Non-blocking init so a rank that never arrives turns into a timeout, not a hang.
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclResult_t r = Nccl().comm_init_rank_config(&c->comm_, c->size(), id, rank, &config);
  if (r != ncclSuccess && r != ncclInProgress) return c->Check(r, "init");
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  ncclResult_t state = ncclInProgress;
  while (state == ncclInProgress) {
    Nccl().comm_get_async_error(c->comm_, &state);
    if (state == ncclInProgress && std::chrono::steady_clock::now() > deadline) {
      Nccl().comm_abort(c->comm_);
      c->comm_ = nullptr;
      return absl::DeadlineExceededError(fmt::format("NCCL rank {} of {}: init did not complete within {} ms", rank,
                                                     c->size(), timeout.count()));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (absl::Status st = c->Check(state, "init"); !st.ok()) return st;
  return c;
}

absl::StatusOr<std::unique_ptr<NcclCommunicator>> NcclCommunicator::CreateThroughStore(
    gloo::rendezvous::Store& store, const std::string& key, int rank, std::vector<int> group_ranks,
    std::chrono::milliseconds timeout, int cuda_device) {
  ncclUniqueId id;
  try {
    if (rank == 0) {
      auto made = NewUniqueId();
      if (!made.ok()) return made.status();
      id = *made;
      store.set(key, std::vector<char>(id.internal, id.internal + sizeof(id.internal)));
    } else {
      store.wait({key}, timeout);
      const std::vector<char> bytes = store.get(key);
      if (bytes.size() != sizeof(id.internal)) {
        return absl::DataLossError(fmt::format("NCCL unique id under '{}' has {} bytes, expected {}", key, bytes.size(),
                                               sizeof(id.internal)));
      }
      std::copy(bytes.begin(), bytes.end(), id.internal);
    }
  } catch (const std::exception& e) {
    return absl::UnavailableError(fmt::format("NCCL rank {}: exchanging the unique id under '{}': {}", rank, key,
                                              e.what()));
  }
  return Create(id, rank, std::move(group_ranks), timeout, cuda_device);
}

NcclCommunicator::~NcclCommunicator() {
  if (comm_ != nullptr) broken_.ok() ? Nccl().comm_destroy(comm_) : Nccl().comm_abort(comm_);
  if (scratch_ != nullptr) cudaFree(scratch_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

absl::Status NcclCommunicator::Enqueued(ncclResult_t r, const char* op) {
  if (r != ncclInProgress) return Check(r, op);
  // Non-blocking mode: the call returned before its work was on the stream. Until the
  // communicator's state leaves ncclInProgress, a stream query could see an idle stream
  // and report the operation done.
  const auto deadline = std::chrono::steady_clock::now() + timeout_;
  ncclResult_t state = ncclInProgress;
  while (state == ncclInProgress) {
    Nccl().comm_get_async_error(comm_, &state);
    if (state == ncclInProgress && std::chrono::steady_clock::now() > deadline) {
      Nccl().comm_abort(comm_);
      comm_ = nullptr;
      broken_ = absl::DeadlineExceededError(fmt::format("NCCL {} (rank {} of {}) was not enqueued within {} ms", op,
                                                        rank_, size(), timeout_.count()));
      return broken_;
    }
    if (state == ncclInProgress) std::this_thread::yield();
  }
  return Check(state, op);
}

absl::Status NcclCommunicator::Check(ncclResult_t r, const char* op) {
  if (r == ncclSuccess || r == ncclInProgress) return absl::OkStatus();
  broken_ = absl::UnavailableError(fmt::format("NCCL {} (rank {} of {}): {}", op, rank_, size(), Nccl().get_error_string(r)));
  return broken_;
}

absl::Status NcclCommunicator::Sync(const char* op) {
  const auto deadline = std::chrono::steady_clock::now() + timeout_;
  for (;;) {
    const cudaError_t e = cudaStreamQuery(stream_);
    if (e == cudaSuccess) return absl::OkStatus();
    if (e != cudaErrorNotReady) {
      broken_ = absl::InternalError(fmt::format("NCCL {}: CUDA error {}", op, cudaGetErrorString(e)));
      return broken_;
    }
    ncclResult_t async = ncclSuccess;
    Nccl().comm_get_async_error(comm_, &async);
    if (async != ncclSuccess && async != ncclInProgress) {
      Nccl().comm_abort(comm_);
      comm_ = nullptr;
      return Check(async, op);
    }
    if (std::chrono::steady_clock::now() > deadline) {
      Nccl().comm_abort(comm_);
      comm_ = nullptr;
      broken_ = absl::DeadlineExceededError(
          fmt::format("NCCL {} (rank {} of {}) did not complete within {} ms", op, rank_, size(), timeout_.count()));
      return broken_;
    }
    std::this_thread::yield();
  }
}

absl::Status NcclCommunicator::UseDevice() {
  if (!broken_.ok()) return broken_;
  // cudaSetDevice is per thread: the engine steps on a thread of its own.
  if (cudaSetDevice(device_) != cudaSuccess) {
    broken_ = absl::InternalError(fmt::format("NCCL rank {}: cannot use CUDA device {}", rank_, device_));
  }
  return broken_;
}

absl::Status NcclCommunicator::AllReduceSum(std::span<float> data) {
  if (absl::Status st = UseDevice(); !st.ok()) return st;
  if (absl::Status st = Enqueued(Nccl().all_reduce(data.data(), data.data(), data.size(), ncclFloat32, ncclSum, comm_, stream_),
                              "all-reduce");
      !st.ok()) {
    return st;
  }
  return Sync("all-reduce");
}

absl::Status NcclCommunicator::AllGather(std::span<const float> in, std::span<float> out) {
  if (absl::Status st = UseDevice(); !st.ok()) return st;
  if (out.size() != in.size() * size()) return absl::InvalidArgumentError("NCCL all-gather: output size");
  if (absl::Status st = Enqueued(Nccl().all_gather(in.data(), out.data(), in.size(), ncclFloat32, comm_, stream_), "all-gather");
      !st.ok()) {
    return st;
  }
  return Sync("all-gather");
}

absl::Status NcclCommunicator::Broadcast(std::span<std::byte> data, int root) {
  if (absl::Status st = UseDevice(); !st.ok()) return st;
  if (absl::Status st =
          Enqueued(Nccl().broadcast(data.data(), data.data(), data.size(), ncclUint8, root, comm_, stream_), "broadcast");
      !st.ok()) {
    return st;
  }
  return Sync("broadcast");
}

// NCCL matches point-to-point calls by order per peer; the tag is not needed. Sends and
// receives share the communicator's one stream, so a rank must not post a receive behind
// a send whose peer first waits for that receive's data: GPU groups keep the pipeline's
// hand-off on the Gloo world communicator, and use NCCL for the tensor group only.
absl::Status NcclCommunicator::SendAsync(std::span<const std::byte> data, int dst, uint64_t) {
  if (absl::Status st = UseDevice(); !st.ok()) return st;
  return Enqueued(Nccl().send(data.data(), data.size(), ncclUint8, dst, comm_, stream_), "send");
}

absl::Status NcclCommunicator::WaitSends() {
  if (absl::Status st = UseDevice(); !st.ok()) return st;
  return Sync("send");
}

absl::Status NcclCommunicator::Recv(std::span<std::byte> data, int src, uint64_t) {
  if (absl::Status st = UseDevice(); !st.ok()) return st;
  if (absl::Status st = Enqueued(Nccl().recv(data.data(), data.size(), ncclUint8, src, comm_, stream_), "recv"); !st.ok()) {
    return st;
  }
  return Sync("recv");
}

absl::Status NcclCommunicator::Barrier() {
  if (absl::Status st = UseDevice(); !st.ok()) return st;
  return AllReduceSum(std::span<float>(scratch_, 1));
}

}  // namespace shoal::worker
