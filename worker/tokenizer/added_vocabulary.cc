#include "worker/tokenizer/added_vocabulary.h"

#include <algorithm>
#include <memory>

#include "worker/tokenizer/regex.h"
#include "worker/tokenizer/utf8.h"

namespace shoal::worker {
namespace {

// Unicode White_Space, which is what `\s` means to the Rust regex crate HF uses here.
bool IsWhiteSpace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

// Rust regex `\w`: Alphabetic, marks, decimal digits, connector punctuation, join controls.
bool IsWordChar(std::string_view ch) {
  static const OnigPattern* word = [] {
    auto p = OnigPattern::Compile(R"(\A[\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}])");
    return p.ok() ? p->release() : nullptr;
  }();
  return word != nullptr && !word->FindAll(ch).empty();
}

size_t LastCharStart(std::string_view s) {
  size_t i = s.size() - 1;
  while (i > 0 && (static_cast<uint8_t>(s[i]) & 0xC0) == 0x80) --i;
  return i;
}

bool EndsWithWord(std::string_view s) {
  return !s.empty() && IsWordChar(s.substr(LastCharStart(s)));
}

bool StartsWithWord(std::string_view s) {
  if (s.empty()) return false;
  size_t pos = 0;
  NextCodePoint(s, &pos);
  return IsWordChar(s.substr(0, pos));
}

// Start of the whitespace run that ends `s` (s.size() if none).
size_t TrailingSpaceStart(std::string_view s) {
  size_t end = s.size();
  while (end > 0) {
    const size_t start = LastCharStart(s.substr(0, end));
    size_t pos = start;
    if (!IsWhiteSpace(NextCodePoint(s, &pos))) break;
    end = start;
  }
  return end;
}

// Length of the whitespace run that starts `s`.
size_t LeadingSpaceLength(std::string_view s) {
  size_t pos = 0;
  while (pos < s.size()) {
    size_t next = pos;
    if (!IsWhiteSpace(NextCodePoint(s, &next))) break;
    pos = next;
  }
  return pos;
}

}  // namespace

AddedVocabulary::AddedVocabulary(std::vector<AddedToken> tokens, const Normalizer& normalizer)
    : tokens_(std::move(tokens)) {
  for (size_t i = 0; i < tokens_.size(); ++i) {
    const AddedToken& t = tokens_[i];
    match_text_.push_back(t.normalized ? normalizer.Apply(t.content) : t.content);
    index_by_id_[t.id] = i;
    id_by_content_.insert_or_assign(t.content, t.id);
    if (match_text_.back().empty()) continue;  // HF ignores empty tokens
    has_normalized_ |= t.normalized;
    by_first_byte_[t.normalized ? 1 : 0][static_cast<uint8_t>(match_text_.back()[0])].push_back(
        static_cast<int32_t>(i));
  }
  for (auto& pass : by_first_byte_) {
    for (auto& list : pass) {
      std::stable_sort(list.begin(), list.end(), [&](int32_t a, int32_t b) {
        return match_text_[a].size() > match_text_[b].size();
      });
    }
  }
}

std::vector<AddedVocabulary::Segment> AddedVocabulary::Cut(std::string_view text,
                                                           bool normalized_pass,
                                                           bool parse_special) const {
  std::vector<Segment> out;
  const auto& table = by_first_byte_[normalized_pass ? 1 : 0];
  size_t start_offset = 0;  // end of the last emitted segment
  size_t pos = 0;
  while (pos < text.size()) {
    // Leftmost-longest: the first position where any token matches, the longest one there.
    int32_t found = -1;
    for (int32_t idx : table[static_cast<uint8_t>(text[pos])]) {
      if (text.substr(pos).starts_with(match_text_[idx])) {
        found = idx;
        break;
      }
    }
    if (found < 0) {
      ++pos;
      continue;
    }
    const AddedToken& token = tokens_[found];
    size_t start = pos;
    size_t stop = pos + match_text_[found].size();
    pos = stop;  // matches never overlap, even when this one is then discarded
    if (token.special && !parse_special) continue;
    if (token.single_word) {
      const bool space_before = start == 0 || !EndsWithWord(text.substr(0, start));
      const bool space_after = stop == text.size() || !StartsWithWord(text.substr(stop));
      if (!space_before || !space_after) continue;
    }
    if (token.lstrip) start = std::max(TrailingSpaceStart(text.substr(0, start)), start_offset);
    if (token.rstrip) stop += LeadingSpaceLength(text.substr(stop));
    if (start_offset < start) out.push_back({start_offset, start, -1});
    out.push_back({start, stop, token.id});
    start_offset = stop;
    pos = std::max(pos, stop);
  }
  if (start_offset < text.size()) out.push_back({start_offset, text.size(), -1});
  return out;
}

const AddedToken* AddedVocabulary::FindById(int32_t id) const {
  auto it = index_by_id_.find(id);
  return it == index_by_id_.end() ? nullptr : &tokens_[it->second];
}

std::optional<int32_t> AddedVocabulary::FindByContent(std::string_view content) const {
  auto it = id_by_content_.find(content);
  if (it == id_by_content_.end()) return std::nullopt;
  return it->second;
}

}  // namespace shoal::worker
