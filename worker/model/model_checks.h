#pragma once
// Checks shared by both loaders, run once when a model is opened so that model code can
// trust the config and every tensor it looks up.
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
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

// Rows and columns sharing one FP8 block scale (DeepSeek-V3's weight_scale_inv).
inline constexpr int64_t kFp8ScaleBlockSize = 128;

// The F32 block scales `<weight>_scale_inv` ("...proj.weight" -> "...proj.weight_scale_inv")
// of the F8_E4M3 tensor `weight` of [rows, cols]: one per 128 x 128 block, [ceil(rows/128),
// ceil(cols/128)]. INVALID_ARGUMENT naming the file and both tensors when they are missing
// or of another type or shape. The data may sit at any byte of the mapped file: read it
// with memcpy.
absl::StatusOr<const TensorView*> FindFp8BlockScales(const WeightStore& store, const std::string& weight,
                                                     int64_t rows, int64_t cols);

// Sizes a config may give, at most (a corrupt file must not ask for petabytes).
inline constexpr int64_t kMaxConfigSize = int64_t{1} << 26;

// A config field and what is wrong with it ("is 3, which does not divide the 64
// n_routed_experts"), for the caller to report against its source.
struct FieldProblem {
  std::string field;
  std::string what;
};

// What is wrong with a DeepSeek config's MoE routing (expert counts, groups, top-k,
// scaling), if anything; nothing to check without routed experts. The config.json reader
// reports it against the file's field; models built from code (benchmarks) against their
// source.
std::optional<FieldProblem> DeepseekRoutingProblem(const DeepseekConfig& config);

}  // namespace shoal::worker
