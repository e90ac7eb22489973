#pragma once
// Tensors by Hugging Face name, backed by mapped files. GGUF stores rename their tensors
// to HF names on open (blk.0.attn_q.weight -> model.layers.0.self_attn.q_proj.weight), so
// model code speaks one naming scheme whatever the file format.
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/model/tensor_view.h"

namespace shoal::worker {

class WeightStore {
 public:
  virtual ~WeightStore() = default;
  // nullptr when absent.
  virtual const TensorView* Find(std::string_view name) const = 0;
  virtual std::vector<std::string> Names() const = 0;
  // Where the tensors come from, for error messages ("model.gguf", "dir/model-00001-of-00002.safetensors").
  virtual std::string Source() const = 0;

  // Find() or NOT_FOUND naming the tensor and the source.
  absl::StatusOr<const TensorView*> Get(std::string_view name) const;
};

}  // namespace shoal::worker
