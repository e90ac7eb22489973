#pragma once
// The one place where the wire contract (shoal.v1 protos) meets the engine's own types.
// Everything a client can get wrong without knowing the model is checked here, and each
// error names the field the way the proto spells it ("sampling.top_p",
// "chat.messages[2].role"). What needs the model (tokenization, vocabulary range, the
// context length) is checked by ModelRuntime::BuildRequest.
#include "worker/common/grpc_status_name.h"
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "grpcpp/support/status.h"
#include "shoal/v1/generate.pb.h"
#include "worker/engine/reasoning_splitter.h"
#include "worker/engine/request.h"
#include "worker/tokenizer/chat_template.h"

namespace shoal::worker {

// What the client asked the model to continue, before tokenization.
struct PromptInput {
  enum class Kind { kText, kChat, kTokenIds };
  Kind kind = Kind::kText;
  std::string text;                 // kText
  std::vector<ChatTurn> chat;       // kChat
  std::vector<int32_t> token_ids;   // kTokenIds
};

// A validated GenerateRequest: the engine request lacks only its prompt tokens.
struct TranslatedRequest {
  std::string model;  // served name; "" = the default model
  PromptInput input;
  GenerationRequest engine_request;
};

// The byte offset of the first byte that does not start or continue a well-formed UTF-8
// sequence (overlongs, surrogates and code points past U+10FFFF are rejected), or nullopt.
std::optional<size_t> FindInvalidUtf8(std::string_view text);

// Validates every field of `request` and maps it onto engine types. INVALID_ARGUMENT
// names the offending field. An empty request_id is left empty (the caller assigns one).
absl::StatusOr<TranslatedRequest> TranslateGenerateRequest(const v1::GenerateRequest& request);

v1::FinishReason ToProtoFinishReason(FinishReason reason);
// One streamed engine piece as the response the client sees; the last piece also carries
// finish_reason and usage.
v1::GenerateResponse ToProtoResponse(const GenerationOutput& output);

// GenerateRequest.separate_reasoning on a reasoning model: moves the reasoning part of
// `response`'s text into reasoning_text. `splitter` carries the split across the stream's
// responses; `last` (the response with the finish reason) releases what it held back.
void SeparateReasoning(ReasoningSplitter* splitter, bool last, v1::GenerateResponse* response);

// absl::Status -> grpc::Status; the canonical codes are numerically the same.
grpc::Status ToGrpcStatus(const absl::Status& status);
// The name Prometheus labels and logs use for a code ("OK", "INVALID_ARGUMENT", ...).
using ::shoal::StatusCodeName;

}  // namespace shoal::worker
