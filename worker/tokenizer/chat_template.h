#pragma once
// Chat prompt formatting for the families we serve. We do not embed a Jinja engine: the
// template source from the model files is recognised by its markers and rendered by C++
// that reproduces it exactly (pinned by tests against HF apply_chat_template output).
#include <span>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace shoal::worker {

struct ChatTurn {
  std::string role;  // system | user | assistant
  std::string content;
};

class ChatTemplate {
 public:
  // kDeepSeekV3: <｜begin▁of▁sentence｜>{systems}<｜User｜>…<｜Assistant｜>…<｜end▁of▁sentence｜>.
  // kDeepSeekR1 (R1 and its distills): the same, with past assistant turns cut to the text
  // after their last </think>, and (in the 2025-02 templates) a generation prompt that
  // already opens the reasoning: <｜Assistant｜><think>\n.
  enum class Family { kChatML, kSmolLM2, kLlama3, kQwen2, kDeepSeekV3, kDeepSeekR1 };

  // Recognises `jinja_source` (from GGUF tokenizer.chat_template or tokenizer_config.json);
  // an empty source means plain ChatML. Unknown templates are an error naming the markers found.
  static absl::StatusOr<ChatTemplate> FromSource(std::string_view jinja_source);
  // For kDeepSeekR1 the generation prompt opens the reasoning (the current R1 templates).
  static ChatTemplate ForFamily(Family family);

  // INVALID_ARGUMENT naming the message index for an unknown role or empty list.
  absl::StatusOr<std::string> Render(std::span<const ChatTurn> messages,
                                     bool add_generation_prompt = true) const;
  Family family() const { return family_; }
  // The model writes a <think>…</think> section before its answer (DeepSeek-R1 family).
  bool reasoning() const { return family_ == Family::kDeepSeekR1; }
  // The generation prompt ends with <think>\n, so the model's output starts inside the
  // reasoning and carries only the closing tag.
  bool prompt_opens_reasoning() const { return think_prefix_; }

 private:
  explicit ChatTemplate(Family f, bool think_prefix = false) : family_(f), think_prefix_(think_prefix) {}
  absl::StatusOr<std::string> RenderDeepSeek(std::span<const ChatTurn> messages,
                                             bool add_generation_prompt) const;
  Family family_;
  bool think_prefix_ = false;
};

}  // namespace shoal::worker
