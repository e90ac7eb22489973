#pragma once
// Pre-tokenization: cutting text into the pieces BPE merges within (HF `pre_tokenizer`).
// A pipeline of steps, each refining the pieces the previous one produced:
//   Split     — a regex (or literal) with a delimiter behaviour, optionally inverted;
//   Digits    — a Split on \p{N}, each digit alone (individual) or runs together;
//   ByteLevel — optional " " prefix per piece, optional GPT-2 regex split; it also marks
//               the pipeline byte-level, so pieces reach BPE spelled in the byte alphabet.
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/tokenizer/regex.h"

namespace shoal::worker {

// How a Split step treats the matched delimiters (HF SplitDelimiterBehavior).
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// The pattern GPT-2 (and HF's ByteLevel use_regex=true) splits with.
inline constexpr std::string_view kGpt2SplitPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class PreTokenizer {
 public:
  PreTokenizer() = default;

  absl::Status AddSplit(std::string_view regex, SplitBehavior behavior, bool invert);
  absl::Status AddDigits(bool individual_digits);
  absl::Status AddByteLevel(bool add_prefix_space, bool use_regex);

  // Cuts `text` into pieces (raw bytes, not yet byte-level spelled); empty pieces dropped.
  void Split(std::string_view text, std::vector<std::string>* pieces) const;
  bool byte_level() const { return byte_level_; }
  bool empty() const { return steps_.empty(); }

 private:
  struct Step {
    std::shared_ptr<const OnigPattern> pattern;  // null: a ByteLevel step without regex
    SplitBehavior behavior = SplitBehavior::kIsolated;
    bool invert = false;
    bool prefix_space = false;  // ByteLevel add_prefix_space
  };
  static void ApplyStep(const Step& step, std::string_view piece, std::vector<std::string>* out);

  std::vector<Step> steps_;
  bool byte_level_ = false;
};

// Escapes a literal so Oniguruma matches it as-is (HF Split with a {"String": ...} pattern).
std::string EscapeRegexLiteral(std::string_view literal);

}  // namespace shoal::worker
