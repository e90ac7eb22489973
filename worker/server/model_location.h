#pragma once
// Where a model is on disk and what clients call it. Pure path logic, kept apart from
// ModelRuntime so it is tested without loading anything.
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace shoal::worker {

inline constexpr char kDefaultModelFile[] = "SmolLM2-135M-Instruct.Q4_1.gguf";
inline constexpr char kModelsDirEnv[] = "SHOAL_MODELS_DIR";

// $SHOAL_MODELS_DIR, else ~/.cache/shoal/models.
std::string DefaultModelsDir();
// `model_arg` as given (a .gguf file or a Hugging Face directory), or the default model
// when empty. NOT_FOUND names the path; for the default model it also says how to fetch it.
absl::StatusOr<std::string> ResolveModelPath(std::string_view model_arg);
// The name clients select a model by: the file stem without a quantization suffix,
// lower-cased ("SmolLM2-135M-Instruct.Q4_1.gguf" -> "smollm2-135m-instruct"), or the
// directory name for a Hugging Face directory.
std::string ServedNameFromPath(std::string_view path);

}  // namespace shoal::worker
