#include "worker/tokenizer/normalizer.h"

#include <fmt/format.h>
#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>

namespace shoal::worker {
namespace {

const icu::Normalizer2* InstanceFor(Normalizer::Form form, UErrorCode* status) {
  switch (form) {
    case Normalizer::Form::kNfc: return icu::Normalizer2::getNFCInstance(*status);
    case Normalizer::Form::kNfd: return icu::Normalizer2::getNFDInstance(*status);
    case Normalizer::Form::kNfkc: return icu::Normalizer2::getNFKCInstance(*status);
    case Normalizer::Form::kNfkd: return icu::Normalizer2::getNFKDInstance(*status);
  }
  return nullptr;
}

bool IsAscii(std::string_view s) {
  for (char c : s) {
    if (static_cast<uint8_t>(c) >= 0x80) return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<Normalizer> Normalizer::Create(std::vector<Form> forms) {
  for (Form f : forms) {
    UErrorCode status = U_ZERO_ERROR;
    if (InstanceFor(f, &status) == nullptr || U_FAILURE(status)) {
      return absl::InternalError(fmt::format("ICU normalizer unavailable: {}", u_errorName(status)));
    }
  }
  Normalizer n;
  n.forms_ = std::move(forms);
  return n;
}

std::string Normalizer::Apply(std::string_view text) const {
  // ASCII is invariant under every Unicode normalization form.
  if (forms_.empty() || IsAscii(text)) return std::string(text);
  std::string current(text);
  for (Form f : forms_) {
    UErrorCode status = U_ZERO_ERROR;
    const icu::Normalizer2* n = InstanceFor(f, &status);
    std::string out;
    icu::StringByteSink<std::string> sink(&out);
    n->normalizeUTF8(0, icu::StringPiece(current.data(), static_cast<int32_t>(current.size())),
                     sink, nullptr, status);
    if (U_FAILURE(status)) return current;  // invalid UTF-8 input: leave it as it is
    current = std::move(out);
  }
  return current;
}

}  // namespace shoal::worker
