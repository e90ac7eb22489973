#pragma once
// GPT-2's byte-level alphabet: every byte is spelled as one printable code point, so a
// byte string becomes a text that BPE can merge and a vocabulary can store. Printable
// Latin-1 bytes stand for themselves; the other 68 bytes take U+0100.. in byte order.
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace shoal::worker {

class ByteLevelAlphabet {
 public:
  static const ByteLevelAlphabet& Get();

  // The UTF-8 spelling of byte b.
  std::string_view Spell(uint8_t b) const { return spelled_[b]; }
  // Bytes -> spelled text.
  std::string Encode(std::string_view bytes) const;
  // The byte a code point spells, if it is in the alphabet.
  std::optional<uint8_t> ByteOf(uint32_t code_point) const;
  // Spelled text -> bytes; nullopt if any code point is outside the alphabet.
  std::optional<std::string> Decode(std::string_view spelled) const;

 private:
  ByteLevelAlphabet();
  std::array<std::string, 256> spelled_;
  std::array<int16_t, 324> byte_of_code_point_;  // -1: not in the alphabet
};

}  // namespace shoal::worker
