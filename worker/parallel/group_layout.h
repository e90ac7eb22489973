#pragma once
// Where each rank of a group sits: rank r is tensor rank r % T of pipeline stage r / T,
// so rank 0 (the leader) is tensor rank 0 of the first stage and the tensor ranks of a
// stage are neighbours. Stage s holds layers [stage_begin[s], stage_begin[s+1]).
// A pure value, computed once by the leader and handed to every rank at Join.
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/model/model_config.h"

namespace shoal::worker {

struct GroupLayout {
  int tensor = 1;
  int pipeline = 1;
  std::vector<int64_t> stage_begin = {0, 0};  // pipeline + 1 entries; the last = num_layers

  // `stage_layers`: layers per stage, empty = balanced (the first stages take one more
  // when the count does not divide).
  static absl::StatusOr<GroupLayout> Make(int tensor, int pipeline, int64_t num_layers,
                                          const std::vector<int64_t>& stage_layers = {});

  int world_size() const { return tensor * pipeline; }
  int stage_of(int rank) const { return rank / tensor; }
  int tp_rank_of(int rank) const { return rank % tensor; }
  int rank_of(int stage, int tp_rank) const { return stage * tensor + tp_rank; }
  bool is_last_stage(int rank) const { return stage_of(rank) == pipeline - 1; }
  ShardSpec shard_of(int rank) const;
  // "group rank 3 (stage 1, tensor rank 1)"
  std::string Describe(int rank) const;
};

}  // namespace shoal::worker
