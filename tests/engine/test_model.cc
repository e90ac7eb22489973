#include "tests/engine/test_model.h"

#include <fmt/format.h>

#include <algorithm>

#include "worker/common/splitmix.h"

namespace shoal::worker::testing {

TestModel::TestModel(TestModelOptions options) : options_(std::move(options)) {
  config_.arch_name = "test";
  config_.vocab_size = kTestVocab;
  config_.hidden_size = 8;
  config_.num_layers = 1;
  config_.num_heads = 1;
  config_.num_kv_heads = 1;
  config_.head_dim = 8;
  config_.max_position_embeddings = options_.max_position_embeddings;
  config_.eos_token_ids = {kTestEos};
  shard_.end_layer = 1;
}

size_t TestModel::KvBytesPerBlock(int block_size) const {
  return static_cast<size_t>(block_size) * sizeof(Slot);
}

absl::Status TestModel::AllocateKvCache(int64_t num_blocks, int block_size) {
  block_size_ = block_size;
  slots_.assign(static_cast<size_t>(num_blocks * block_size), Slot{});
  return absl::OkStatus();
}

uint64_t TestModel::ContextHash(const int32_t* tokens, int64_t n) const {
  uint64_t h = 0x7465'7374ull;
  for (int64_t p = 0; p < n; ++p) {
    h = ::shoal::SplitMix64(h ^ (static_cast<uint64_t>(tokens[p]) | (static_cast<uint64_t>(p) << 32)));
  }
  return h;
}

void TestModel::LogitsFromHash(uint64_t h, int64_t context_len, float* row) const {
  std::fill(row, row + kTestVocab, -30.0f);
  for (unsigned char c : options_.alphabet) {
    uint64_t r = ::shoal::SplitMix64(h ^ (0x1000ull + c));
    row[c] = static_cast<float>(r >> 40) * 0x1.0p-24f * 4.0f;  // [0, 4)
  }
  if (options_.eos_at_num_tokens > 0 && context_len >= options_.eos_at_num_tokens) {
    row[kTestEos] = 10.0f;
  }
}

absl::Status TestModel::Forward(const ForwardBatch& batch, std::vector<float>* logits) {
  {
    std::unique_lock lock(mu_);
    if (pause_requested_) {
      paused_ = true;
      cv_.notify_all();
      cv_.wait(lock, [&] { return !pause_requested_; });
      paused_ = false;
    }
  }
  ++num_forward_calls;
  max_batch_seqs = std::max<int64_t>(max_batch_seqs, static_cast<int64_t>(batch.seqs.size()));
  if (block_size_ == 0) return absl::FailedPreconditionError("KV cache not allocated");
  const int64_t num_blocks = static_cast<int64_t>(slots_.size()) / block_size_;
  // Writes first, as a layer of a real model writes the K/V of every sequence in the batch.
  for (const SequenceChunk& s : batch.seqs) {
    const int64_t end = s.start_pos + static_cast<int64_t>(s.tokens.size());
    if (static_cast<int64_t>(s.block_table.size()) * block_size_ < end) {
      return absl::InvalidArgumentError(fmt::format(
          "block table of {} blocks cannot hold {} positions", s.block_table.size(), end));
    }
    for (size_t i = 0; i < s.tokens.size(); ++i) {
      if (s.tokens[i] == options_.poison_token) {
        return absl::InternalError(fmt::format("test model: poisoned token {}", s.tokens[i]));
      }
      const int64_t p = s.start_pos + static_cast<int64_t>(i);
      const int32_t block = s.block_table[p / block_size_];
      if (block < 0 || block >= num_blocks) {
        return absl::InvalidArgumentError(fmt::format("block id {} out of range", block));
      }
      slots_[block * block_size_ + p % block_size_] = {s.tokens[i], static_cast<int32_t>(p)};
    }
    num_tokens_computed += static_cast<int64_t>(s.tokens.size());
  }
  logits->clear();
  for (const SequenceChunk& s : batch.seqs) {
    if (!s.want_logits) continue;
    const int64_t end = s.start_pos + static_cast<int64_t>(s.tokens.size());
    std::vector<int32_t> context(end);
    for (int64_t p = 0; p < end; ++p) {
      const int32_t block = s.block_table[p / block_size_];
      const Slot& slot = slots_[block * block_size_ + p % block_size_];
      if (slot.pos != p) {
        return absl::InternalError(fmt::format(
            "block {} slot {} holds position {}, expected {}", block, p % block_size_, slot.pos, p));
      }
      context[p] = slot.token;
    }
    size_t off = logits->size();
    logits->resize(off + kTestVocab);
    LogitsFromHash(ContextHash(context.data(), end), end, logits->data() + off);
  }
  return absl::OkStatus();
}

std::vector<float> TestModel::ReferenceLogits(const std::vector<int32_t>& context) const {
  std::vector<float> row(kTestVocab);
  LogitsFromHash(ContextHash(context.data(), static_cast<int64_t>(context.size())),
                 static_cast<int64_t>(context.size()), row.data());
  return row;
}

std::vector<int32_t> TestModel::ReferenceGreedy(std::vector<int32_t> prompt, int n) const {
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) {
    std::vector<float> row = ReferenceLogits(prompt);
    int32_t next = static_cast<int32_t>(std::max_element(row.begin(), row.end()) - row.begin());
    out.push_back(next);
    prompt.push_back(next);
    if (next == kTestEos) break;
  }
  return out;
}

void TestModel::Pause() {
  std::lock_guard lock(mu_);
  pause_requested_ = true;
}

void TestModel::WaitUntilPaused() {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return paused_; });
}

void TestModel::Resume() {
  std::lock_guard lock(mu_);
  pause_requested_ = false;
  cv_.notify_all();
}

std::vector<int32_t> ByteTokenizer::Encode(std::string_view text, bool) const {
  std::vector<int32_t> ids;
  for (unsigned char c : text) ids.push_back(c);
  return ids;
}

std::string ByteTokenizer::Decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string out;
  for (int32_t id : ids) {
    if (IsSpecial(id) && skip_special) continue;
    out += TokenBytes(id);
  }
  return out;
}

std::string ByteTokenizer::TokenBytes(int32_t id) const {
  if (id >= 0 && id < 256) return std::string(1, static_cast<char>(id));
  return id == kTestEos ? "<eos>" : "<unused>";
}

std::optional<int32_t> ByteTokenizer::TokenToId(std::string_view token) const {
  if (token.size() == 1) return static_cast<unsigned char>(token[0]);
  if (token == "<eos>") return kTestEos;
  return std::nullopt;
}

}  // namespace shoal::worker::testing
