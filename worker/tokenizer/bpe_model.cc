#include "worker/tokenizer/bpe_model.h"

#include <fmt/format.h>

#include <queue>

#include "worker/tokenizer/utf8.h"

namespace shoal::worker {

BpeModel::BpeModel(BpeModel&& other) noexcept
    : vocab_(std::move(other.vocab_)),
      id_to_token_(std::move(other.id_to_token_)),
      merges_(std::move(other.merges_)),
      options_(std::move(other.options_)),
      unk_id_(other.unk_id_) {}

BpeModel& BpeModel::operator=(BpeModel&& other) noexcept {
  vocab_ = std::move(other.vocab_);
  id_to_token_ = std::move(other.id_to_token_);
  merges_ = std::move(other.merges_);
  options_ = std::move(other.options_);
  unk_id_ = other.unk_id_;
  std::lock_guard<std::mutex> lock(cache_mutex_);
  cache_.clear();
  return *this;
}

absl::StatusOr<BpeModel> BpeModel::Create(
    TokenIdMap vocab, const std::vector<std::pair<std::string, std::string>>& merges,
    BpeModelOptions options, std::vector<std::string> id_to_token) {
  BpeModel m;
  int32_t max_id = -1;
  for (const auto& [token, id] : vocab) {
    if (id < 0) return absl::InvalidArgumentError(fmt::format("vocab['{}']: negative id {}", token, id));
    max_id = std::max(max_id, id);
  }
  // Ids may leave gaps, but not so many that a hostile file makes us allocate gigabytes.
  if (static_cast<size_t>(max_id) > 2 * vocab.size() + 65536) {
    return absl::InvalidArgumentError(fmt::format(
        "vocab: id {} is far beyond the {} entries the vocabulary has", max_id, vocab.size()));
  }
  if (!id_to_token.empty()) {
    if (id_to_token.size() < static_cast<size_t>(max_id + 1)) {
      return absl::InvalidArgumentError("vocab: id list shorter than the largest id");
    }
    m.id_to_token_ = std::move(id_to_token);
  } else {
    m.id_to_token_.resize(static_cast<size_t>(max_id + 1));
    for (const auto& [token, id] : vocab) m.id_to_token_[id] = token;
  }
  m.merges_.reserve(merges.size());
  std::string joined;
  for (size_t i = 0; i < merges.size(); ++i) {
    const auto& [a, b] = merges[i];
    auto ia = vocab.find(a);
    auto ib = vocab.find(b);
    if (ia == vocab.end() || ib == vocab.end()) {
      return absl::InvalidArgumentError(fmt::format(
          "merges[{}]: '{}' is not in the vocabulary", i, ia == vocab.end() ? a : b));
    }
    joined = a;
    joined += b;
    auto ij = vocab.find(joined);
    if (ij == vocab.end()) {
      return absl::InvalidArgumentError(
          fmt::format("merges[{}]: merged token '{}' is not in the vocabulary", i, joined));
    }
    // A pair listed twice keeps its last rank, as HF's map building does.
    m.merges_.insert_or_assign(PairKey(ia->second, ib->second),
                               Merge{static_cast<int32_t>(i), ij->second});
  }
  if (options.unk_token) {
    auto it = vocab.find(*options.unk_token);
    if (it == vocab.end()) {
      return absl::InvalidArgumentError(
          fmt::format("unk_token '{}' is not in the vocabulary", *options.unk_token));
    }
    m.unk_id_ = it->second;
  }
  m.vocab_ = std::move(vocab);
  m.options_ = std::move(options);
  return m;
}

std::optional<int32_t> BpeModel::TokenToId(std::string_view token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string& BpeModel::IdToToken(int32_t id) const {
  static const std::string kEmpty;
  if (id < 0 || id >= id_limit()) return kEmpty;
  return id_to_token_[id];
}

void BpeModel::Tokenize(std::string_view word, std::vector<int32_t>* ids) const {
  if (word.size() > kMaxCachedWordBytes) {
    TokenizeUncached(word, ids);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    auto it = cache_.find(word);
    if (it != cache_.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> fresh;
  TokenizeUncached(word, &fresh);
  ids->insert(ids->end(), fresh.begin(), fresh.end());
  std::lock_guard<std::mutex> lock(cache_mutex_);
  // A full cache stops growing rather than evicting: the common words arrive first.
  if (cache_.size() < kMaxCachedWords) cache_.emplace(std::string(word), std::move(fresh));
}

// Idea: symbols form a linked list over the word; a min-heap holds candidate merges
// ordered by (rank, position). A popped candidate is stale when either side changed since
// it was pushed — then the pair no longer maps to the same merged id, and it is skipped.
void BpeModel::TokenizeUncached(std::string_view word, std::vector<int32_t>* ids) const {
  if (options_.ignore_merges) {
    if (auto id = TokenToId(word)) {
      ids->push_back(*id);
      return;
    }
  }
  struct Symbol {
    int32_t id;
    int32_t prev, next;  // indexes into `symbols`, -1 at the ends
    bool alive;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  bool last_was_unk = false;
  auto push = [&](int32_t id) {
    const auto n = static_cast<int32_t>(symbols.size());
    symbols.push_back(Symbol{id, n - 1, -1, true});
    if (n > 0) symbols[n - 1].next = n;
  };
  size_t pos = 0;
  while (pos < word.size()) {
    const size_t start = pos;
    NextCodePoint(word, &pos);
    const std::string_view ch = word.substr(start, pos - start);
    if (auto id = TokenToId(ch)) {
      push(*id);
      last_was_unk = false;
      continue;
    }
    if (options_.byte_fallback) {
      std::vector<int32_t> byte_ids;
      for (char c : ch) {
        auto id = TokenToId(fmt::format("<0x{:02X}>", static_cast<uint8_t>(c)));
        if (!id) break;
        byte_ids.push_back(*id);
      }
      if (byte_ids.size() == ch.size()) {
        for (int32_t id : byte_ids) push(id);
        last_was_unk = false;
        continue;
      }
    }
    if (unk_id_) {
      if (!(options_.fuse_unk && last_was_unk)) push(*unk_id_);
      last_was_unk = true;
    }
    // Without an unknown token HF drops the character; so do we.
  }

  struct Candidate {
    int32_t rank, pos, new_id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
  auto consider = [&](int32_t left) {
    const int32_t right = symbols[left].next;
    if (right < 0) return;
    auto it = merges_.find(PairKey(symbols[left].id, symbols[right].id));
    if (it != merges_.end()) heap.push({it->second.rank, left, it->second.new_id});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) consider(i);
  while (!heap.empty()) {
    const Candidate top = heap.top();
    heap.pop();
    Symbol& left = symbols[top.pos];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    auto it = merges_.find(PairKey(left.id, right.id));
    if (it == merges_.end() || it->second.new_id != top.new_id) continue;
    left.id = top.new_id;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (left.prev >= 0) consider(left.prev);
    consider(top.pos);
  }
  for (const Symbol& s : symbols) {
    if (s.alive) ids->push_back(s.id);
  }
}

}  // namespace shoal::worker
