#pragma once
// A GGUF file as a LoadedModel: architecture metadata -> ModelConfig, tokenizer.ggml.* ->
// GgufVocab, tensors renamed to Hugging Face names and checked against the config.
#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "worker/model/gguf_file.h"
#include "worker/model/loaded_model.h"

namespace shoal::worker {

// Maps `path` and builds the model; the weights point into the mapping, which the
// returned WeightStore owns.
absl::StatusOr<LoadedModel> LoadGgufModel(const std::string& path);

// The same from bytes the caller keeps alive for the model's lifetime (tests, fuzzers).
absl::StatusOr<LoadedModel> LoadGgufModelFromBytes(const std::string& source,
                                                   std::span<const std::byte> bytes);

// The pieces, for tests: config from metadata (unvalidated), and the vocabulary.
absl::StatusOr<ModelConfig> GgufModelConfig(const GgufFile& file);
absl::StatusOr<GgufVocab> GgufVocabulary(const GgufFile& file);

}  // namespace shoal::worker
