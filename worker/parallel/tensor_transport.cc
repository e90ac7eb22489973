#include "worker/parallel/tensor_transport.h"

#include <fmt/format.h>

#include <map>

namespace shoal::worker {
namespace {

constexpr std::string_view kMagic = "shoal-tensor-rank-v1";

}  // namespace

// Lines: the magic, the GPU, "nccl" or "gloo", the NCCL error (may be empty).
std::string TensorRankDevice::Encode() const {
  return fmt::format("{}\n{}\n{}\n{}", kMagic, gpu, allow_nccl ? "nccl" : "gloo", nccl_error);
}

absl::StatusOr<TensorRankDevice> TensorRankDevice::Decode(std::string_view bytes) {
  std::vector<std::string_view> lines;
  size_t at = 0;
  for (int i = 0; i < 3; ++i) {
    const size_t nl = bytes.find('\n', at);
    if (nl == std::string_view::npos) break;
    lines.push_back(bytes.substr(at, nl - at));
    at = nl + 1;
  }
  if (lines.size() != 3 || lines[0] != kMagic || (lines[2] != "nccl" && lines[2] != "gloo")) {
    return absl::DataLossError(fmt::format("a tensor rank's device record is malformed ({} bytes)", bytes.size()));
  }
  TensorRankDevice d;
  d.gpu = std::string(lines[1]);
  d.allow_nccl = lines[2] == "nccl";
  d.nccl_error = std::string(bytes.substr(at));
  return d;
}

// The reasons in the order a user can act on them: a setting, the shards' placement,
// then the machines' NCCL.
std::string WhyNotNccl(std::span<const TensorRankDevice> ranks) {
  for (size_t i = 0; i < ranks.size(); ++i) {
    if (!ranks[i].allow_nccl) return fmt::format("tensor rank {} keeps to Gloo (--tensor-collectives gloo)", i);
  }
  for (size_t i = 0; i < ranks.size(); ++i) {
    if (ranks[i].gpu.empty()) return fmt::format("tensor rank {} runs its shard on the CPU", i);
  }
  std::map<std::string, size_t> first_on;
  for (size_t i = 0; i < ranks.size(); ++i) {
    auto [it, fresh] = first_on.emplace(ranks[i].gpu, i);
    if (!fresh) {
      return fmt::format("tensor ranks {} and {} share GPU {} (NCCL needs a GPU per rank)", it->second, i,
                         ranks[i].gpu);
    }
  }
  for (size_t i = 0; i < ranks.size(); ++i) {
    if (!ranks[i].nccl_error.empty()) return fmt::format("tensor rank {} cannot load NCCL ({})", i, ranks[i].nccl_error);
  }
  return "";
}

}  // namespace shoal::worker
