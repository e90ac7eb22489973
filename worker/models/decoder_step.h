#pragma once
// What every decoder-only architecture does around its layers in one step, whatever its
// attention or MLP: check the shard and the batch, lay the sequences' new tokens end to
// end as one matrix, and project the sampled rows onto the (vocabulary-parallel) LM head.
// llama.cc and deepseek.cc differ only in their layers.
#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "worker/kernels/cpu/attention.h"
#include "worker/model/loaded_model.h"
#include "worker/models/causal_lm.h"

namespace shoal::worker {

class ColumnParallelLinear;
class Communicator;
class ThreadPool;

// The checks every CreateX does before loading: a pool and weights, a layer range inside
// the model (end_layer < 0 meaning "to the last", filled in), a tensor rank in range with
// a matching communicator, and a KV cache dtype the CPU kernels keep.
absl::Status CheckModelArgs(const LoadedModel& model, ThreadPool* pool, const CausalLMOptions& options,
                            ShardSpec* shard);

// The step's new tokens end to end: rows [first_row, first_row + n) of every per-token
// matrix are one sequence's, at positions start_pos... Kept by a model across steps so
// its vectors keep their capacity.
struct StepRows {
  std::vector<cpu::AttentionSequence> seqs;
  std::vector<int32_t> tokens;
  std::vector<int64_t> positions;
  std::vector<int64_t> logit_rows;  // rows whose logits the caller samples from
  int64_t max_pos = 0;              // one past the last position in the step

  // Fails, naming the sequence, on an empty chunk, a block table too short for its
  // positions or pointing outside the cache, or a token outside the vocabulary.
  absl::Status Reset(const ForwardBatch& batch, int64_t num_blocks, int block_size, int64_t vocab_size);
  int64_t num_tokens() const { return static_cast<int64_t>(tokens.size()); }
};

// The error for Forward on a model that holds only some layers (a pipeline stage).
absl::Status WholeModelOnly(const ShardSpec& shard, int64_t num_layers);

// A later pipeline stage's input must be [num_tokens, hidden] floats.
absl::Status CheckHiddenIn(const ShardSpec& shard, std::span<const float> hidden_in, int64_t num_tokens,
                           int64_t hidden);

// Whole logit rows from the tensor ranks' vocabulary slices: `local` [rows, local_vocab]
// of every rank (host memory) is all-gathered into *gathered and interleaved into
// *logits [rows, tp.size() * local_vocab], rank r's slice at columns r * local_vocab.
absl::Status GatherVocabSlices(Communicator& tp, std::span<const float> local, int64_t rows,
                               std::vector<float>* gathered, std::vector<float>* logits);

// logits [rows, vocab] = xn [rows, hidden] · headᵀ. With tensor ranks each holds a slice of
// the vocabulary: its local logits are all-gathered and interleaved back into whole rows.
// `local` and `gathered` are scratch kept by the caller.
absl::Status ProjectLogits(ThreadPool* pool, Communicator* tp, int tp_size, const ColumnParallelLinear& head,
                           const float* xn, int64_t rows, int64_t hidden, std::vector<float>* local,
                           std::vector<float>* gathered, std::vector<float>* logits);

}  // namespace shoal::worker
