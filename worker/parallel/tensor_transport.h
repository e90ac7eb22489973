#pragma once
// Which library carries a pipeline stage's tensor collectives (the all-reduces inside a
// layer). NCCL, GPU to GPU, when every tensor rank of the stage has a GPU of its own and
// loads libnccl; Gloo otherwise, through host memory (CPU shards, ranks sharing one GPU,
// which NCCL refuses, or a machine without NCCL). Every rank publishes what it has, reads
// the others', and so makes the same choice. The world communicator (step broadcast,
// pipeline hand-off, health probe) is always Gloo.
#include <span>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace shoal::worker {

// What one tensor rank tells the others.
struct TensorRankDevice {
  std::string gpu;          // "hostname/PCI bus id" of the rank's GPU; empty: its shard runs on the CPU
  std::string nccl_error;   // why libnccl does not load there; empty when it does
  bool allow_nccl = true;   // false: the rank was told to keep to Gloo (--tensor-collectives gloo)

  std::string Encode() const;
  // DATA_LOSS for bytes that Encode did not write.
  static absl::StatusOr<TensorRankDevice> Decode(std::string_view bytes);
};

// "" when NCCL may carry the collectives of tensor ranks `ranks` (index = tensor rank);
// otherwise why not, naming the ranks ("tensor ranks 0 and 1 share GPU node-a/0000:17:00.0").
std::string WhyNotNccl(std::span<const TensorRankDevice> ranks);

}  // namespace shoal::worker
