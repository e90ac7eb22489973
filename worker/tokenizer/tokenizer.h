#pragma once
// Byte-level BPE, loaded from a Hugging Face tokenizer.json or from a GGUF vocab, that
// gives the same ids as HF `tokenizers` both ways.
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/model/loaded_model.h"

namespace shoal::worker {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Errors name the file and what is wrong in it.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromTokenizerJsonFile(const std::string& path);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromTokenizerJson(std::string_view json,
                                                                      std::string_view source_name);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromGguf(const GgufVocab& vocab);
  // Picks whichever `model` describes.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> ForModel(const LoadedModel& model);

  // Text -> ids. Special/added tokens written in the text become their ids when
  // parse_special (chat templates rely on it); no BOS is added here. `text` must be valid
  // UTF-8 (the server rejects anything else before it gets here).
  virtual std::vector<int32_t> Encode(std::string_view text, bool parse_special = true) const = 0;
  // Ids -> text; byte sequences that are not valid UTF-8 decode to U+FFFD as in HF.
  virtual std::string Decode(std::span<const int32_t> ids, bool skip_special = false) const = 0;
  // The raw bytes a token stands for (after byte-level decoding).
  virtual std::string TokenBytes(int32_t id) const = 0;
  virtual std::optional<int32_t> TokenToId(std::string_view token) const = 0;
  virtual bool IsSpecial(int32_t id) const = 0;
  virtual int32_t vocab_size() const = 0;

  virtual std::optional<int32_t> bos_id() const = 0;
  virtual bool add_bos() const = 0;  // prompts get BOS prepended
  virtual std::vector<int32_t> eos_ids() const = 0;
};

// Turns a stream of ids into text pieces; holds back bytes until they form whole UTF-8
// characters, so no piece ever ends in a broken sequence.
class StreamingDetokenizer {
 public:
  explicit StreamingDetokenizer(const Tokenizer& tokenizer, bool skip_special = true);
  std::string Push(int32_t id);
  // What is left at end of stream (incomplete bytes become U+FFFD).
  std::string Flush();

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_;
  std::string pending_;
};

}  // namespace shoal::worker
