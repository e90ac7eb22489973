#include "worker/models/decoder_step.h"

#include <fmt/format.h>

#include <algorithm>

#include "worker/common/status_macros.h"
#include "worker/kernels/cpu/matmul.h"
#include "worker/models/linear.h"
#include "worker/parallel/communicator.h"

namespace shoal::worker {

absl::Status CheckModelArgs(const LoadedModel& model, ThreadPool* pool, const CausalLMOptions& options,
                            ShardSpec* shard) {
  const ModelConfig& c = model.config;
  if (pool == nullptr) return absl::InvalidArgumentError("CreateCausalLM: thread pool is null");
  if (model.weights == nullptr) return absl::InvalidArgumentError(fmt::format("{}: no weights loaded", model.path));
  if (shard->end_layer < 0) shard->end_layer = c.num_layers;
  if (shard->first_layer < 0 || shard->first_layer >= shard->end_layer || shard->end_layer > c.num_layers) {
    return absl::InvalidArgumentError(fmt::format("{}: layer range [{}, {}) is not inside the model's {} layers",
                                                  model.path, shard->first_layer, shard->end_layer, c.num_layers));
  }
  if (shard->tp_size < 1 || shard->tp_rank < 0 || shard->tp_rank >= shard->tp_size) {
    return absl::InvalidArgumentError(
        fmt::format("tensor parallel rank {} of {} is out of range", shard->tp_rank, shard->tp_size));
  }
  if (shard->tp_size != 1 && (options.tensor_group == nullptr || options.tensor_group->size() != shard->tp_size ||
                              options.tensor_group->rank() != shard->tp_rank)) {
    return absl::InvalidArgumentError(fmt::format(
        "{}: tensor parallel rank {} of {} needs CausalLMOptions.tensor_group, a communicator over its {} tensor ranks",
        model.path, shard->tp_rank, shard->tp_size, shard->tp_size));
  }
  if (options.kv_cache_dtype != DType::kF16 && options.kv_cache_dtype != DType::kF32) {
    return absl::InvalidArgumentError(fmt::format("{}: KV cache dtype {}: the CPU model keeps its KV cache in F16 or F32",
                                                  model.path, DTypeName(options.kv_cache_dtype)));
  }
  return absl::OkStatus();
}

absl::Status StepRows::Reset(const ForwardBatch& batch, int64_t num_blocks, int block_size, int64_t vocab_size) {
  if (block_size == 0) return absl::FailedPreconditionError("Forward before AllocateKvCache");
  seqs.clear();
  tokens.clear();
  positions.clear();
  logit_rows.clear();
  max_pos = 0;
  for (size_t s = 0; s < batch.seqs.size(); ++s) {
    const SequenceChunk& c = batch.seqs[s];
    if (c.tokens.empty()) return absl::InvalidArgumentError(fmt::format("batch sequence {}: no tokens", s));
    const int64_t n = static_cast<int64_t>(c.tokens.size());
    const int64_t end = c.start_pos + n;
    const int64_t blocks_needed = (end + block_size - 1) / block_size;
    if (c.start_pos < 0 || static_cast<int64_t>(c.block_table.size()) < blocks_needed) {
      return absl::InvalidArgumentError(
          fmt::format("batch sequence {}: positions [{}, {}) need {} blocks of {}, the block table has {}", s,
                      c.start_pos, end, blocks_needed, block_size, c.block_table.size()));
    }
    for (int64_t b = 0; b < blocks_needed; ++b) {
      if (c.block_table[b] < 0 || c.block_table[b] >= num_blocks) {
        return absl::InvalidArgumentError(fmt::format("batch sequence {}: block table entry {} is {}, outside [0, {})",
                                                      s, b, c.block_table[b], num_blocks));
      }
    }
    for (int64_t t = 0; t < n; ++t) {
      if (c.tokens[t] < 0 || c.tokens[t] >= vocab_size) {
        return absl::InvalidArgumentError(fmt::format("batch sequence {}: token {} is id {}, outside the vocabulary of {}",
                                                      s, t, c.tokens[t], vocab_size));
      }
    }
    seqs.push_back({num_tokens(), n, c.start_pos, c.block_table});
    tokens.insert(tokens.end(), c.tokens.begin(), c.tokens.end());
    for (int64_t t = 0; t < n; ++t) positions.push_back(c.start_pos + t);
    max_pos = std::max(max_pos, end);
    if (c.want_logits) logit_rows.push_back(num_tokens() - 1);
  }
  return absl::OkStatus();
}

absl::Status WholeModelOnly(const ShardSpec& shard, int64_t num_layers) {
  return absl::FailedPreconditionError(fmt::format(
      "layers [{}, {}) of {}: a pipeline stage runs through ForwardStage, with the hidden states of its neighbours",
      shard.first_layer, shard.end_layer, num_layers));
}

absl::Status CheckHiddenIn(const ShardSpec& shard, std::span<const float> hidden_in, int64_t num_tokens,
                           int64_t hidden) {
  if (static_cast<int64_t>(hidden_in.size()) == num_tokens * hidden) return absl::OkStatus();
  return absl::InvalidArgumentError(
      fmt::format("layers [{}, {}): hidden states in have {} floats, the batch's {} tokens need {} x {}",
                  shard.first_layer, shard.end_layer, hidden_in.size(), num_tokens, num_tokens, hidden));
}

absl::Status ProjectLogits(ThreadPool* pool, Communicator* tp, int tp_size, const ColumnParallelLinear& head,
                           const float* xn, int64_t rows, int64_t hidden, std::vector<float>* local,
                           std::vector<float>* gathered, std::vector<float>* logits) {
  const int64_t local_vocab = head.out_features(), vocab = local_vocab * tp_size;
  logits->resize(rows * vocab);
  if (rows == 0) return absl::OkStatus();
  if (tp_size == 1) {
    const cpu::MatmulTarget target = head.Target(logits->data(), vocab);
    cpu::Matmul(pool, xn, rows, hidden, {&target, 1});
    return absl::OkStatus();
  }
  local->resize(rows * local_vocab);
  const cpu::MatmulTarget target = head.Target(local->data(), local_vocab);
  cpu::Matmul(pool, xn, rows, hidden, {&target, 1});
  return GatherVocabSlices(*tp, *local, rows, gathered, logits);
}

absl::Status GatherVocabSlices(Communicator& tp, std::span<const float> local, int64_t rows,
                               std::vector<float>* gathered, std::vector<float>* logits) {
  const int tp_size = tp.size();
  const int64_t local_vocab = rows == 0 ? 0 : static_cast<int64_t>(local.size()) / rows, vocab = local_vocab * tp_size;
  logits->resize(rows * vocab);
  gathered->resize(rows * vocab);
  RETURN_IF_ERROR(tp.AllGather(local, *gathered));
  // gathered: [rank][row][local_vocab] -> logits: [row][rank * local_vocab + j]
  for (int r = 0; r < tp_size; ++r) {
    for (int64_t row = 0; row < rows; ++row) {
      std::copy_n(&(*gathered)[(r * rows + row) * local_vocab], local_vocab,
                  logits->data() + row * vocab + r * local_vocab);
    }
  }
  return absl::OkStatus();
}

}  // namespace shoal::worker
