#pragma once
// The BPE model: a vocabulary and a ranked list of merges. A word (one pre-tokenized
// piece, already spelled in the byte alphabet for byte-level tokenizers) starts as one
// symbol per character; the adjacent pair with the lowest merge rank is merged, leftmost
// first, until no ranked pair is left — the same order HF tokenizers applies.
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace shoal::worker {

struct TransparentStringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using TokenIdMap =
    std::unordered_map<std::string, int32_t, TransparentStringHash, std::equal_to<>>;

struct BpeModelOptions {
  std::optional<std::string> unk_token;
  bool fuse_unk = false;
  bool byte_fallback = false;  // unknown characters become <0xXX> byte tokens
  bool ignore_merges = false;  // a word that is itself in the vocabulary is taken whole
};

class BpeModel {
 public:
  // `merges` are pairs of token strings, highest priority first. Errors name the merge
  // index when a side, or the merged token, is not in the vocabulary. `id_to_token`, when
  // given, spells every id (a GGUF vocabulary may hold the same string twice).
  static absl::StatusOr<BpeModel> Create(
      TokenIdMap vocab, const std::vector<std::pair<std::string, std::string>>& merges,
      BpeModelOptions options, std::vector<std::string> id_to_token = {});
  BpeModel(BpeModel&& other) noexcept;
  BpeModel& operator=(BpeModel&& other) noexcept;

  // Appends the ids of `word` to `ids`. Results are cached per word (bounded).
  void Tokenize(std::string_view word, std::vector<int32_t>* ids) const;

  std::optional<int32_t> TokenToId(std::string_view token) const;
  // "" for an id the model does not have.
  const std::string& IdToToken(int32_t id) const;
  // One past the largest id the model holds.
  int32_t id_limit() const { return static_cast<int32_t>(id_to_token_.size()); }
  size_t num_merges() const { return merges_.size(); }

 private:
  BpeModel() = default;
  struct Merge {
    int32_t rank;
    int32_t new_id;
  };
  static uint64_t PairKey(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  void TokenizeUncached(std::string_view word, std::vector<int32_t>* ids) const;

  TokenIdMap vocab_;
  std::vector<std::string> id_to_token_;
  std::unordered_map<uint64_t, Merge> merges_;
  BpeModelOptions options_;
  std::optional<int32_t> unk_id_;

  static constexpr size_t kMaxCachedWords = 1 << 16;
  static constexpr size_t kMaxCachedWordBytes = 256;
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>, TransparentStringHash,
                             std::equal_to<>>
      cache_;
};

}  // namespace shoal::worker
