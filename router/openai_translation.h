#pragma once
// OpenAI-compatible JSON <-> shoal.v1 protos, pure and without I/O:
//   POST /v1/completions       {model, prompt, max_tokens, temperature, top_p, stop, stream, ...}
//   POST /v1/chat/completions  {model, messages, max_tokens | max_completion_tokens, ...}
// Shoal extensions accepted in the same body: top_k, min_p, repetition_penalty,
// ignore_eos. Every malformed input is INVALID_ARGUMENT naming the field (OpenAI's
// `param`), so the HTTP layer can answer 400 with an OpenAI-shaped error body.
//
// Log-probabilities: completions `logprobs: N` (0..20) and chat `logprobs: true` with
// `top_logprobs: N` become include_logprobs/top_logprobs; the responses carry OpenAI's
// two shapes (completions: tokens/token_logprobs/top_logprobs/text_offset; chat:
// content[{token, logprob, bytes, top_logprobs}]), streamed per chunk or whole.
// Reasoning: chat requests set separate_reasoning, and a group's reasoning_text comes back
// as `reasoning_content` (as DeepSeek's and vLLM's APIs name it).
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "grpcpp/support/status.h"
#include "shoal/v1/generate.pb.h"

namespace shoal::router {

enum class OpenAiEndpoint { kCompletions, kChatCompletions };

struct OpenAiRequest {
  v1::GenerateRequest request;
  bool stream = false;
  bool include_usage_in_stream = false;  // stream_options.include_usage
};

// Offset of the first byte that breaks UTF-8, or -1 when `bytes` is valid UTF-8.
int64_t FirstInvalidUtf8Byte(std::string_view bytes);

absl::StatusOr<OpenAiRequest> ParseOpenAiRequest(OpenAiEndpoint endpoint, std::string_view body);

// One sampled token's log-probability with its text resolved (see AppendLogprobs).
struct TokenLogprobEntry {
  std::string token;
  float logprob = 0;
  int64_t text_offset = 0;  // byte offset of the token in the whole completion text
  std::vector<std::pair<std::string, float>> top;  // most likely first
};

// What one finished (or streamed) completion looks like, the parts the JSON needs.
struct CompletionResult {
  std::string id;       // "cmpl-..." / "chatcmpl-..."
  std::string model;
  int64_t created = 0;  // unix seconds
  std::string text;
  std::string reasoning_text;  // chat only: `reasoning_content`
  bool include_logprobs = false;  // `logprobs` is an object (else JSON null)
  std::vector<TokenLogprobEntry> logprobs;
  v1::FinishReason finish_reason = v1::FINISH_REASON_UNSPECIFIED;
  bool has_usage = false;
  v1::Usage usage;
};

// Appends the logprobs of one group response to `out`. Groups send token ids and may
// leave the token text empty; the text is then the response's own text when it holds
// exactly one token (what the client sees for that token), else "token_id:<id>" (vLLM's
// spelling for a token given by id). `text_before` is the completion's length before
// this response, for text_offset.
void AppendLogprobs(const v1::GenerateResponse& response, int64_t text_before, std::vector<TokenLogprobEntry>& out);

// A whole non-streaming response body.
std::string CompletionResponseJson(OpenAiEndpoint endpoint, const CompletionResult& result);
// One SSE chunk's JSON (without "data: "). For chat, `first` adds the assistant role.
std::string CompletionChunkJson(OpenAiEndpoint endpoint, const CompletionResult& delta, bool first);
// The final usage-only chunk of a stream with stream_options.include_usage.
std::string UsageChunkJson(OpenAiEndpoint endpoint, const CompletionResult& result);

// The OpenAI error object for a status, and the HTTP status code it maps to.
struct HttpError {
  int http_status = 500;
  std::string body;  // {"error": {"message", "type", "param", "code"}}
};
HttpError OpenAiError(const grpc::Status& status);
HttpError OpenAiError(int http_status, const std::string& message, const std::string& type,
                      const std::string& code);

// "stop", "length" or "" (JSON null) for a finish reason.
const char* OpenAiFinishReason(v1::FinishReason reason);

}  // namespace shoal::router
