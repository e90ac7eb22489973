// libFuzzer target: an OpenAI-compatible HTTP body -> shoal.v1.GenerateRequest, as the
// router's HTTP server translates it (router/openai_translation.h), for both endpoints.
// Any input must give either a request or INVALID_ARGUMENT whose message names what is
// wrong; the error body and the response bodies built from an accepted request must be
// valid JSON. A crash, sanitizer report or failed check is a finding.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string_view>

#include "router/openai_translation.h"

namespace {

void Check(bool condition) {
  if (!condition) std::abort();
}

bool IsJsonObject(const std::string& text) {
  const auto parsed = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  return !parsed.is_discarded() && parsed.is_object();
}

void FuzzOne(shoal::router::OpenAiEndpoint endpoint, std::string_view body) {
  using namespace shoal::router;
  auto parsed = ParseOpenAiRequest(endpoint, body);
  if (!parsed.ok()) {
    Check(parsed.status().code() == absl::StatusCode::kInvalidArgument);
    Check(!parsed.status().message().empty());
    const HttpError error =
        OpenAiError(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, std::string(parsed.status().message())));
    Check(error.http_status == 400);
    Check(IsJsonObject(error.body));
    return;
  }
  const shoal::v1::GenerateRequest& request = parsed->request;
  Check(request.max_tokens() >= 0);
  Check(request.top_logprobs() >= 0 && request.top_logprobs() <= 20);
  Check(request.top_logprobs() == 0 || request.include_logprobs());
  Check(request.separate_reasoning() == (endpoint == OpenAiEndpoint::kChatCompletions));
  std::string wire;
  Check(request.SerializeToString(&wire));

  // Echo the accepted strings back through the response builders: they must stay JSON.
  CompletionResult result;
  result.id = "cmpl-fuzz";
  result.model = request.model();
  result.text = request.prompt();
  if (request.has_chat() && request.chat().messages_size() > 0) {
    result.reasoning_text = request.chat().messages(0).content();
  }
  result.include_logprobs = request.include_logprobs();
  shoal::v1::GenerateResponse step;
  step.set_text(result.text);
  for (int i = 0; i < request.stop().stop_size() && i < 4; ++i) {
    auto* lp = step.add_logprobs();
    lp->set_token_id(i);
    lp->set_logprob(-1.0f);
    lp->add_top()->set_token(request.stop().stop(i));
  }
  AppendLogprobs(step, 0, result.logprobs);
  Check(IsJsonObject(CompletionResponseJson(endpoint, result)));
  Check(IsJsonObject(CompletionChunkJson(endpoint, result, true)));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  FuzzOne(shoal::router::OpenAiEndpoint::kCompletions, body);
  FuzzOne(shoal::router::OpenAiEndpoint::kChatCompletions, body);
  return 0;
}
