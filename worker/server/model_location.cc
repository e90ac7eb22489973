#include "worker/server/model_location.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>

namespace shoal::worker {
namespace {

namespace fs = std::filesystem;

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

// "Q4_1", "q8_0", "F16", "BF16", "Q4_K_M", "IQ2_XS", "fp8": the tag GGUF file names carry
// after the model name.
bool LooksLikeQuantTag(std::string_view tag) {
  const std::string t = Lower(std::string(tag));
  if (t == "f16" || t == "f32" || t == "bf16" || t == "fp16" || t == "fp32" || t == "fp8") return true;
  const size_t digits_at = t.rfind('q') == 0 ? 1 : (t.rfind("iq", 0) == 0 ? 2 : std::string::npos);
  return digits_at != std::string::npos && digits_at < t.size() && std::isdigit(static_cast<unsigned char>(t[digits_at]));
}

}  // namespace

std::string DefaultModelsDir() {
  if (const char* dir = std::getenv(kModelsDirEnv); dir != nullptr && *dir != '\0') return dir;
  const char* home = std::getenv("HOME");
  return fmt::format("{}/.cache/shoal/models", home != nullptr ? home : "");
}

absl::StatusOr<std::string> ResolveModelPath(std::string_view model_arg) {
  std::error_code ec;
  if (model_arg.empty()) {
    const std::string path = fmt::format("{}/{}", DefaultModelsDir(), kDefaultModelFile);
    if (!fs::exists(path, ec)) {
      return absl::NotFoundError(fmt::format(
          "the default model is not at {}; run scripts/setup.sh to fetch it (or set {} to the "
          "folder holding {}, or pass --model PATH)",
          path, kModelsDirEnv, kDefaultModelFile));
    }
    return path;
  }
  const std::string path(model_arg);
  if (!fs::exists(path, ec)) {
    return absl::NotFoundError(fmt::format("model path {} does not exist (give a .gguf file or a Hugging "
                                           "Face directory with config.json)", path));
  }
  return path;
}

std::string ServedNameFromPath(std::string_view path) {
  fs::path p{std::string(path)};
  while (!p.empty() && p.filename().empty()) p = p.parent_path();  // "dir/" -> "dir"
  std::string name = p.filename().string();
  if (fs::is_directory(p)) return Lower(name);
  if (Lower(p.extension().string()) == ".gguf") name = p.stem().string();
  // "Name.Q4_1" or "Name-Q4_1": drop the quantization tag, it is not part of the model.
  if (size_t cut = name.find_last_of(".-"); cut != std::string::npos && cut > 0 &&
                                             LooksLikeQuantTag(std::string_view(name).substr(cut + 1))) {
    name.resize(cut);
  }
  return Lower(name);
}

}  // namespace shoal::worker
