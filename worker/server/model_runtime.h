#pragma once
// One served model, ready to generate: the opened files, tokenizer, chat template, the
// CausalLM on its thread pool, and the Engine that batches requests for it. Both the
// gRPC server and the in-process `shoal generate` go through this type, so a request is
// checked and tokenized the same way wherever it comes from.
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "shoal/v1/generate.pb.h"
#include "worker/engine/engine.h"
#include "worker/kernels/cpu/thread_pool.h"
#include "worker/model/dtype.h"
#include "worker/model/loaded_model.h"
#include "worker/models/causal_lm.h"
#include "worker/server/model_location.h"
#include "worker/server/request_translation.h"
#include "worker/tokenizer/chat_template.h"
#include "worker/tokenizer/tokenizer.h"

namespace shoal::worker {

struct ModelRuntimeOptions {
  std::string model;        // path; "" = the default model
  std::string served_name;  // "" = ServedNameFromPath
  int num_threads = 0;      // 0 = one per core
  DType kv_cache_dtype = DType::kF16;  // kF16 or kF32 (kBF16 too on CUDA), see CausalLMOptions
  Device device = Device::kCpu;        // kCuda: the model on GPU cuda_device, see CausalLMOptions
  DType device_weight_dtype = DType::kBF16;
  int cuda_device = -1;  // CausalLMOptions.cuda_device; -1 = ResolveCudaDevice's choice
  bool cuda_graphs = false;  // CausalLMOptions.cuda_graphs
  CausalLMOptions::Fp8Gemm fp8_gemm = CausalLMOptions::Fp8Gemm::kTensorCores;  // CausalLMOptions.fp8_gemm
  // > 0 (GPU models only): the KV cache gets this fraction of the device memory still free
  // after the weights are loaded, instead of engine.kv_cache_bytes. The rest is left for
  // the activations and cuBLAS workspaces.
  double kv_cache_memory_fraction = 0;
  EngineOptions engine;
  // Builds the CausalLM instead of CreateCausalLM over the whole model; a multi-rank group's
  // leader passes one that joins the group (worker/parallel). Empty = one process.
  std::function<absl::StatusOr<std::unique_ptr<CausalLM>>(const LoadedModel&, ThreadPool*, const CausalLMOptions&)>
      model_factory;
};

// The KV cache budget: engine.kv_cache_bytes, or with kv_cache_memory_fraction > 0 that
// fraction of the device memory `lm` leaves free (INVALID_ARGUMENT for a CPU model, or a
// fraction of 1 or more).
absl::StatusOr<size_t> KvCacheBytes(const ModelRuntimeOptions& options, const CausalLM& lm);

class ModelRuntime {
 public:
  // Loads everything and starts the engine. `progress` (may be empty) hears a line per
  // stage, for a CLI to show on stderr.
  static absl::StatusOr<std::unique_ptr<ModelRuntime>> Load(
      const ModelRuntimeOptions& options, const std::function<void(std::string_view)>& progress = {});
  ~ModelRuntime();

  const std::string& served_name() const { return served_name_; }
  const std::string& path() const { return model_.path; }
  const ModelConfig& config() const { return model_.config; }
  Engine& engine() { return *engine_; }
  const Engine& engine() const { return *engine_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  // The recognised chat template; null when the model has none we can render.
  const ChatTemplate* chat_template() const { return chat_template_ ? &*chat_template_ : nullptr; }
  int max_model_len() const { return engine_->max_model_len(); }
  int block_size() const { return block_size_; }
  v1::ModelInfo Info() const;

  // Prompt text / chat messages / token ids -> the tokens the model continues: the chat
  // template applied, BOS prepended when the tokenizer wants it. INVALID_ARGUMENT names the
  // field (an id out of the vocabulary, a prompt longer than max_model_len).
  absl::StatusOr<std::vector<int32_t>> PromptTokens(const PromptInput& input) const;
  // The engine request for a translated one: prompt tokens filled in, then the engine's
  // own Validate.
  absl::StatusOr<GenerationRequest> BuildRequest(TranslatedRequest request) const;

 private:
  ModelRuntime() = default;

  // Declaration order is destruction order in reverse: the engine (which owns the
  // CausalLM) goes first, then the pool its kernels run on, then the mapped weights.
  LoadedModel model_;
  std::unique_ptr<ThreadPool> pool_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  std::optional<ChatTemplate> chat_template_;
  std::string chat_template_error_;
  std::string served_name_;
  int block_size_ = 0;
  std::unique_ptr<Engine> engine_;
};

}  // namespace shoal::worker
