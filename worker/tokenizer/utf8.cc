#include "worker/tokenizer/utf8.h"

namespace shoal::worker {
namespace {

// The Unicode table of well-formed byte sequences (Table 3-7): the allowed range of the
// second byte depends on the lead; later continuation bytes are always 80..BF.
struct LeadRule {
  int length;  // 0: not a lead byte
  uint8_t second_lo, second_hi;
};

LeadRule RuleFor(uint8_t b) {
  if (b < 0x80) return {1, 0, 0};
  if (b >= 0xC2 && b <= 0xDF) return {2, 0x80, 0xBF};
  if (b == 0xE0) return {3, 0xA0, 0xBF};
  if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) return {3, 0x80, 0xBF};
  if (b == 0xED) return {3, 0x80, 0x9F};
  if (b == 0xF0) return {4, 0x90, 0xBF};
  if (b >= 0xF1 && b <= 0xF3) return {4, 0x80, 0xBF};
  if (b == 0xF4) return {4, 0x80, 0x8F};
  return {0, 0, 0};
}

// Number of bytes at s[pos] that match the well-formed pattern (stops at the first byte
// that does not fit, or the end); `complete` tells whether the whole sequence was there.
size_t MatchingPrefix(std::string_view s, size_t pos, bool* complete) {
  const auto lead = static_cast<uint8_t>(s[pos]);
  const LeadRule rule = RuleFor(lead);
  *complete = false;
  if (rule.length == 0) return 0;
  if (rule.length == 1) {
    *complete = true;
    return 1;
  }
  size_t n = 1;
  for (int i = 1; i < rule.length; ++i) {
    if (pos + i >= s.size()) return n;
    const auto b = static_cast<uint8_t>(s[pos + i]);
    const uint8_t lo = i == 1 ? rule.second_lo : 0x80;
    const uint8_t hi = i == 1 ? rule.second_hi : 0xBF;
    if (b < lo || b > hi) return n;
    ++n;
  }
  *complete = true;
  return n;
}

}  // namespace

size_t ValidSequenceLength(std::string_view s, size_t pos) {
  bool complete = false;
  const size_t n = MatchingPrefix(s, pos, &complete);
  return complete ? n : 0;
}

size_t MaximalSubpartLength(std::string_view s, size_t pos) {
  bool complete = false;
  const size_t n = MatchingPrefix(s, pos, &complete);
  return n == 0 ? 1 : n;
}

bool IsValidUtf8(std::string_view bytes) {
  size_t pos = 0;
  while (pos < bytes.size()) {
    if (static_cast<uint8_t>(bytes[pos]) < 0x80) {
      ++pos;
      continue;
    }
    const size_t n = ValidSequenceLength(bytes, pos);
    if (n == 0) return false;
    pos += n;
  }
  return true;
}

std::string LossyUtf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t pos = 0;
  while (pos < bytes.size()) {
    const size_t n = ValidSequenceLength(bytes, pos);
    if (n > 0) {
      out.append(bytes.substr(pos, n));
      pos += n;
    } else {
      out.append(kReplacementChar);
      pos += MaximalSubpartLength(bytes, pos);
    }
  }
  return out;
}

size_t StableUtf8Prefix(std::string_view bytes) {
  // Only the last (at most 3) bytes can be the start of a sequence still waiting for
  // continuation bytes.
  const size_t start = bytes.size() > 3 ? bytes.size() - 3 : 0;
  for (size_t pos = start; pos < bytes.size(); ++pos) {
    bool complete = false;
    const size_t n = MatchingPrefix(bytes, pos, &complete);
    if (!complete && n > 0 && pos + n == bytes.size()) return pos;
  }
  return bytes.size();
}

uint32_t NextCodePoint(std::string_view s, size_t* pos) {
  const auto b0 = static_cast<uint8_t>(s[*pos]);
  if (b0 < 0x80) {
    *pos += 1;
    return b0;
  }
  const size_t len = ValidSequenceLength(s, *pos);
  if (len == 0) {  // not valid UTF-8: step over one byte so callers always progress
    *pos += 1;
    return 0xFFFD;
  }
  uint32_t cp = b0 & (0x7F >> len);
  for (size_t i = 1; i < len; ++i) cp = (cp << 6) | (static_cast<uint8_t>(s[*pos + i]) & 0x3F);
  *pos += len;
  return cp;
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

}  // namespace shoal::worker
