#pragma once
// The Tokenizer implementation: added-token cutting, normalization, pre-tokenization,
// BPE, and the ByteLevel decoder, wired the way HF tokenizers runs them.
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "worker/tokenizer/added_vocabulary.h"
#include "worker/tokenizer/bpe_model.h"
#include "worker/tokenizer/normalizer.h"
#include "worker/tokenizer/pre_tokenizer.h"
#include "worker/tokenizer/tokenizer.h"

namespace shoal::worker {

// Everything a byte-level BPE tokenizer is made of, whichever file it came from.
struct BpeTokenizerSpec {
  TokenIdMap vocab;
  std::vector<std::string> id_to_token;  // optional: spells ids when vocab has duplicates
  std::vector<std::pair<std::string, std::string>> merges;
  BpeModelOptions model_options;
  std::vector<AddedToken> added_tokens;
  Normalizer normalizer;
  PreTokenizer pre_tokenizer;
  bool byte_level_decoder = true;  // false: no decoder, tokens joined with " " as in HF
  std::optional<int32_t> bos_id;
  bool add_bos = false;
  std::vector<int32_t> eos_ids;
};

class BpeTokenizer final : public Tokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> Create(BpeTokenizerSpec spec);

  std::vector<int32_t> Encode(std::string_view text, bool parse_special = true) const override;
  std::string Decode(std::span<const int32_t> ids, bool skip_special = false) const override;
  std::string TokenBytes(int32_t id) const override;
  std::optional<int32_t> TokenToId(std::string_view token) const override;
  bool IsSpecial(int32_t id) const override;
  int32_t vocab_size() const override { return vocab_size_; }
  std::optional<int32_t> bos_id() const override { return bos_id_; }
  bool add_bos() const override { return add_bos_; }
  std::vector<int32_t> eos_ids() const override { return eos_ids_; }

 private:
  BpeTokenizer(BpeModel model, AddedVocabulary added) : model_(std::move(model)), added_(std::move(added)) {}
  // Normalized text without added tokens -> ids.
  void EncodePlain(std::string_view text, std::vector<int32_t>* ids) const;
  // The string HF's decoder sees for `id` ("" when unknown).
  const std::string& TokenString(int32_t id) const;

  BpeModel model_;
  AddedVocabulary added_;
  Normalizer normalizer_;
  PreTokenizer pre_tokenizer_;
  bool byte_level_decoder_ = true;
  int32_t vocab_size_ = 0;
  std::optional<int32_t> bos_id_;
  bool add_bos_ = false;
  std::vector<int32_t> eos_ids_;
};

}  // namespace shoal::worker
