#include "worker/tokenizer/chat_template.h"

#include <fmt/format.h>

#include <vector>

#include "worker/tokenizer/utf8.h"

namespace shoal::worker {
namespace {

constexpr std::string_view kSmolLM2System =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";
constexpr std::string_view kQwen2System = "You are a helpful assistant.";
// The template writes {{bos_token}}; DeepSeek's tokenizer_config.json names this token.
constexpr std::string_view kDeepSeekBos = "<｜begin▁of▁sentence｜>";

// Python's str.isspace(), which is what Jinja's `trim` filter strips.
bool IsPythonSpace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

std::string_view JinjaTrim(std::string_view s) {
  size_t begin = 0;
  while (begin < s.size()) {
    size_t next = begin;
    if (!IsPythonSpace(NextCodePoint(s, &next))) break;
    begin = next;
  }
  size_t end = s.size();
  while (end > begin) {
    size_t start = end - 1;
    while (start > begin && (static_cast<uint8_t>(s[start]) & 0xC0) == 0x80) --start;
    size_t pos = start;
    if (!IsPythonSpace(NextCodePoint(s, &pos))) break;
    end = start;
  }
  return s.substr(begin, end - begin);
}

}  // namespace

// Idea: the families we serve differ in a few fixed strings, so recognising the template by
// its markers and rendering in C++ is exact and needs no Jinja engine.
absl::StatusOr<ChatTemplate> ChatTemplate::FromSource(std::string_view jinja_source) {
  if (jinja_source.empty()) return ChatTemplate(Family::kChatML);
  const auto has = [&](std::string_view marker) {
    return jinja_source.find(marker) != std::string_view::npos;
  };
  if (has("<|start_header_id|>") && has("<|eot_id|>")) {
    if (has("Cutting Knowledge Date")) {
      return absl::UnimplementedError(
          "chat template: the Llama 3.1+ template (date and tools header) is not supported; "
          "only the Llama 3 one");
    }
    return ChatTemplate(Family::kLlama3);
  }
  if (has("<|im_start|>")) {
    if (has("named SmolLM")) return ChatTemplate(Family::kSmolLM2);
    if (has("You are Qwen")) {
      return absl::UnimplementedError(
          "chat template: the Qwen2.5 template (default system 'You are Qwen...', tools) is "
          "not supported; only the Qwen2 one");
    }
    if (has(kQwen2System)) return ChatTemplate(Family::kQwen2);
    return ChatTemplate(Family::kChatML);
  }
  if (has("<｜User｜>") && has("<｜Assistant｜>")) {
    // R1's templates strip past reasoning (split('</think>')); the ones since 2025-02 also
    // end the generation prompt with <think>\n.
    if (has("</think>")) return ChatTemplate(Family::kDeepSeekR1, has("<｜Assistant｜><think>"));
    return ChatTemplate(Family::kDeepSeekV3);
  }
  std::vector<std::string_view> found;
  for (std::string_view m : {"<|im_end|>", "<|end_header_id|>", "[INST]", "<start_of_turn>",
                             "<｜User｜>", "<|user|>", "bos_token", "messages"}) {
    if (has(m)) found.push_back(m);
  }
  return absl::InvalidArgumentError(fmt::format(
      "chat template not recognised: no <|im_start|> (ChatML, SmolLM2, Qwen2), "
      "<|start_header_id|>+<|eot_id|> (Llama 3) or <｜User｜>+<｜Assistant｜> (DeepSeek) "
      "marker; markers found: [{}]",
      fmt::join(found, ", ")));
}

ChatTemplate ChatTemplate::ForFamily(Family family) {
  return ChatTemplate(family, family == Family::kDeepSeekR1);
}

// DeepSeek's template gathers every system message (joined by a blank line) right after
// BOS, wherever they stand in the list, then writes the turns with no separators; content
// is not trimmed.
absl::StatusOr<std::string> ChatTemplate::RenderDeepSeek(std::span<const ChatTurn> messages,
                                                         bool add_generation_prompt) const {
  std::string out(kDeepSeekBos);
  bool first_system = true;
  for (const ChatTurn& m : messages) {
    if (m.role != "system") continue;
    if (!first_system) out += "\n\n";
    out += m.content;
    first_system = false;
  }
  for (const ChatTurn& m : messages) {
    if (m.role == "user") {
      out += "<｜User｜>";
      out += m.content;
    } else if (m.role == "assistant") {
      std::string_view content = m.content;
      if (family_ == Family::kDeepSeekR1) {
        // Python's content.split('</think>')[-1]: what follows the last closing tag.
        const size_t end = content.rfind("</think>");
        if (end != std::string_view::npos) content.remove_prefix(end + std::string_view("</think>").size());
      }
      out += "<｜Assistant｜>";
      out += content;
      out += "<｜end▁of▁sentence｜>";
    }
  }
  if (add_generation_prompt) {
    out += "<｜Assistant｜>";
    if (think_prefix_) out += "<think>\n";
  }
  return out;
}

absl::StatusOr<std::string> ChatTemplate::Render(std::span<const ChatTurn> messages,
                                                 bool add_generation_prompt) const {
  if (messages.empty()) return absl::InvalidArgumentError("messages: the list is empty");
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    if (role != "system" && role != "user" && role != "assistant") {
      return absl::InvalidArgumentError(fmt::format(
          "messages[{}].role: '{}' is not one of system, user, assistant", i, role));
    }
  }
  if (family_ == Family::kDeepSeekV3 || family_ == Family::kDeepSeekR1) {
    return RenderDeepSeek(messages, add_generation_prompt);
  }
  std::string out;
  if (family_ == Family::kLlama3) {
    out = "<|begin_of_text|>";
    for (const ChatTurn& m : messages) {
      out += "<|start_header_id|>";
      out += m.role;
      out += "<|end_header_id|>\n\n";
      out += JinjaTrim(m.content);
      out += "<|eot_id|>";
    }
    if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
    return out;
  }
  // ChatML and its descendants.
  if (messages[0].role != "system") {
    if (family_ == Family::kSmolLM2) {
      out += fmt::format("<|im_start|>system\n{}<|im_end|>\n", kSmolLM2System);
    } else if (family_ == Family::kQwen2) {
      out += fmt::format("<|im_start|>system\n{}<|im_end|>\n", kQwen2System);
    }
  }
  for (const ChatTurn& m : messages) {
    out += "<|im_start|>";
    out += m.role;
    out += "\n";
    out += m.content;
    out += "<|im_end|>\n";
  }
  if (add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

}  // namespace shoal::worker
