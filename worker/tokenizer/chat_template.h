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
  enum class Family { kChatML, kSmolLM2, kLlama3, kQwen2 };

  // Recognises `jinja_source` (from GGUF tokenizer.chat_template or tokenizer_config.json);
  // an empty source means plain ChatML. Unknown templates are an error naming the markers found.
  static absl::StatusOr<ChatTemplate> FromSource(std::string_view jinja_source);
  static ChatTemplate ForFamily(Family family);

  // INVALID_ARGUMENT naming the message index for an unknown role or empty list.
  absl::StatusOr<std::string> Render(std::span<const ChatTurn> messages,
                                     bool add_generation_prompt = true) const;
  Family family() const { return family_; }

 private:
  explicit ChatTemplate(Family f) : family_(f) {}
  Family family_;
};

}  // namespace shoal::worker
