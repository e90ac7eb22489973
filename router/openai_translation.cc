#include "router/openai_translation.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

namespace shoal::router {

using nlohmann::json;

int64_t FirstInvalidUtf8Byte(std::string_view bytes) {
  const auto* s = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = s[i];
    size_t length = 0;
    uint32_t min = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      length = 2, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
      length = 3, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
      length = 4, min = 0x10000;
    } else {
      return static_cast<int64_t>(i);
    }
    if (i + length > n) return static_cast<int64_t>(i);
    uint32_t code = c & (0x7F >> length);
    for (size_t k = 1; k < length; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) return static_cast<int64_t>(i);
      code = (code << 6) | (s[i + k] & 0x3F);
    }
    // Overlong forms, UTF-16 surrogates and values past U+10FFFF are not UTF-8.
    if (code < min || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return static_cast<int64_t>(i);
    i += length;
  }
  return -1;
}

namespace {

// The most alternatives per position a group returns (GenerateRequest.top_logprobs).
constexpr int64_t kMaxTopLogprobs = 20;

absl::Status FieldError(std::string_view field, std::string_view what) {
  // The field name leads the message; OpenAiError() recovers it as `param`.
  return absl::InvalidArgumentError(fmt::format("{}: {}", field, what));
}

absl::StatusOr<double> NumberField(const json& body, const char* field, double min, double max) {
  const json& v = body.at(field);
  if (!v.is_number()) return FieldError(field, "must be a number");
  const double x = v.get<double>();
  if (x < min || x > max) return FieldError(field, fmt::format("must be in [{}, {}], got {}", min, max, x));
  return x;
}

absl::StatusOr<int64_t> IntegerField(const json& body, const char* field, int64_t min, int64_t max) {
  const json& v = body.at(field);
  if (!v.is_number_integer()) return FieldError(field, "must be an integer");
  const int64_t x = v.get<int64_t>();
  if (x < min || x > max) return FieldError(field, fmt::format("must be in [{}, {}], got {}", min, max, x));
  return x;
}

absl::Status ParseCommon(const json& body, OpenAiEndpoint endpoint, OpenAiRequest& out) {
  v1::GenerateRequest& r = out.request;
  if (!body.contains("model")) return FieldError("model", "is required");
  if (!body["model"].is_string()) return FieldError("model", "must be a string");
  r.set_model(body["model"].get<std::string>());

  auto* sampling = r.mutable_sampling();
  // OpenAI defaults: temperature 1, top_p 1, max_tokens 16 for completions.
  sampling->set_temperature(1.0f);
  if (body.contains("temperature") && !body["temperature"].is_null()) {
    auto v = NumberField(body, "temperature", 0, 2);
    if (!v.ok()) return v.status();
    sampling->set_temperature(static_cast<float>(*v));
  }
  if (body.contains("top_p") && !body["top_p"].is_null()) {
    auto v = NumberField(body, "top_p", 0, 1);
    if (!v.ok()) return v.status();
    if (*v == 0) return FieldError("top_p", "must be in (0, 1]");
    sampling->set_top_p(static_cast<float>(*v));
  }
  if (body.contains("top_k") && !body["top_k"].is_null()) {
    auto v = IntegerField(body, "top_k", 0, 1 << 20);
    if (!v.ok()) return v.status();
    sampling->set_top_k(static_cast<int32_t>(*v));
  }
  if (body.contains("min_p") && !body["min_p"].is_null()) {
    auto v = NumberField(body, "min_p", 0, 1);
    if (!v.ok()) return v.status();
    sampling->set_min_p(static_cast<float>(*v));
  }
  if (body.contains("repetition_penalty") && !body["repetition_penalty"].is_null()) {
    auto v = NumberField(body, "repetition_penalty", 1e-6, 100);
    if (!v.ok()) return v.status();
    sampling->set_repetition_penalty(static_cast<float>(*v));
  }
  for (const char* field : {"presence_penalty", "frequency_penalty"}) {
    if (body.contains(field) && !body[field].is_null()) {
      auto v = NumberField(body, field, -2, 2);
      if (!v.ok()) return v.status();
      if (std::string_view(field) == "presence_penalty") {
        sampling->set_presence_penalty(static_cast<float>(*v));
      } else {
        sampling->set_frequency_penalty(static_cast<float>(*v));
      }
    }
  }
  if (body.contains("seed") && !body["seed"].is_null()) {
    const json& v = body["seed"];
    if (!v.is_number_integer()) return FieldError("seed", "must be an integer");
    sampling->set_seed(v.is_number_unsigned() ? v.get<uint64_t>() : static_cast<uint64_t>(v.get<int64_t>()));
  }

  const char* max_field = "max_tokens";
  if (endpoint == OpenAiEndpoint::kChatCompletions && body.contains("max_completion_tokens") &&
      !body["max_completion_tokens"].is_null()) {
    max_field = "max_completion_tokens";
  }
  if (body.contains(max_field) && !body[max_field].is_null()) {
    auto v = IntegerField(body, max_field, 1, 1 << 30);
    if (!v.ok()) return v.status();
    r.set_max_tokens(static_cast<int32_t>(*v));
  } else if (endpoint == OpenAiEndpoint::kCompletions) {
    r.set_max_tokens(16);
  }

  if (body.contains("stop") && !body["stop"].is_null()) {
    const json& stop = body["stop"];
    if (stop.is_string()) {
      r.mutable_stop()->add_stop(stop.get<std::string>());
    } else if (stop.is_array()) {
      if (stop.size() > 4) return FieldError("stop", "at most 4 stop sequences");
      for (const auto& s : stop) {
        if (!s.is_string()) return FieldError("stop", "must be a string or an array of strings");
        r.mutable_stop()->add_stop(s.get<std::string>());
      }
    } else {
      return FieldError("stop", "must be a string or an array of strings");
    }
  }
  if (body.contains("ignore_eos") && !body["ignore_eos"].is_null()) {
    if (!body["ignore_eos"].is_boolean()) return FieldError("ignore_eos", "must be a boolean");
    r.mutable_stop()->set_ignore_eos(body["ignore_eos"].get<bool>());
  }
  if (body.contains("n") && !body["n"].is_null()) {
    if (!body["n"].is_number_integer() || body["n"].get<int64_t>() != 1) {
      return FieldError("n", "only n = 1 is supported");
    }
  }
  if (endpoint == OpenAiEndpoint::kCompletions) {
    // Completions: `logprobs: N` asks for the sampled token's logprob and N alternatives.
    if (body.contains("logprobs") && !body["logprobs"].is_null()) {
      auto v = IntegerField(body, "logprobs", 0, kMaxTopLogprobs);
      if (!v.ok()) return v.status();
      r.set_include_logprobs(true);
      r.set_top_logprobs(static_cast<int32_t>(*v));
    }
  } else {
    // Chat: `logprobs: true` plus `top_logprobs: N`; the reasoning of R1-style models comes
    // back apart from the answer, as `reasoning_content`.
    r.set_separate_reasoning(true);
    if (body.contains("logprobs") && !body["logprobs"].is_null()) {
      if (!body["logprobs"].is_boolean()) return FieldError("logprobs", "must be a boolean");
      r.set_include_logprobs(body["logprobs"].get<bool>());
    }
    if (body.contains("top_logprobs") && !body["top_logprobs"].is_null()) {
      auto v = IntegerField(body, "top_logprobs", 0, kMaxTopLogprobs);
      if (!v.ok()) return v.status();
      if (*v > 0 && !r.include_logprobs()) return FieldError("top_logprobs", "needs \"logprobs\": true");
      r.set_top_logprobs(static_cast<int32_t>(*v));
    }
  }
  if (body.contains("stream") && !body["stream"].is_null()) {
    if (!body["stream"].is_boolean()) return FieldError("stream", "must be a boolean");
    out.stream = body["stream"].get<bool>();
  }
  if (body.contains("stream_options") && !body["stream_options"].is_null()) {
    const json& options = body["stream_options"];
    if (!options.is_object()) return FieldError("stream_options", "must be an object");
    if (options.contains("include_usage")) {
      if (!options["include_usage"].is_boolean()) {
        return FieldError("stream_options.include_usage", "must be a boolean");
      }
      out.include_usage_in_stream = options["include_usage"].get<bool>();
    }
  }
  return absl::OkStatus();
}

absl::Status ParsePrompt(const json& body, v1::GenerateRequest& r) {
  if (!body.contains("prompt")) return FieldError("prompt", "is required");
  const json& prompt = body["prompt"];
  if (prompt.is_string()) {
    r.set_prompt(prompt.get<std::string>());
    return absl::OkStatus();
  }
  if (prompt.is_array() && !prompt.empty() && prompt.front().is_number_integer()) {
    for (const auto& id : prompt) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX) {
        return FieldError("prompt", "an array of token ids must hold non-negative integers only");
      }
      r.mutable_token_ids()->add_ids(static_cast<int32_t>(id.get<int64_t>()));
    }
    return absl::OkStatus();
  }
  if (prompt.is_array() && prompt.size() == 1 && prompt.front().is_string()) {
    r.set_prompt(prompt.front().get<std::string>());
    return absl::OkStatus();
  }
  if (prompt.is_array() && prompt.size() > 1) {
    return FieldError("prompt", "batches of prompts are not supported; send one prompt per request");
  }
  return FieldError("prompt", "must be a string, a one-element array of strings, or an array of token ids");
}

absl::Status ParseMessages(const json& body, v1::GenerateRequest& r) {
  if (!body.contains("messages")) return FieldError("messages", "is required");
  const json& messages = body["messages"];
  if (!messages.is_array() || messages.empty()) return FieldError("messages", "must be a non-empty array");
  auto* chat = r.mutable_chat();
  for (size_t i = 0; i < messages.size(); ++i) {
    const json& m = messages[i];
    const std::string where = fmt::format("messages[{}]", i);
    if (!m.is_object()) return FieldError(where, "must be an object");
    if (!m.contains("role") || !m["role"].is_string()) return FieldError(where + ".role", "is required (a string)");
    const std::string role = m["role"].get<std::string>();
    if (role != "system" && role != "user" && role != "assistant" && role != "developer") {
      return FieldError(where + ".role", fmt::format("must be system, user or assistant, got '{}'", role));
    }
    if (!m.contains("content")) return FieldError(where + ".content", "is required");
    std::string content;
    const json& c = m["content"];
    if (c.is_string()) {
      content = c.get<std::string>();
    } else if (c.is_array()) {
      for (size_t k = 0; k < c.size(); ++k) {
        const json& part = c[k];
        if (!part.is_object() || !part.contains("type") || part["type"] != "text" || !part.contains("text") ||
            !part["text"].is_string()) {
          return FieldError(fmt::format("{}.content[{}]", where, k), "only {\"type\": \"text\", \"text\": ...} parts are supported");
        }
        content += part["text"].get<std::string>();
      }
    } else if (!c.is_null()) {
      return FieldError(where + ".content", "must be a string or an array of text parts");
    }
    auto* message = chat->add_messages();
    message->set_role(role == "developer" ? "system" : role);
    message->set_content(std::move(content));
  }
  return absl::OkStatus();
}

std::string ObjectName(OpenAiEndpoint endpoint, bool chunk) {
  if (endpoint == OpenAiEndpoint::kCompletions) return "text_completion";
  return chunk ? "chat.completion.chunk" : "chat.completion";
}

json FinishReasonJson(v1::FinishReason reason) {
  const char* name = OpenAiFinishReason(reason);
  return *name == '\0' ? json(nullptr) : json(name);
}

json UsageJson(const v1::Usage& usage) {
  return json{{"prompt_tokens", usage.prompt_tokens()},
              {"completion_tokens", usage.completion_tokens()},
              {"total_tokens", usage.prompt_tokens() + usage.completion_tokens()},
              {"prompt_tokens_details", {{"cached_tokens", usage.cached_prompt_tokens()}}}};
}

json Utf8Bytes(const std::string& s) {
  json bytes = json::array();
  for (const unsigned char c : s) bytes.push_back(static_cast<int>(c));
  return bytes;
}

// OpenAI's two logprobs shapes for `entries`, or null when logprobs were not asked for.
json LogprobsJson(OpenAiEndpoint endpoint, const CompletionResult& result) {
  if (!result.include_logprobs) return nullptr;
  if (endpoint == OpenAiEndpoint::kCompletions) {
    json tokens = json::array(), token_logprobs = json::array(), top = json::array(), offsets = json::array();
    for (const auto& e : result.logprobs) {
      tokens.push_back(e.token);
      token_logprobs.push_back(e.logprob);
      json alternatives = json::object();
      for (const auto& [token, logprob] : e.top) alternatives[token] = logprob;
      top.push_back(std::move(alternatives));
      offsets.push_back(e.text_offset);
    }
    return json{{"tokens", tokens}, {"token_logprobs", token_logprobs}, {"top_logprobs", top}, {"text_offset", offsets}};
  }
  json content = json::array();
  for (const auto& e : result.logprobs) {
    json top = json::array();
    for (const auto& [token, logprob] : e.top) {
      top.push_back({{"token", token}, {"logprob", logprob}, {"bytes", Utf8Bytes(token)}});
    }
    content.push_back({{"token", e.token}, {"logprob", e.logprob}, {"bytes", Utf8Bytes(e.token)}, {"top_logprobs", top}});
  }
  return json{{"content", content}, {"refusal", nullptr}};
}

std::string TokenIdSpelling(int32_t id) { return fmt::format("token_id:{}", id); }

}  // namespace

void AppendLogprobs(const v1::GenerateResponse& response, int64_t text_before, std::vector<TokenLogprobEntry>& out) {
  int64_t offset = text_before;
  const bool one_token = response.logprobs_size() == 1 && !response.text().empty();
  for (const v1::TokenLogprob& lp : response.logprobs()) {
    TokenLogprobEntry e;
    e.logprob = lp.logprob();
    e.text_offset = offset;
    for (const v1::TopLogprob& t : lp.top()) {
      if (t.token_id() == lp.token_id() && !t.token().empty()) e.token = t.token();
    }
    if (e.token.empty()) e.token = one_token ? response.text() : TokenIdSpelling(lp.token_id());
    for (const v1::TopLogprob& t : lp.top()) {
      std::string token = !t.token().empty() ? t.token() : t.token_id() == lp.token_id() ? e.token : TokenIdSpelling(t.token_id());
      e.top.emplace_back(std::move(token), t.logprob());
    }
    if (one_token) offset += static_cast<int64_t>(e.token.size());
    out.push_back(std::move(e));
  }
}

absl::StatusOr<OpenAiRequest> ParseOpenAiRequest(OpenAiEndpoint endpoint, std::string_view body) {
  if (const int64_t bad = FirstInvalidUtf8Byte(body); bad >= 0) {
    return absl::InvalidArgumentError(fmt::format("body: invalid UTF-8 at byte offset {}", bad));
  }
  json parsed;
  // nlohmann::json reports syntax errors by throwing; parse without exceptions and
  // re-parse with them only to recover the position for the message.
  parsed = json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) {
    std::string what = "malformed JSON";
    try {
      const json reparsed = json::parse(body.begin(), body.end());
      (void)reparsed;
    } catch (const json::parse_error& e) {
      what = fmt::format("malformed JSON at byte {}: {}", e.byte, e.what());
    } catch (const json::exception& e) {
      // Not only syntax: a number past double's range (1e400) is out_of_range.
      what = fmt::format("malformed JSON: {}", e.what());
    }
    return absl::InvalidArgumentError(fmt::format("body: {}", what));
  }
  if (!parsed.is_object()) return absl::InvalidArgumentError("body: must be a JSON object");
  OpenAiRequest out;
  absl::Status status = ParseCommon(parsed, endpoint, out);
  if (status.ok()) {
    status = endpoint == OpenAiEndpoint::kCompletions ? ParsePrompt(parsed, out.request)
                                                      : ParseMessages(parsed, out.request);
  }
  if (!status.ok()) return status;
  return out;
}

const char* OpenAiFinishReason(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_STOP: return "stop";
    case v1::FINISH_REASON_LENGTH: return "length";
    default: return "";
  }
}

std::string CompletionResponseJson(OpenAiEndpoint endpoint, const CompletionResult& result) {
  json choice = {{"index", 0},
                 {"finish_reason", FinishReasonJson(result.finish_reason)},
                 {"logprobs", LogprobsJson(endpoint, result)}};
  if (endpoint == OpenAiEndpoint::kCompletions) {
    choice["text"] = result.text;
  } else {
    choice["message"] = {{"role", "assistant"}, {"content", result.text}};
    if (!result.reasoning_text.empty()) choice["message"]["reasoning_content"] = result.reasoning_text;
  }
  json out = {{"id", result.id},
              {"object", ObjectName(endpoint, false)},
              {"created", result.created},
              {"model", result.model},
              {"choices", json::array({choice})}};
  if (result.has_usage) out["usage"] = UsageJson(result.usage);
  return out.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string CompletionChunkJson(OpenAiEndpoint endpoint, const CompletionResult& delta, bool first) {
  json choice = {{"index", 0},
                 {"finish_reason", FinishReasonJson(delta.finish_reason)},
                 {"logprobs", LogprobsJson(endpoint, delta)}};
  if (endpoint == OpenAiEndpoint::kCompletions) {
    choice["text"] = delta.text;
  } else {
    json d = json::object();
    if (first) d["role"] = "assistant";
    // A step of pure reasoning carries only reasoning_content, as DeepSeek's API streams it.
    if (!delta.reasoning_text.empty()) d["reasoning_content"] = delta.reasoning_text;
    if (delta.reasoning_text.empty() || !delta.text.empty()) d["content"] = delta.text;
    choice["delta"] = d;
  }
  json out = {{"id", delta.id},
              {"object", ObjectName(endpoint, true)},
              {"created", delta.created},
              {"model", delta.model},
              {"choices", json::array({choice})}};
  return out.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string UsageChunkJson(OpenAiEndpoint endpoint, const CompletionResult& result) {
  json out = {{"id", result.id},
              {"object", ObjectName(endpoint, true)},
              {"created", result.created},
              {"model", result.model},
              {"choices", json::array()},
              {"usage", UsageJson(result.usage)}};
  return out.dump(-1, ' ', false, json::error_handler_t::replace);
}

HttpError OpenAiError(int http_status, const std::string& message, const std::string& type,
                      const std::string& code) {
  json error = {{"message", message}, {"type", type}, {"param", nullptr}, {"code", code.empty() ? json(nullptr) : json(code)}};
  return HttpError{http_status, json{{"error", error}}.dump(-1, ' ', false, json::error_handler_t::replace)};
}

HttpError OpenAiError(const grpc::Status& status) {
  int http = 500;
  std::string type = "server_error";
  std::string code;
  switch (status.error_code()) {
    case grpc::StatusCode::INVALID_ARGUMENT: http = 400, type = "invalid_request_error"; break;
    case grpc::StatusCode::OUT_OF_RANGE: http = 400, type = "invalid_request_error"; break;
    case grpc::StatusCode::NOT_FOUND: http = 404, type = "invalid_request_error", code = "model_not_found"; break;
    case grpc::StatusCode::UNAUTHENTICATED: http = 401, type = "authentication_error", code = "invalid_api_key"; break;
    case grpc::StatusCode::PERMISSION_DENIED: http = 403, type = "permission_error"; break;
    case grpc::StatusCode::RESOURCE_EXHAUSTED: http = 429, type = "rate_limit_error", code = "rate_limit_exceeded"; break;
    case grpc::StatusCode::UNAVAILABLE: http = 503, type = "server_error", code = "unavailable"; break;
    case grpc::StatusCode::DEADLINE_EXCEEDED: http = 504, type = "server_error", code = "timeout"; break;
    case grpc::StatusCode::CANCELLED: http = 499, type = "server_error", code = "cancelled"; break;
    default: break;
  }
  HttpError error = OpenAiError(http, status.error_message(), type, code);
  // INVALID_ARGUMENT messages start with the field ("messages[0].role: ..."): expose it
  // as OpenAI's `param`.
  if (type == "invalid_request_error" && status.error_code() == grpc::StatusCode::INVALID_ARGUMENT) {
    const std::string& m = status.error_message();
    const size_t colon = m.find(": ");
    if (colon != std::string::npos && m.find(' ') >= colon) {
      json body = json::parse(error.body);
      body["error"]["param"] = m.substr(0, colon);
      error.body = body.dump(-1, ' ', false, json::error_handler_t::replace);
    }
  }
  return error;
}

}  // namespace shoal::router
