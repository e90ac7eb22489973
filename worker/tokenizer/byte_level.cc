#include "worker/tokenizer/byte_level.h"

#include "worker/tokenizer/utf8.h"

namespace shoal::worker {

ByteLevelAlphabet::ByteLevelAlphabet() {
  byte_of_code_point_.fill(-1);
  auto printable = [](int b) {
    return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
  };
  int next_extra = 256;
  for (int b = 0; b < 256; ++b) {
    const uint32_t cp = printable(b) ? b : next_extra++;
    AppendUtf8(cp, &spelled_[b]);
    byte_of_code_point_[cp] = static_cast<int16_t>(b);
  }
}

const ByteLevelAlphabet& ByteLevelAlphabet::Get() {
  static const ByteLevelAlphabet* alphabet = new ByteLevelAlphabet();
  return *alphabet;
}

std::string ByteLevelAlphabet::Encode(std::string_view bytes) const {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) out.append(spelled_[static_cast<uint8_t>(c)]);
  return out;
}

std::optional<uint8_t> ByteLevelAlphabet::ByteOf(uint32_t code_point) const {
  if (code_point >= byte_of_code_point_.size() || byte_of_code_point_[code_point] < 0) {
    return std::nullopt;
  }
  return static_cast<uint8_t>(byte_of_code_point_[code_point]);
}

std::optional<std::string> ByteLevelAlphabet::Decode(std::string_view spelled) const {
  std::string out;
  out.reserve(spelled.size());
  size_t pos = 0;
  while (pos < spelled.size()) {
    const std::optional<uint8_t> b = ByteOf(NextCodePoint(spelled, &pos));
    if (!b) return std::nullopt;
    out.push_back(static_cast<char>(*b));
  }
  return out;
}

}  // namespace shoal::worker
