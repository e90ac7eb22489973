#pragma once
// A Hugging Face model directory as a LoadedModel: config.json (+ generation_config.json),
// weights from model.safetensors or the shards listed in model.safetensors.index.json,
// tokenizer.json's path and tokenizer_config.json's chat template.
#include <string>

#include "absl/status/statusor.h"
#include "worker/model/loaded_model.h"

namespace shoal::worker {

absl::StatusOr<LoadedModel> LoadHfModel(const std::string& dir);

}  // namespace shoal::worker
