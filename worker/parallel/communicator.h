#pragma once
// The collectives a group of ranks runs, behind one interface with a CPU implementation
// (Gloo over TCP) and a GPU one (NCCL). Every call is blocking and bounded by the
// communicator's timeout: a peer that died or stopped answering turns into an error
// Status (UNAVAILABLE for a lost connection, DEADLINE_EXCEEDED for silence), never a
// hang. After any error the communicator is broken for good: collectives cannot survive
// a lost rank, so the group is torn down and restarted as a whole.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "absl/status/status.h"

namespace shoal::worker {

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Which ranks of the whole group these are, for error messages ("group rank 3").
  virtual int group_rank(int rank) const = 0;

  // data[i] = sum over ranks of data[i], on every rank.
  virtual absl::Status AllReduceSum(std::span<float> data) = 0;
  // out = in of rank 0, in of rank 1, ... (out.size() == size() * in.size()).
  virtual absl::Status AllGather(std::span<const float> in, std::span<float> out) = 0;
  // data on every rank = data of `root`.
  virtual absl::Status Broadcast(std::span<std::byte> data, int root) = 0;
  // Point to point; a (peer, tag) pair matches one send with one Recv of the same size.
  // A send completes only once the receiver has posted its Recv (rendezvous, no hidden
  // buffering), so a pipeline stage starts its sends with SendAsync, keeps computing, and
  // collects them with WaitSends; `data` must stay alive until then (Gloo's copies it, so
  // a step that fails half-way leaves no send reading freed memory).
  virtual absl::Status SendAsync(std::span<const std::byte> data, int dst, uint64_t tag) = 0;
  virtual absl::Status WaitSends() = 0;
  absl::Status Send(std::span<const std::byte> data, int dst, uint64_t tag) {
    absl::Status st = SendAsync(data, dst, tag);
    return st.ok() ? WaitSends() : st;
  }
  virtual absl::Status Recv(std::span<std::byte> data, int src, uint64_t tag) = 0;
  virtual absl::Status Barrier() = 0;

  // Whether the spans of every call are device memory of the rank's GPU (NCCL) rather
  // than host memory (Gloo). A GPU model hands a host communicator pinned host copies, so
  // GPU ranks that share one GPU (which NCCL refuses) still run, over Gloo.
  virtual bool device_memory() const { return false; }

  // Bound on each following call; Recv/Broadcast of a follower waiting for the leader's
  // next step use a longer one than a collective inside a step.
  virtual void SetTimeout(std::chrono::milliseconds timeout) = 0;
  virtual std::chrono::milliseconds timeout() const = 0;
};

}  // namespace shoal::worker
