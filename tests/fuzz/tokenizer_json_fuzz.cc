// libFuzzer target: arbitrary bytes as a tokenizer.json. Parsing must fail cleanly or
// produce a tokenizer that can encode and decode without crashing.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "worker/tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto tok = shoal::worker::Tokenizer::FromTokenizerJson(bytes, "fuzz.json");
  if (!tok.ok()) return 0;
  // Fixed texts, plus the input itself (often not UTF-8, which Encode must survive).
  const std::string texts[] = {"Hello, world! 123 <|endoftext|>  \n\t x",
                               "\xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x98\x80",
                               std::string(bytes.substr(0, 256))};
  for (const std::string& text : texts) {
    for (bool parse_special : {true, false}) {
      const std::vector<int32_t> ids = (*tok)->Encode(text, parse_special);
      (void)(*tok)->Decode(ids);
      (void)(*tok)->Decode(ids, /*skip_special=*/true);
      shoal::worker::StreamingDetokenizer stream(**tok);
      for (int32_t id : ids) (void)stream.Push(id);
      (void)stream.Flush();
    }
  }
  std::vector<int32_t> odd_ids = {-1, 0, 1, 2, 255, 256, (*tok)->vocab_size(), 1 << 30};
  (void)(*tok)->Decode(odd_ids);
  for (int32_t id : odd_ids) {
    (void)(*tok)->TokenBytes(id);
    (void)(*tok)->IsSpecial(id);
  }
  return 0;
}
