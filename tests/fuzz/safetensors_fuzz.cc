// libFuzzer target for the safetensors parser and the HF JSON readers. Any input must give
// tensors or an error; every returned view must lie inside the input.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "worker/model/hf_config.h"
#include "worker/model/safetensors_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace shoal::worker;
  std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  absl::StatusOr<std::vector<TensorView>> tensors = ParseSafetensors("fuzz.safetensors", bytes);
  if (tensors.ok()) {
    for (const TensorView& t : *tensors) {
      if (t.nbytes > 0) {
        volatile std::byte b = t.data[0];
        volatile std::byte e = t.data[t.nbytes - 1];
        (void)b;
        (void)e;
      }
    }
  }
  // The same bytes as the JSON files of an HF directory: untrusted text, typed access.
  std::string text(reinterpret_cast<const char*>(data), size);
  (void)ParseHfConfig("config.json", text);
  (void)ParseTokenizerConfigChatTemplate("tokenizer_config.json", text);
  (void)ParseGenerationConfigEos("generation_config.json", text);
  return 0;
}
