#pragma once
// A compiled Oniguruma pattern. HF tokenizers compiles its pre-tokenizer patterns with
// Oniguruma too, so \p{L}, \p{N}, (?i:...) and look-ahead like \s+(?!\S) mean exactly the
// same here as there.
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace shoal::worker {

class OnigPattern {
 public:
  // INVALID_ARGUMENT with Oniguruma's message when `pattern` does not compile.
  static absl::StatusOr<std::unique_ptr<OnigPattern>> Compile(std::string_view pattern);
  ~OnigPattern();
  OnigPattern(const OnigPattern&) = delete;
  OnigPattern& operator=(const OnigPattern&) = delete;

  // Non-overlapping matches, left to right, as [begin, end) byte offsets into `text`.
  // An empty match advances the search by one character, so this always terminates.
  std::vector<std::pair<size_t, size_t>> FindAll(std::string_view text) const;
  const std::string& source() const { return source_; }

 private:
  OnigPattern() = default;
  std::string source_;
  void* regex_ = nullptr;  // OnigRegex; kept opaque so callers need not include oniguruma.h
};

}  // namespace shoal::worker
