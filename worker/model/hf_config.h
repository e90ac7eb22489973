#pragma once
// Hugging Face JSON files of a model directory, turned into our types. Each function takes
// the file's text and its name (for messages) so tests need no files.
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/model/model_config.h"

namespace shoal::worker {

// config.json -> ModelConfig for model_type llama, qwen2, deepseek_v2 and deepseek_v3
// (generic fields unvalidated: call ValidateModelConfig; DeepSeek's MLA/MoE fields are
// checked here, against each other). Errors name the file and the field.
absl::StatusOr<ModelConfig> ParseHfConfig(const std::string& source, const std::string& text);

// generation_config.json's eos_token_id (an int, a list or absent).
absl::StatusOr<std::vector<int32_t>> ParseGenerationConfigEos(const std::string& source,
                                                              const std::string& text);

// tokenizer_config.json's chat_template: a string, or a list of {name, template} of which
// we take "default". "" when absent.
absl::StatusOr<std::string> ParseTokenizerConfigChatTemplate(const std::string& source,
                                                             const std::string& text);

}  // namespace shoal::worker
