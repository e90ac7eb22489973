#pragma once
// Which group last served each prompt prefix (PrefixBlockHashes), so that a request
// sharing a prefix goes where that prefix's KV blocks are likely still cached. Bounded:
// the least recently used prefix blocks are forgotten first. Thread-compatible (the
// Balancer holds its lock around every call).
#include <cstdint>
#include <list>
#include <span>
#include <unordered_map>

namespace shoal::router {

class PrefixAffinityTable {
 public:
  explicit PrefixAffinityTable(size_t capacity) : capacity_(capacity == 0 ? 1 : capacity) {}

  // `group` now holds every prefix in `hashes` (it is serving that prompt).
  void Record(std::span<const uint64_t> hashes, uint64_t group);
  // How many leading blocks of `hashes` `group` holds: one more than the deepest block
  // whose owner is `group` (hash i identifies the whole prefix 0..i), 0 if none.
  int MatchedBlocks(std::span<const uint64_t> hashes, uint64_t group) const;
  // Forgets every prefix of a group that left.
  void ForgetGroup(uint64_t group);
  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    uint64_t group;
    std::list<uint64_t>::iterator lru;
  };
  size_t capacity_;
  std::list<uint64_t> lru_;  // most recent first
  std::unordered_map<uint64_t, Entry> entries_;
};

}  // namespace shoal::router
