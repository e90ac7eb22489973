// libFuzzer target for the GGUF loader: the container parser and everything built on it
// (metadata -> ModelConfig, vocabulary, tensor renaming and shape checks). Any input must
// give a model or an error; a crash, a sanitizer report or a read outside the input is a bug.
#include <cstddef>
#include <cstdint>
#include <span>

#include "worker/model/gguf_file.h"
#include "worker/model/gguf_model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace shoal::worker;
  std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  absl::StatusOr<GgufFile> file = ParseGguf("fuzz.gguf", bytes);
  if (file.ok()) {
    // Touch the first and last byte of every tensor: ASan flags any view past the input.
    volatile uint8_t sink = 0;
    for (const GgufTensorInfo& t : file->tensors) {
      sink = static_cast<uint8_t>(t.view.data[0]) ^ static_cast<uint8_t>(t.view.data[t.view.nbytes - 1]);
    }
    (void)sink;
  }
  absl::StatusOr<LoadedModel> model = LoadGgufModelFromBytes("fuzz.gguf", bytes);
  if (model.ok()) {
    for (const std::string& name : model->weights->Names()) {
      const TensorView* t = model->weights->Find(name);
      if (t->nbytes > 0) {
        volatile std::byte b = t->data[t->nbytes - 1];
        (void)b;
      }
    }
  }
  return 0;
}
