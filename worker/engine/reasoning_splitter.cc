#include "worker/engine/reasoning_splitter.h"

namespace shoal::worker {
namespace {

constexpr std::string_view kOpenTag = "<think>";
constexpr std::string_view kCloseTag = "</think>";

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

size_t FirstNonSpace(std::string_view s) {
  size_t i = 0;
  while (i < s.size() && IsSpace(s[i])) ++i;
  return i;
}

std::string_view TrimTrailingSpace(std::string_view s) {
  while (!s.empty() && IsSpace(s.back())) s.remove_suffix(1);
  return s;
}

// The length of the longest tail of `s` that is a proper prefix of `tag` (it may become
// the tag when more text comes).
size_t TagPrefixAtEnd(std::string_view s, std::string_view tag) {
  for (size_t n = std::min(s.size(), tag.size() - 1); n > 0; --n) {
    if (s.substr(s.size() - n) == tag.substr(0, n)) return n;
  }
  return 0;
}

}  // namespace

ReasoningSplitter::ReasoningSplitter(bool starts_in_reasoning)
    : state_(State::kOpening), starts_in_reasoning_(starts_in_reasoning) {}

ReasoningSplitter::Piece ReasoningSplitter::Push(std::string_view piece) {
  pending_.append(piece);
  Piece out;
  Drain(&out, /*final=*/false);
  return out;
}

ReasoningSplitter::Piece ReasoningSplitter::Flush() {
  Piece out;
  Drain(&out, /*final=*/true);
  return out;
}

// A small state machine over `pending_`: each state consumes what it can decide and
// returns when it needs more text (or, with `final`, decides with what it has).
void ReasoningSplitter::Drain(Piece* out, bool final) {
  while (true) {
    switch (state_) {
      case State::kOpening: {
        // Does the output open with <think> (after whitespace)?
        const size_t i = FirstNonSpace(pending_);
        const std::string_view rest = std::string_view(pending_).substr(i);
        if (rest.starts_with(kOpenTag)) {
          pending_.erase(0, i + kOpenTag.size());
          state_ = State::kReasoningStart;
          break;
        }
        if (!final && kOpenTag.starts_with(rest)) return;  // only whitespace or part of the tag yet
        state_ = starts_in_reasoning_ ? State::kReasoningStart : State::kAnswer;
        break;
      }
      case State::kReasoningStart:
      case State::kAnswerStart: {
        const size_t i = FirstNonSpace(pending_);
        pending_.erase(0, i);
        if (pending_.empty()) return;
        state_ = state_ == State::kReasoningStart ? State::kReasoning : State::kAnswer;
        break;
      }
      case State::kReasoning: {
        const size_t close = pending_.find(kCloseTag);
        if (close != std::string::npos) {
          out->reasoning += TrimTrailingSpace(std::string_view(pending_).substr(0, close));
          pending_.erase(0, close + kCloseTag.size());
          state_ = State::kAnswerStart;
          break;
        }
        if (final) {  // the reasoning never closed (max_tokens, a stop): it is all reasoning
          out->reasoning += pending_;
          pending_.clear();
          return;
        }
        // Hold back a possible start of </think> and the whitespace before it.
        size_t emit = pending_.size() - TagPrefixAtEnd(pending_, kCloseTag);
        while (emit > 0 && IsSpace(pending_[emit - 1])) --emit;
        out->reasoning.append(pending_, 0, emit);
        pending_.erase(0, emit);
        return;
      }
      case State::kAnswer:
        out->text += pending_;
        pending_.clear();
        return;
    }
  }
}

}  // namespace shoal::worker
