#pragma once
// UTF-8 helpers shared by the tokenizer: code point iteration, the lossy decoding HF
// applies to detokenized bytes, and the "how much of this buffer is safe to emit" rule of
// streaming detokenization.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace shoal::worker {

inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

// Length of the valid UTF-8 sequence that starts at s[pos], or 0 when the bytes there are
// not a valid, complete sequence (bad lead, bad continuation, overlong, surrogate, >U+10FFFF,
// or cut off by the end of `s`).
size_t ValidSequenceLength(std::string_view s, size_t pos);

// Length of the maximal prefix of an ill-formed sequence at s[pos] (Unicode's "maximal
// subpart" rule, which is what Rust's String::from_utf8_lossy uses): the lead byte plus the
// continuation bytes that could still have belonged to a valid sequence. Always >= 1.
size_t MaximalSubpartLength(std::string_view s, size_t pos);

bool IsValidUtf8(std::string_view bytes);

// Decodes bytes as UTF-8, replacing each maximal ill-formed subpart with U+FFFD — byte for
// byte what HF tokenizers' ByteLevel decoder produces.
std::string LossyUtf8(std::string_view bytes);

// How many leading bytes of `bytes` can be emitted now: everything except a trailing
// sequence that is incomplete but could still become valid with more bytes.
size_t StableUtf8Prefix(std::string_view bytes);

// Decodes one code point at s[pos] (s must be valid UTF-8 there); advances pos.
uint32_t NextCodePoint(std::string_view s, size_t* pos);
void AppendUtf8(uint32_t cp, std::string* out);

}  // namespace shoal::worker
