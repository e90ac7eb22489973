#include "worker/tokenizer/regex.h"

#include <fmt/format.h>
#include <oniguruma.h>

#include <mutex>

namespace shoal::worker {
namespace {

void InitOnigurumaOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    OnigEncoding encodings[] = {ONIG_ENCODING_UTF8};
    onig_initialize(encodings, 1);
  });
}

}  // namespace

absl::StatusOr<std::unique_ptr<OnigPattern>> OnigPattern::Compile(std::string_view pattern) {
  InitOnigurumaOnce();
  std::unique_ptr<OnigPattern> p(new OnigPattern());
  p->source_ = std::string(pattern);
  OnigRegex regex = nullptr;
  OnigErrorInfo error_info;
  const auto* begin = reinterpret_cast<const OnigUChar*>(p->source_.data());
  const int rc = onig_new(&regex, begin, begin + p->source_.size(), ONIG_OPTION_NONE,
                          ONIG_ENCODING_UTF8, ONIG_SYNTAX_DEFAULT, &error_info);
  if (rc != ONIG_NORMAL) {
    OnigUChar message[ONIG_MAX_ERROR_MESSAGE_LEN];
    onig_error_code_to_str(message, rc, &error_info);
    return absl::InvalidArgumentError(fmt::format("regex '{}' does not compile: {}", p->source_,
                                                  reinterpret_cast<const char*>(message)));
  }
  p->regex_ = regex;
  return p;
}

OnigPattern::~OnigPattern() {
  if (regex_ != nullptr) onig_free(static_cast<OnigRegex>(regex_));
}

std::vector<std::pair<size_t, size_t>> OnigPattern::FindAll(std::string_view text) const {
  std::vector<std::pair<size_t, size_t>> matches;
  auto* regex = static_cast<OnigRegex>(regex_);
  OnigRegion* region = onig_region_new();
  const auto* str = reinterpret_cast<const OnigUChar*>(text.data());
  const OnigUChar* end = str + text.size();
  size_t start = 0;
  while (start <= text.size()) {
    const int r = onig_search(regex, str, end, str + start, end, region, ONIG_OPTION_NONE);
    if (r < 0) break;  // ONIG_MISMATCH, or an error such as a retry limit: stop matching
    const auto b = static_cast<size_t>(region->beg[0]);
    const auto e = static_cast<size_t>(region->end[0]);
    matches.emplace_back(b, e);
    if (e > b) {
      start = e;
    } else {
      // Empty match: step over one UTF-8 character.
      size_t step = 1;
      while (b + step < text.size() && (static_cast<uint8_t>(text[b + step]) & 0xC0) == 0x80) {
        ++step;
      }
      start = b + step;
    }
    onig_region_clear(region);
  }
  onig_region_free(region, 1);
  return matches;
}

}  // namespace shoal::worker
