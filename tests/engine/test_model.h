#pragma once
// A small deterministic CausalLM and a byte tokenizer for testing the engine's logic
// without a real model. The model really keeps K/V in a paged cache: every token it is
// given is written to the slot its block table names, and the logits for a sequence are a
// hash of the tokens it reads back through the block table for every position. A wrong
// block table, a block shared that should not be, or a cached block overwritten changes
// the output (or fails Forward when a slot holds the wrong position). ReferenceNext()
// computes the same function straight from a token list, the oracle the tests compare to.
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "worker/models/causal_lm.h"
#include "worker/tokenizer/tokenizer.h"

namespace shoal::worker::testing {

inline constexpr int32_t kTestEos = 256;
inline constexpr int64_t kTestVocab = 260;  // 256 bytes, <eos>, 3 unused specials

struct TestModelOptions {
  int64_t max_position_embeddings = 1024;
  // Only these bytes get real logits, so generated text is printable ASCII.
  std::string alphabet = "abcdefghijklmnopqrstuvwxyz ";
  int64_t eos_at_num_tokens = 0;  // >0: EOS is the argmax once the context is this long
  int32_t poison_token = -1;      // Forward fails for a batch holding this token
};

class TestModel final : public CausalLM {
 public:
  explicit TestModel(TestModelOptions options = {});

  const ModelConfig& config() const override { return config_; }
  const ShardSpec& shard() const override { return shard_; }
  size_t KvBytesPerBlock(int block_size) const override;
  absl::Status AllocateKvCache(int64_t num_blocks, int block_size) override;
  absl::Status Forward(const ForwardBatch& batch, std::vector<float>* logits) override;
  size_t WeightBytes() const override { return 0; }

  // The logits the model gives after `context` (same function Forward applies to what it
  // reads from the cache).
  std::vector<float> ReferenceLogits(const std::vector<int32_t>& context) const;
  // Greedy continuation of `prompt` by `n` tokens computed without any cache; stops after
  // EOS.
  std::vector<int32_t> ReferenceGreedy(std::vector<int32_t> prompt, int n) const;

  // Makes the next Forward wait until Resume(); WaitUntilPaused() returns once it does.
  void Pause();
  void WaitUntilPaused();
  void Resume();

  std::atomic<int64_t> num_forward_calls{0};
  std::atomic<int64_t> num_tokens_computed{0};
  std::atomic<int64_t> max_batch_seqs{0};

 private:
  struct Slot {
    int32_t token = -1;
    int32_t pos = -1;
  };
  uint64_t ContextHash(const int32_t* tokens, int64_t n) const;
  void LogitsFromHash(uint64_t h, int64_t context_len, float* row) const;

  TestModelOptions options_;
  ModelConfig config_;
  ShardSpec shard_;
  int block_size_ = 0;
  std::vector<Slot> slots_;

  std::mutex mu_;
  std::condition_variable cv_;
  bool pause_requested_ = false;
  bool paused_ = false;
};

// Token i < 256 is byte i; 256 is <eos>; 257..259 are unused specials.
class ByteTokenizer final : public Tokenizer {
 public:
  std::vector<int32_t> Encode(std::string_view text, bool parse_special = true) const override;
  std::string Decode(std::span<const int32_t> ids, bool skip_special = false) const override;
  std::string TokenBytes(int32_t id) const override;
  std::optional<int32_t> TokenToId(std::string_view token) const override;
  bool IsSpecial(int32_t id) const override { return id >= 256; }
  int32_t vocab_size() const override { return static_cast<int32_t>(kTestVocab); }
  std::optional<int32_t> bos_id() const override { return std::nullopt; }
  bool add_bos() const override { return false; }
  std::vector<int32_t> eos_ids() const override { return {kTestEos}; }
};

}  // namespace shoal::worker::testing
