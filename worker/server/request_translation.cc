#include "worker/server/request_translation.h"

#include <fmt/format.h>

#include <cmath>

#include "worker/common/status_macros.h"

namespace shoal::worker {
namespace {

absl::Status Invalid(std::string message) { return absl::InvalidArgumentError(std::move(message)); }

absl::Status CheckUtf8(std::string_view text, std::string_view field) {
  if (auto offset = FindInvalidUtf8(text)) {
    return Invalid(fmt::format("{} is not valid UTF-8 (bad byte 0x{:02x} at offset {})", field,
                               static_cast<unsigned char>(text[*offset]), *offset));
  }
  return absl::OkStatus();
}

// Floats from the wire may be NaN or infinite; every range check below rejects those too
// because comparisons with NaN are false.
absl::Status CheckRange(float value, float low, float high, std::string_view field,
                        std::string_view range_text) {
  if (!(value >= low && value <= high)) {
    return Invalid(fmt::format("{} must be in {}, got {}", field, range_text, value));
  }
  return absl::OkStatus();
}

absl::StatusOr<SamplingOptions> TranslateSampling(const v1::SamplingParams& p) {
  SamplingOptions s;
  if (!(p.temperature() >= 0.0f) || std::isinf(p.temperature())) {
    return Invalid(fmt::format("sampling.temperature must be >= 0 (0 = greedy), got {}", p.temperature()));
  }
  s.temperature = p.temperature();
  if (p.top_k() < 0) {
    return Invalid(fmt::format("sampling.top_k must be >= 0 (0 = off), got {}", p.top_k()));
  }
  s.top_k = p.top_k();
  // proto3 cannot tell "unset" from 0: 0 means off, exactly like 1.
  RETURN_IF_ERROR(CheckRange(p.top_p(), 0.0f, 1.0f, "sampling.top_p", "(0, 1] (0 = off)"));
  s.top_p = p.top_p() == 0.0f ? 1.0f : p.top_p();
  RETURN_IF_ERROR(CheckRange(p.min_p(), 0.0f, 1.0f, "sampling.min_p", "[0, 1]"));
  s.min_p = p.min_p();
  // 0 is proto3's "unset"; the neutral value is 1.
  if (p.repetition_penalty() == 0.0f) {
    s.repetition_penalty = 1.0f;
  } else if (!(p.repetition_penalty() > 0.0f) || std::isinf(p.repetition_penalty())) {
    return Invalid(fmt::format("sampling.repetition_penalty must be > 0 (1 = off), got {}",
                               p.repetition_penalty()));
  } else {
    s.repetition_penalty = p.repetition_penalty();
  }
  RETURN_IF_ERROR(CheckRange(p.presence_penalty(), -2.0f, 2.0f, "sampling.presence_penalty", "[-2, 2]"));
  s.presence_penalty = p.presence_penalty();
  RETURN_IF_ERROR(CheckRange(p.frequency_penalty(), -2.0f, 2.0f, "sampling.frequency_penalty", "[-2, 2]"));
  s.frequency_penalty = p.frequency_penalty();
  if (p.has_seed()) s.seed = p.seed();
  return s;
}

absl::StatusOr<StopOptions> TranslateStop(const v1::StopConditions& c, int32_t max_tokens) {
  StopOptions s;
  for (int i = 0; i < c.stop_size(); ++i) {
    const std::string field = fmt::format("stop.stop[{}]", i);
    if (c.stop(i).empty()) return Invalid(field + " must not be empty");
    RETURN_IF_ERROR(CheckUtf8(c.stop(i), field));
    s.stop_strings.push_back(c.stop(i));
  }
  for (int i = 0; i < c.stop_token_ids_size(); ++i) {
    if (c.stop_token_ids(i) < 0) {
      return Invalid(fmt::format("stop.stop_token_ids[{}] must be >= 0, got {}", i, c.stop_token_ids(i)));
    }
    s.stop_token_ids.push_back(c.stop_token_ids(i));
  }
  s.ignore_eos = c.ignore_eos();
  if (max_tokens < 0) return Invalid(fmt::format("max_tokens must be >= 0 (0 = up to the context length), got {}", max_tokens));
  s.max_tokens = max_tokens;
  return s;
}

absl::StatusOr<PromptInput> TranslateInput(const v1::GenerateRequest& r) {
  PromptInput in;
  switch (r.input_case()) {
    case v1::GenerateRequest::kPrompt:
      in.kind = PromptInput::Kind::kText;
      if (r.prompt().empty()) return Invalid("prompt must not be empty");
      RETURN_IF_ERROR(CheckUtf8(r.prompt(), "prompt"));
      in.text = r.prompt();
      return in;
    case v1::GenerateRequest::kChat: {
      in.kind = PromptInput::Kind::kChat;
      const auto& messages = r.chat().messages();
      if (messages.empty()) return Invalid("chat.messages must not be empty");
      for (int i = 0; i < messages.size(); ++i) {
        const auto& m = messages[i];
        if (m.role() != "system" && m.role() != "user" && m.role() != "assistant") {
          // The role is echoed only when it is printable; a broken one is named by length.
          std::string shown = FindInvalidUtf8(m.role()) ? fmt::format("<{} invalid bytes>", m.role().size())
                                                        : fmt::format("'{}'", m.role());
          return Invalid(fmt::format("chat.messages[{}].role must be one of system, user, assistant; got {}",
                                     i, shown));
        }
        RETURN_IF_ERROR(CheckUtf8(m.content(), fmt::format("chat.messages[{}].content", i)));
        in.chat.push_back(ChatTurn{m.role(), m.content()});
      }
      return in;
    }
    case v1::GenerateRequest::kTokenIds: {
      in.kind = PromptInput::Kind::kTokenIds;
      const auto& ids = r.token_ids().ids();
      if (ids.empty()) return Invalid("token_ids.ids must not be empty");
      for (int i = 0; i < ids.size(); ++i) {
        if (ids[i] < 0) return Invalid(fmt::format("token_ids.ids[{}] must be >= 0, got {}", i, ids[i]));
      }
      in.token_ids.assign(ids.begin(), ids.end());
      return in;
    }
    case v1::GenerateRequest::INPUT_NOT_SET:
      break;
  }
  return Invalid("input must be set: one of prompt, chat, token_ids");
}

}  // namespace

std::optional<size_t> FindInvalidUtf8(std::string_view text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    int len;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
      cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      cp = c & 0x07;
    } else {
      return i;  // a continuation byte, an overlong lead (C0, C1) or F5..FF
    }
    if (i + len > n) return i;
    for (int k = 1; k < len; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    const bool overlong = (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000);
    if (overlong || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) return i;
    i += len;
  }
  return std::nullopt;
}

absl::StatusOr<TranslatedRequest> TranslateGenerateRequest(const v1::GenerateRequest& request) {
  TranslatedRequest t;
  RETURN_IF_ERROR(CheckUtf8(request.model(), "model"));
  t.model = request.model();
  auto input = TranslateInput(request);
  if (!input.ok()) return input.status();
  t.input = *std::move(input);

  auto sampling = TranslateSampling(request.sampling());
  if (!sampling.ok()) return sampling.status();
  auto stop = TranslateStop(request.stop(), request.max_tokens());
  if (!stop.ok()) return stop.status();

  if (request.request_id().size() > 256) {
    return Invalid(fmt::format("request_id must be at most 256 bytes, got {}", request.request_id().size()));
  }
  RETURN_IF_ERROR(CheckUtf8(request.request_id(), "request_id"));
  if (request.top_logprobs() < 0 || request.top_logprobs() > 20) {
    return Invalid(fmt::format("top_logprobs must be in [0, 20], got {}", request.top_logprobs()));
  }
  if (request.top_logprobs() > 0 && !request.include_logprobs()) {
    return Invalid("top_logprobs needs include_logprobs = true");
  }

  GenerationRequest& e = t.engine_request;
  e.request_id = request.request_id();
  e.sampling = *std::move(sampling);
  e.stop = *std::move(stop);
  e.include_logprobs = request.include_logprobs();
  e.top_logprobs = request.top_logprobs();
  return t;
}

v1::FinishReason ToProtoFinishReason(FinishReason reason) {
  switch (reason) {
    case FinishReason::kNone: return v1::FINISH_REASON_UNSPECIFIED;
    case FinishReason::kStop: return v1::FINISH_REASON_STOP;
    case FinishReason::kLength: return v1::FINISH_REASON_LENGTH;
    case FinishReason::kCancelled: return v1::FINISH_REASON_CANCELLED;
    case FinishReason::kError: return v1::FINISH_REASON_ERROR;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

v1::GenerateResponse ToProtoResponse(const GenerationOutput& output) {
  v1::GenerateResponse r;
  r.set_request_id(output.request_id);
  r.mutable_token_ids()->Add(output.token_ids.begin(), output.token_ids.end());
  r.set_text(output.text);
  for (const TokenLogprob& lp : output.logprobs) {
    v1::TokenLogprob* p = r.add_logprobs();
    p->set_token_id(lp.token_id);
    p->set_logprob(lp.logprob);
    for (const auto& [id, logprob] : lp.top) {
      v1::TopLogprob* top = p->add_top();
      top->set_token_id(id);
      top->set_logprob(logprob);
    }
  }
  if (output.finish != FinishReason::kNone) {
    r.set_finish_reason(ToProtoFinishReason(output.finish));
    r.set_matched_stop(output.matched_stop);
    v1::Usage* u = r.mutable_usage();
    u->set_prompt_tokens(output.prompt_tokens);
    u->set_completion_tokens(output.completion_tokens);
    u->set_cached_prompt_tokens(output.cached_prompt_tokens);
    u->set_time_to_first_token_seconds(output.time_to_first_token_seconds);
  }
  return r;
}

void SeparateReasoning(ReasoningSplitter* splitter, bool last, v1::GenerateResponse* response) {
  ReasoningSplitter::Piece piece = splitter->Push(response->text());
  if (last) {
    ReasoningSplitter::Piece rest = splitter->Flush();
    piece.reasoning += rest.reasoning;
    piece.text += rest.text;
  }
  response->set_text(std::move(piece.text));
  response->set_reasoning_text(std::move(piece.reasoning));
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  const absl::string_view message = status.message();
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(message.data(), message.size()));
}

}  // namespace shoal::worker
