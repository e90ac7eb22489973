#include "router/prefix_affinity.h"

namespace shoal::router {

void PrefixAffinityTable::Record(std::span<const uint64_t> hashes, uint64_t group) {
  for (uint64_t hash : hashes) {
    auto it = entries_.find(hash);
    if (it != entries_.end()) {
      it->second.group = group;
      lru_.splice(lru_.begin(), lru_, it->second.lru);
      continue;
    }
    lru_.push_front(hash);
    entries_.emplace(hash, Entry{group, lru_.begin()});
    if (entries_.size() > capacity_) {
      entries_.erase(lru_.back());
      lru_.pop_back();
    }
  }
}

int PrefixAffinityTable::MatchedBlocks(std::span<const uint64_t> hashes, uint64_t group) const {
  for (int i = static_cast<int>(hashes.size()) - 1; i >= 0; --i) {
    auto it = entries_.find(hashes[i]);
    if (it != entries_.end() && it->second.group == group) return i + 1;
  }
  return 0;
}

void PrefixAffinityTable::ForgetGroup(uint64_t group) {
  for (auto it = entries_.begin(); it != entries_.end();) {
    if (it->second.group == group) {
      lru_.erase(it->second.lru);
      it = entries_.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace shoal::router
