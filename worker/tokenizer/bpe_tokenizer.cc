#include "worker/tokenizer/bpe_tokenizer.h"

#include <fmt/format.h>

#include "worker/common/status_macros.h"
#include "worker/tokenizer/byte_level.h"
#include "worker/tokenizer/utf8.h"

namespace shoal::worker {

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::Create(BpeTokenizerSpec spec) {
  ASSIGN_OR_RETURN(BpeModel model, BpeModel::Create(std::move(spec.vocab), spec.merges,
                                                    spec.model_options,
                                                    std::move(spec.id_to_token)));
  int32_t vocab_size = model.id_limit();
  for (const AddedToken& t : spec.added_tokens) {
    if (t.id < 0) {
      return absl::InvalidArgumentError(
          fmt::format("added token '{}' has negative id {}", t.content, t.id));
    }
    if (t.id > vocab_size + 65536) {
      return absl::InvalidArgumentError(
          fmt::format("added token '{}' has id {} far past the vocabulary", t.content, t.id));
    }
    vocab_size = std::max(vocab_size, t.id + 1);
  }
  AddedVocabulary added(std::move(spec.added_tokens), spec.normalizer);
  std::unique_ptr<BpeTokenizer> tok(new BpeTokenizer(std::move(model), std::move(added)));
  tok->normalizer_ = std::move(spec.normalizer);
  tok->pre_tokenizer_ = std::move(spec.pre_tokenizer);
  tok->byte_level_decoder_ = spec.byte_level_decoder;
  tok->vocab_size_ = vocab_size;
  // Ids named by side files (generation_config.json) must exist in this vocabulary.
  const auto valid = [&](int32_t id) { return id >= 0 && id < vocab_size; };
  if (spec.bos_id && valid(*spec.bos_id)) tok->bos_id_ = spec.bos_id;
  tok->add_bos_ = spec.add_bos && tok->bos_id_.has_value();
  for (int32_t id : spec.eos_ids) {
    if (valid(id)) tok->eos_ids_.push_back(id);
  }
  return tok;
}

void BpeTokenizer::EncodePlain(std::string_view text, std::vector<int32_t>* ids) const {
  std::vector<std::string> pieces;
  pre_tokenizer_.Split(text, &pieces);
  const ByteLevelAlphabet& alphabet = ByteLevelAlphabet::Get();
  for (const std::string& piece : pieces) {
    if (pre_tokenizer_.byte_level()) {
      model_.Tokenize(alphabet.Encode(piece), ids);
    } else {
      model_.Tokenize(piece, ids);
    }
  }
}

// Idea: (1) cut out the added tokens that match the raw text, (2) normalize each plain
// remainder and cut out the added tokens that match normalized text, (3) pre-tokenize and
// BPE-merge what is left.
std::vector<int32_t> BpeTokenizer::Encode(std::string_view text, bool parse_special) const {
  // Callers promise UTF-8; should one break the promise, the regex engine still only ever
  // sees well-formed text (ill-formed bytes become U+FFFD).
  std::string repaired;
  if (!IsValidUtf8(text)) {
    repaired = LossyUtf8(text);
    text = repaired;
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  for (const auto& raw : added_.Cut(text, /*normalized_pass=*/false, parse_special)) {
    if (raw.id >= 0) {
      ids.push_back(raw.id);
      continue;
    }
    const std::string_view segment = text.substr(raw.begin, raw.end - raw.begin);
    if (normalizer_.is_identity() && !added_.has_normalized_tokens()) {
      EncodePlain(segment, &ids);
      continue;
    }
    const std::string normalized = normalizer_.Apply(segment);
    for (const auto& cut : added_.Cut(normalized, /*normalized_pass=*/true, parse_special)) {
      if (cut.id >= 0) {
        ids.push_back(cut.id);
      } else {
        EncodePlain(std::string_view(normalized).substr(cut.begin, cut.end - cut.begin), &ids);
      }
    }
  }
  return ids;
}

const std::string& BpeTokenizer::TokenString(int32_t id) const {
  if (const AddedToken* t = added_.FindById(id)) return t->content;
  return model_.IdToToken(id);
}

std::string BpeTokenizer::TokenBytes(int32_t id) const {
  const std::string& token = TokenString(id);
  if (!byte_level_decoder_) return token;
  // HF's ByteLevel decoder: a token spelled wholly in the byte alphabet stands for those
  // bytes; any other token (an added "<|im_start|>" with a space, say) for its own UTF-8.
  std::optional<std::string> bytes = ByteLevelAlphabet::Get().Decode(token);
  return bytes ? *bytes : token;
}

std::string BpeTokenizer::Decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string bytes;
  bool first = true;
  for (int32_t id : ids) {
    if (skip_special && IsSpecial(id)) continue;
    if (TokenString(id).empty()) continue;  // unknown ids are dropped, as HF does
    if (!byte_level_decoder_ && !first) bytes.push_back(' ');
    bytes += TokenBytes(id);
    first = false;
  }
  return LossyUtf8(bytes);
}

std::optional<int32_t> BpeTokenizer::TokenToId(std::string_view token) const {
  if (auto id = added_.FindByContent(token)) return id;
  return model_.TokenToId(token);
}

bool BpeTokenizer::IsSpecial(int32_t id) const {
  const AddedToken* t = added_.FindById(id);
  return t != nullptr && t->special;
}

}  // namespace shoal::worker
