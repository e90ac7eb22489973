#pragma once
// Added tokens (HF `added_tokens`): strings matched whole in the text before any
// pre-tokenization — chat markers like <|im_start|> and user-added words. Matching follows
// HF: leftmost-longest, non-overlapping; tokens with normalized=false are matched on the
// raw text first, the normalized ones afterwards on the normalized remainder.
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "worker/tokenizer/bpe_model.h"
#include "worker/tokenizer/normalizer.h"

namespace shoal::worker {

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = false;
  bool lstrip = false;       // the match swallows whitespace on its left
  bool rstrip = false;       // ... and on its right
  bool normalized = true;    // matched against normalized text
  bool single_word = false;  // only when not inside a word
};

class AddedVocabulary {
 public:
  AddedVocabulary() = default;
  AddedVocabulary(std::vector<AddedToken> tokens, const Normalizer& normalizer);

  // A cut of the text: [begin, end) is either an added token (id >= 0) or plain text.
  struct Segment {
    size_t begin, end;
    int32_t id;  // -1: plain text
  };
  // Cuts `text` with the tokens of one pass (normalized or not). Special tokens are found
  // but left as text when !parse_special, as HF's encode_special_tokens does.
  std::vector<Segment> Cut(std::string_view text, bool normalized_pass, bool parse_special) const;

  const AddedToken* FindById(int32_t id) const;
  std::optional<int32_t> FindByContent(std::string_view content) const;
  bool has_normalized_tokens() const { return has_normalized_; }
  const std::vector<AddedToken>& tokens() const { return tokens_; }

 private:
  std::vector<AddedToken> tokens_;
  std::vector<std::string> match_text_;  // content, normalized for normalized tokens
  // Per pass, per first byte: token indexes, longest content first.
  std::array<std::array<std::vector<int32_t>, 256>, 2> by_first_byte_;
  std::unordered_map<int32_t, size_t> index_by_id_;
  TokenIdMap id_by_content_;
  bool has_normalized_ = false;
};

}  // namespace shoal::worker
