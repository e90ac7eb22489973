#pragma once
// Text normalization applied before pre-tokenization (HF `normalizer`). Our families use
// none (Llama 3, SmolLM2, DeepSeek) or NFC (Qwen2); the Unicode forms come from ICU.
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace shoal::worker {

class Normalizer {
 public:
  enum class Form { kNfc, kNfd, kNfkc, kNfkd };

  // `forms` are applied in order (a HF Sequence flattens to this); empty = identity.
  static absl::StatusOr<Normalizer> Create(std::vector<Form> forms);
  Normalizer() = default;

  bool is_identity() const { return forms_.empty(); }
  std::string Apply(std::string_view text) const;

 private:
  std::vector<Form> forms_;
};

}  // namespace shoal::worker
