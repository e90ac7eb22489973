#include "worker/tokenizer/pre_tokenizer.h"

#include <algorithm>
#include <utility>

#include "worker/common/status_macros.h"

namespace shoal::worker {

std::string EscapeRegexLiteral(std::string_view literal) {
  std::string out;
  for (char c : literal) {
    const auto u = static_cast<uint8_t>(c);
    const bool word = (u >= '0' && u <= '9') || (u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z');
    if (u < 0x80 && !word) {
      if (c == '\n') { out += "\\n"; continue; }
      if (c == '\t') { out += "\\t"; continue; }
      if (c == '\r') { out += "\\r"; continue; }
      if (u >= 0x20) out.push_back('\\');
    }
    out.push_back(c);
  }
  return out;
}

absl::Status PreTokenizer::AddSplit(std::string_view regex, SplitBehavior behavior, bool invert) {
  ASSIGN_OR_RETURN(std::unique_ptr<OnigPattern> pattern, OnigPattern::Compile(regex));
  steps_.push_back(Step{std::move(pattern), behavior, invert, false});
  return absl::OkStatus();
}

absl::Status PreTokenizer::AddDigits(bool individual_digits) {
  // HF splits on char::is_numeric (general category N), one match per character; runs of
  // them become one piece through the Contiguous behaviour.
  return AddSplit(R"(\p{N})",
                  individual_digits ? SplitBehavior::kIsolated : SplitBehavior::kContiguous,
                  /*invert=*/false);
}

absl::Status PreTokenizer::AddByteLevel(bool add_prefix_space, bool use_regex) {
  Step step;
  step.prefix_space = add_prefix_space;
  if (use_regex) {
    ASSIGN_OR_RETURN(std::unique_ptr<OnigPattern> pattern, OnigPattern::Compile(kGpt2SplitPattern));
    step.pattern = std::move(pattern);
  }
  steps_.push_back(std::move(step));
  byte_level_ = true;
  return absl::OkStatus();
}

// Turns the matches of one step's pattern in `piece` into the next pieces, following HF's
// delimiter behaviours over the alternating (range, is_match) list.
void PreTokenizer::ApplyStep(const Step& step, std::string_view piece,
                             std::vector<std::string>* out) {
  std::string prefixed;
  if (step.prefix_space && (piece.empty() || piece[0] != ' ')) {
    prefixed = " ";
    prefixed.append(piece);
    piece = prefixed;
  }
  if (step.pattern == nullptr) {
    if (!piece.empty()) out->emplace_back(piece);
    return;
  }
  struct Range {
    size_t begin, end;
    bool is_match;
  };
  std::vector<Range> ranges;
  size_t prev = 0;
  for (auto [b, e] : step.pattern->FindAll(piece)) {
    if (prev != b) ranges.push_back({prev, b, false});
    ranges.push_back({b, e, true});
    prev = e;
  }
  if (prev != piece.size()) ranges.push_back({prev, piece.size(), false});
  if (step.invert) {
    for (Range& r : ranges) r.is_match = !r.is_match;
  }

  // Each entry: a range and whether it is removed.
  std::vector<std::pair<Range, bool>> kept;
  switch (step.behavior) {
    case SplitBehavior::kRemoved:
      for (const Range& r : ranges) kept.push_back({r, r.is_match});
      break;
    case SplitBehavior::kIsolated:
      for (const Range& r : ranges) kept.push_back({r, false});
      break;
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const Range& r : ranges) {
        if (r.is_match && !previous_match && !kept.empty()) {
          kept.back().first.end = r.end;
        } else {
          kept.push_back({r, false});
        }
        previous_match = r.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      // Same walk from the right: a match joins the piece after it.
      bool previous_match = false;
      for (auto it = ranges.rbegin(); it != ranges.rend(); ++it) {
        if (it->is_match && !previous_match && !kept.empty()) {
          kept.back().first.begin = it->begin;
        } else {
          kept.push_back({*it, false});
        }
        previous_match = it->is_match;
      }
      std::reverse(kept.begin(), kept.end());
      break;
    }
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (const Range& r : ranges) {
        if (r.is_match == previous_match && !kept.empty()) {
          kept.back().first.end = r.end;
        } else {
          kept.push_back({r, false});
        }
        previous_match = r.is_match;
      }
      break;
    }
  }
  for (const auto& [r, removed] : kept) {
    if (!removed && r.end > r.begin) out->emplace_back(piece.substr(r.begin, r.end - r.begin));
  }
}

void PreTokenizer::Split(std::string_view text, std::vector<std::string>* pieces) const {
  std::vector<std::string> current;
  current.emplace_back(text);
  std::vector<std::string> next;
  for (const Step& step : steps_) {
    next.clear();
    for (const std::string& piece : current) ApplyStep(step, piece, &next);
    std::swap(current, next);
  }
  for (std::string& p : current) {
    if (!p.empty()) pieces->push_back(std::move(p));
  }
}

}  // namespace shoal::worker
