#include "worker/server/model_runtime.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <thread>

#include "worker/common/status_macros.h"
#include "worker/models/causal_lm.h"

namespace shoal::worker {

absl::StatusOr<size_t> KvCacheBytes(const ModelRuntimeOptions& options, const CausalLM& lm) {
  if (options.kv_cache_memory_fraction <= 0) return options.engine.kv_cache_bytes;
  if (options.kv_cache_memory_fraction >= 1) {
    return absl::InvalidArgumentError(
        fmt::format("kv_cache_memory_fraction {} must be below 1: the activations need device memory too",
                    options.kv_cache_memory_fraction));
  }
  const size_t free_bytes = lm.FreeDeviceBytes();
  if (free_bytes == 0) {
    return absl::InvalidArgumentError(
        "kv_cache_memory_fraction sizes a GPU model's KV cache (device cuda); a CPU model's is sized in bytes "
        "(kv_cache_mb)");
  }
  const size_t bytes = static_cast<size_t>(options.kv_cache_memory_fraction * static_cast<double>(free_bytes));
  spdlog::info("kv_cache_memory_fraction={} device_free_bytes={} kv_cache_bytes={}", options.kv_cache_memory_fraction,
               free_bytes, bytes);
  return bytes;
}

absl::StatusOr<std::unique_ptr<ModelRuntime>> ModelRuntime::Load(
    const ModelRuntimeOptions& options, const std::function<void(std::string_view)>& progress) {
  auto say = [&](std::string_view line) {
    if (progress) progress(line);
  };
  const auto t0 = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(std::string path, ResolveModelPath(options.model));

  auto runtime = std::unique_ptr<ModelRuntime>(new ModelRuntime());
  say(fmt::format("loading model {}", path));
  ASSIGN_OR_RETURN(runtime->model_, LoadModel(path));
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, Tokenizer::ForModel(runtime->model_));
  runtime->tokenizer_ = std::shared_ptr<const Tokenizer>(std::move(tokenizer));

  // A model without a usable chat template still serves prompts and token ids; only chat
  // requests fail, and they say why.
  auto chat_template = ChatTemplate::FromSource(runtime->model_.chat_template);
  if (chat_template.ok()) {
    runtime->chat_template_ = *chat_template;
  } else {
    const absl::string_view m = chat_template.status().message();
    runtime->chat_template_error_.assign(m.data(), m.size());
    spdlog::warn("model={} chat_template_error=\"{}\"", path, runtime->chat_template_error_);
  }

  int threads = options.num_threads > 0 ? options.num_threads
                                        : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  runtime->pool_ = std::make_unique<ThreadPool>(threads);
  ShardSpec shard;
  shard.end_layer = runtime->model_.config.num_layers;
  // A group leader's factory resolves an unset GPU for its rank; alone, this is rank 0.
  CausalLMOptions lm_options{.kv_cache_dtype = options.kv_cache_dtype,
                             .device = options.device,
                             .device_weight_dtype = options.device_weight_dtype,
                             .fp8_gemm = options.fp8_gemm,
                             .cuda_graphs = options.cuda_graphs,
                             .cuda_device = options.cuda_device};
  if (!options.model_factory) ResolveCudaDevice(0, &lm_options);
  ASSIGN_OR_RETURN(std::unique_ptr<CausalLM> lm,
                   options.model_factory ? options.model_factory(runtime->model_, runtime->pool_.get(), lm_options)
                                         : CreateCausalLM(runtime->model_, shard, runtime->pool_.get(), lm_options));
  EngineOptions engine = options.engine;
  ASSIGN_OR_RETURN(engine.kv_cache_bytes, KvCacheBytes(options, *lm));
  ASSIGN_OR_RETURN(runtime->engine_, Engine::Create(engine, std::move(lm), runtime->tokenizer_));

  runtime->block_size_ = options.engine.block_size;
  runtime->served_name_ = options.served_name.empty() ? ServedNameFromPath(path) : options.served_name;
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  say(fmt::format("loaded {} as \"{}\" in {:.2f}s ({} layers, {} threads, max_model_len {})", path,
                  runtime->served_name_, seconds, runtime->model_.config.num_layers, threads,
                  runtime->engine_->max_model_len()));
  return runtime;
}

ModelRuntime::~ModelRuntime() {
  if (engine_) engine_->Shutdown();
  engine_.reset();
}

v1::ModelInfo ModelRuntime::Info() const {
  v1::ModelInfo info;
  info.set_name(served_name_);
  info.set_architecture(model_.config.arch_name);
  info.set_max_model_len(engine_->max_model_len());
  info.set_vocab_size(static_cast<int32_t>(model_.config.vocab_size));
  return info;
}

absl::StatusOr<std::vector<int32_t>> ModelRuntime::PromptTokens(const PromptInput& input) const {
  std::vector<int32_t> tokens;
  const char* field = "prompt";
  switch (input.kind) {
    case PromptInput::Kind::kText:
      tokens = tokenizer_->Encode(input.text, /*parse_special=*/true);
      break;
    case PromptInput::Kind::kChat: {
      field = "chat";
      if (!chat_template_) {
        return absl::InvalidArgumentError(
            fmt::format("chat: model \"{}\" has no usable chat template ({}); send a prompt instead",
                        served_name_, chat_template_error_));
      }
      ASSIGN_OR_RETURN(std::string text, chat_template_->Render(input.chat, /*add_generation_prompt=*/true));
      tokens = tokenizer_->Encode(text, /*parse_special=*/true);
      break;
    }
    case PromptInput::Kind::kTokenIds: {
      // Token ids are taken as they are: the client decided about BOS.
      const int32_t vocab = tokenizer_->vocab_size();
      for (size_t i = 0; i < input.token_ids.size(); ++i) {
        if (input.token_ids[i] >= vocab) {
          return absl::InvalidArgumentError(fmt::format("token_ids.ids[{}] = {} is outside the vocabulary [0, {})",
                                                        i, input.token_ids[i], vocab));
        }
      }
      tokens = input.token_ids;
      field = "token_ids";
      break;
    }
  }
  if (input.kind != PromptInput::Kind::kTokenIds && tokenizer_->add_bos()) {
    const std::optional<int32_t> bos = tokenizer_->bos_id();
    // A template that writes the BOS text itself already produced it.
    if (bos && (tokens.empty() || tokens.front() != *bos)) tokens.insert(tokens.begin(), *bos);
  }
  if (tokens.empty()) return absl::InvalidArgumentError(fmt::format("{} encodes to no tokens", field));
  const int max_len = engine_->max_model_len();
  if (static_cast<int64_t>(tokens.size()) >= max_len) {
    return absl::InvalidArgumentError(
        fmt::format("prompt has {} tokens; max_model_len is {}{}", tokens.size(), max_len,
                    input.kind == PromptInput::Kind::kChat ? " (chat messages after the chat template)" : ""));
  }
  return tokens;
}

absl::StatusOr<GenerationRequest> ModelRuntime::BuildRequest(TranslatedRequest request) const {
  ASSIGN_OR_RETURN(request.engine_request.prompt_tokens, PromptTokens(request.input));
  GenerationRequest& r = request.engine_request;
  const int64_t n = static_cast<int64_t>(r.prompt_tokens.size());
  if (r.stop.max_tokens > 0 && n + r.stop.max_tokens > max_model_len()) {
    return absl::InvalidArgumentError(fmt::format(
        "max_tokens: prompt has {} tokens and max_tokens is {}; together more than max_model_len {}", n,
        r.stop.max_tokens, max_model_len()));
  }
  RETURN_IF_ERROR(engine_->Validate(r));
  return std::move(request.engine_request);
}

}  // namespace shoal::worker
