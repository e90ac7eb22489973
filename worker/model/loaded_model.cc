#include "worker/model/loaded_model.h"

#include <fmt/format.h>

#include <filesystem>
#include <system_error>

#include "worker/model/gguf_model.h"
#include "worker/model/hf_model.h"

namespace shoal::worker {

// A directory is a Hugging Face checkpoint; a file is GGUF (its magic is checked by the
// parser, which names what it found instead).
absl::StatusOr<LoadedModel> LoadModel(const std::string& path) {
  std::error_code ec;
  std::filesystem::file_status st = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(st)) {
    return absl::NotFoundError(fmt::format("{}: no such file or directory", path));
  }
  if (std::filesystem::is_directory(st)) return LoadHfModel(path);
  if (std::filesystem::path(path).extension() == ".safetensors") {
    return absl::InvalidArgumentError(fmt::format(
        "{}: a safetensors file has no config; give the directory that holds it and "
        "config.json",
        path));
  }
  return LoadGgufModel(path);
}

}  // namespace shoal::worker
