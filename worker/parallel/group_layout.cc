#include "worker/parallel/group_layout.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace shoal::worker {

absl::StatusOr<GroupLayout> GroupLayout::Make(int tensor, int pipeline, int64_t num_layers,
                                              const std::vector<int64_t>& stage_layers) {
  if (tensor < 1 || pipeline < 1) {
    return absl::InvalidArgumentError(fmt::format("tensor {} and pipeline {} must both be >= 1", tensor, pipeline));
  }
  if (pipeline > num_layers) {
    return absl::InvalidArgumentError(
        fmt::format("pipeline {}: more stages than the model's {} layers", pipeline, num_layers));
  }
  GroupLayout g;
  g.tensor = tensor;
  g.pipeline = pipeline;
  g.stage_begin.assign(1, 0);
  if (stage_layers.empty()) {
    for (int s = 0; s < pipeline; ++s) {
      g.stage_begin.push_back(g.stage_begin.back() + num_layers / pipeline + (s < num_layers % pipeline ? 1 : 0));
    }
    return g;
  }
  if (static_cast<int>(stage_layers.size()) != pipeline) {
    return absl::InvalidArgumentError(fmt::format("pipeline_layers [{}]: {} entries for {} pipeline stages",
                                                  fmt::join(stage_layers, ","), stage_layers.size(), pipeline));
  }
  for (int64_t n : stage_layers) {
    if (n < 1) {
      return absl::InvalidArgumentError(
          fmt::format("pipeline_layers [{}]: every stage needs at least one layer", fmt::join(stage_layers, ",")));
    }
    g.stage_begin.push_back(g.stage_begin.back() + n);
  }
  if (g.stage_begin.back() != num_layers) {
    return absl::InvalidArgumentError(fmt::format("pipeline_layers [{}] add up to {}, the model has {} layers",
                                                  fmt::join(stage_layers, ","), g.stage_begin.back(), num_layers));
  }
  return g;
}

ShardSpec GroupLayout::shard_of(int rank) const {
  ShardSpec s;
  s.tp_rank = tp_rank_of(rank);
  s.tp_size = tensor;
  s.first_layer = stage_begin[stage_of(rank)];
  s.end_layer = stage_begin[stage_of(rank) + 1];
  return s;
}

std::string GroupLayout::Describe(int rank) const {
  return fmt::format("group rank {} (pipeline stage {}, tensor rank {})", rank, stage_of(rank), tp_rank_of(rank));
}

}  // namespace shoal::worker
