#pragma once
// Fixture builders shared by the model tests: tiny llama/qwen2 checkpoints written as
// GGUF or as a Hugging Face directory, and a scratch directory that cleans up after itself.
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "tests/model/gguf_writer.h"

namespace shoal::worker::testing {

struct TinyDims {
  int64_t hidden = 64;
  int64_t heads = 4;
  int64_t kv_heads = 2;
  int64_t intermediate = 128;
  int64_t layers = 2;
  int64_t vocab = 32;
  bool tied = true;
  bool bias = false;
  int64_t head_dim() const { return hidden / heads; }
};

// A deleted-on-destruction directory under $TEST_TMPDIR or /tmp.
class ScratchDir {
 public:
  ScratchDir();
  ~ScratchDir();
  const std::filesystem::path& path() const { return path_; }
  std::string Write(const std::string& name, const std::string& bytes) const;

 private:
  std::filesystem::path path_;
};

void WriteFile(const std::filesystem::path& path, const std::string& bytes);

// A GGUF writer pre-filled with a complete tiny model of `arch` ("llama" or "qwen2"):
// metadata, a 32-token vocabulary with merges, and every tensor, with weights in the
// quantized types and norms in F32.
GgufWriter TinyGguf(const TinyDims& d, const std::string& arch = "llama");

// One safetensors tensor: name, dtype string, shape, raw bytes (default: a pattern of the
// right size for the dtype).
struct StTensor {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::optional<std::string> data = std::nullopt;
};
size_t SafetensorsElementBytes(const std::string& dtype);
// Header JSON text for `tensors` laid out back to back.
std::string SafetensorsHeader(const std::vector<StTensor>& tensors);
std::string BuildSafetensors(const std::vector<StTensor>& tensors);
// The raw form: header length, header text, data, for corruption cases.
std::string BuildSafetensorsRaw(const std::string& header, const std::string& data);

// Every tensor of a tiny HF llama/qwen2 checkpoint in BF16/F32.
std::vector<StTensor> TinyHfTensors(const TinyDims& d);
std::string TinyHfConfig(const TinyDims& d, const std::string& model_type = "llama");

}  // namespace shoal::worker::testing
