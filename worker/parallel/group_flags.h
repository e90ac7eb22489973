#pragma once
// The command-line face of GroupOptions, shared by every binary that runs a rank
// (shoal-worker, the parallel benchmark). Flags are read first; the operator's env vars
// (ApplyGroupEnv) override them.
#include <CLI/CLI.hpp>

#include "worker/parallel/group_member.h"

namespace shoal::worker {

struct GroupFlags {
  std::string tensor_collectives = "auto";
  int64_t join_timeout_s = 120;
  int64_t collective_timeout_ms = 30000;
  int64_t probe_interval_ms = 2000;
};

inline void AddGroupFlags(CLI::App& app, GroupOptions* o, GroupFlags* f) {
  app.add_option("--tensor", o->tensor, "tensor parallel ranks of this group (leader)")->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--pipeline", o->pipeline, "pipeline stages of this group (leader)")->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--pipeline-layers", o->pipeline_layers,
                 "layers per pipeline stage, e.g. 16,14 (leader); default: balanced")->delimiter(',');
  app.add_option("--micro-batches", o->micro_batches, "micro-batches per step in the pipeline; 0 = one per stage")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  app.add_option("--min-micro-batch-tokens", o->min_micro_batch_tokens,
                 "a step is cut into at most tokens / this many micro-batches (small decode steps run whole)")
      ->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--rank", o->rank, std::string("this rank in its group; 0 = leader (env ") + kEnvPodRank + ")")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  app.add_option("--world-size", o->world_size,
                 std::string("ranks in the group; 0 = tensor x pipeline (env ") + kEnvPodsPerGroup + ")")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  app.add_option("--leader-addr", o->leader_address,
                 std::string("host:port of the leader's group rendezvous (env ") + kEnvLeaderAddr + ")");
  app.add_option("--group-host", o->host, "address this rank's collectives listen on, reachable by its peers")
      ->capture_default_str();
  app.add_option("--tensor-collectives", f->tensor_collectives,
                 "auto: NCCL when every tensor rank of a stage has a GPU of its own and loads libnccl, else Gloo; "
                 "gloo: always Gloo")
      ->capture_default_str()->check(CLI::IsMember({"auto", "gloo"}));
  app.add_option("--join-timeout", f->join_timeout_s, "seconds to wait for every rank of the group")
      ->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--collective-timeout-ms", f->collective_timeout_ms,
                 "bound on one collective inside a step; past it the group fails")->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--probe-interval-ms", f->probe_interval_ms,
                 "the leader all-reduces across the group when idle this long (health)")->capture_default_str()
      ->check(CLI::PositiveNumber);
}

inline void ApplyGroupFlags(const GroupFlags& f, GroupOptions* o) {
  o->allow_nccl = f.tensor_collectives != "gloo";
  o->join_timeout = std::chrono::seconds(f.join_timeout_s);
  o->collective_timeout = std::chrono::milliseconds(f.collective_timeout_ms);
  o->probe_interval = std::chrono::milliseconds(f.probe_interval_ms);
}

}  // namespace shoal::worker
