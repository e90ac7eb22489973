#pragma once
// Reading a Hugging Face tokenizer.json into a BpeTokenizerSpec. Every error names the
// source and the JSON path of the offending value, e.g.
//   "tokenizer.json: model.merges[12]: expected 'a b' or [a, b]".
#include <string_view>

#include "absl/status/statusor.h"
#include "worker/tokenizer/bpe_tokenizer.h"

namespace shoal::worker {

absl::StatusOr<BpeTokenizerSpec> ParseTokenizerJson(std::string_view json,
                                                    std::string_view source_name);

}  // namespace shoal::worker
