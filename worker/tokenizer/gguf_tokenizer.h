#pragma once
// Building a BpeTokenizerSpec from the tokenizer a GGUF file carries (tokenizer.ggml.*).
#include "absl/status/statusor.h"
#include "worker/model/loaded_model.h"
#include "worker/tokenizer/bpe_tokenizer.h"

namespace shoal::worker {

// The GGUF `pre` name says which HF pre-tokenizer (and normalizer) the vocabulary was
// trained with; we rebuild exactly that. An unknown name is an error naming it.
absl::StatusOr<BpeTokenizerSpec> SpecFromGguf(const GgufVocab& vocab);

}  // namespace shoal::worker
