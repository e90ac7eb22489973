#pragma once
// Checks shared by both loaders, run once when a model is opened so that model code can
// trust the config and every tensor it looks up.
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "worker/model/model_config.h"
#include "worker/model/weight_store.h"

namespace shoal::worker {

struct ExpectedTensor {
  std::string name;            // Hugging Face name
  std::vector<int64_t> shape;  // outermost first
};

// Fills head_dim when it is 0 and checks the config is self-consistent: positive sizes,
// hidden % heads == 0 (unless head_dim is given), heads % kv_heads == 0. `source` names
// the file in messages.
absl::Status ValidateModelConfig(const std::string& source, ModelConfig* config);

// Calls `visit` on every tensor a llama/qwen2 model of `config` reads, layer by layer,
// stopping at the first error. A visitor, not a list: a corrupt layer count must not turn
// into billions of entries before the first missing tensor is noticed.
absl::Status ForEachExpectedTensor(const ModelConfig& config,
                                   const std::function<absl::Status(const ExpectedTensor&)>& visit);

// Each expected tensor is present with the expected shape; errors name the tensor and
// both shapes.
absl::Status CheckModelTensors(const ModelConfig& config, const WeightStore& weights);

}  // namespace shoal::worker
