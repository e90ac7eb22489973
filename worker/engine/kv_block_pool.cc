#include "worker/engine/kv_block_pool.h"

#include <algorithm>
#include <cassert>
#include <cstdlib>

#include "worker/common/splitmix.h"

namespace shoal::worker {

KvBlockPool::KvBlockPool(int64_t num_blocks, int block_size, bool enable_prefix_caching)
    : block_size_(block_size),
      enable_prefix_caching_(enable_prefix_caching),
      blocks_(static_cast<size_t>(num_blocks)) {
  for (int32_t id = 0; id < num_blocks; ++id) PushBack(id);
}

BlockHash KvBlockPool::HashBlock(BlockHash parent, std::span<const int32_t> tokens) {
  uint64_t h = ::shoal::SplitMix64(parent ^ 0x5348'4f41'4c00'0000ull);  // "SHOAL": keeps hash(0, {}) != 0
  for (int32_t t : tokens) h = ::shoal::SplitMix64(h ^ static_cast<uint32_t>(t));
  return h;
}

void KvBlockPool::FindCachedPrefix(std::span<const int32_t> tokens, std::vector<int32_t>* blocks,
                                   std::vector<BlockHash>* hashes) const {
  if (!enable_prefix_caching_) return;
  BlockHash parent = kNoParentHash;
  for (size_t start = 0; start + block_size_ <= tokens.size(); start += block_size_) {
    std::span<const int32_t> chunk = tokens.subspan(start, block_size_);
    BlockHash h = HashBlock(parent, chunk);
    auto it = cached_.find(h);
    if (it == cached_.end()) return;
    const Block& b = blocks_[it->second];
    if (b.parent_hash != parent || !std::equal(chunk.begin(), chunk.end(), b.tokens.begin())) {
      return;  // a collision: treat as a miss
    }
    blocks->push_back(it->second);
    hashes->push_back(h);
    parent = h;
  }
}

int64_t KvBlockPool::CountUnreferenced(std::span<const int32_t> blocks) const {
  int64_t n = 0;
  for (int32_t id : blocks) n += blocks_[id].ref_count == 0 ? 1 : 0;
  return n;
}

void KvBlockPool::Acquire(std::span<const int32_t> blocks) {
  for (int32_t id : blocks) {
    Block& b = blocks_[id];
    if (b.ref_count++ == 0) Unlink(id);
  }
}

bool KvBlockPool::Allocate(int64_t n, std::vector<int32_t>* out) {
  if (n > num_free_) return false;
  for (int64_t i = 0; i < n; ++i) {
    int32_t id = head_;
    Unlink(id);
    Evict(id);
    blocks_[id].ref_count = 1;
    out->push_back(id);
  }
  return true;
}

void KvBlockPool::Release(std::span<const int32_t> blocks) {
  for (int32_t id : blocks) {
    Block& b = blocks_[id];
    // A double release is a bookkeeping bug that would hand one block to two sequences.
    if (b.ref_count <= 0) std::abort();
    if (--b.ref_count > 0) continue;
    if (b.cached) {
      PushBack(id);
    } else {
      PushFront(id);
    }
  }
}

BlockHash KvBlockPool::Commit(int32_t block, BlockHash parent, std::span<const int32_t> tokens) {
  BlockHash h = HashBlock(parent, tokens);
  if (!enable_prefix_caching_) return h;
  Block& b = blocks_[block];
  if (b.cached) return b.hash;  // committed before (cannot happen to a block being written)
  if (cached_.contains(h)) return h;
  b.cached = true;
  b.hash = h;
  b.parent_hash = parent;
  b.tokens.assign(tokens.begin(), tokens.end());
  cached_.emplace(h, block);
  return h;
}

std::vector<int32_t> KvBlockPool::FreeQueueForTesting() const {
  std::vector<int32_t> out;
  for (int32_t id = head_; id != -1; id = blocks_[id].next) out.push_back(id);
  return out;
}

void KvBlockPool::PushFront(int32_t id) {
  Block& b = blocks_[id];
  b.prev = -1;
  b.next = head_;
  if (head_ != -1) blocks_[head_].prev = id;
  head_ = id;
  if (tail_ == -1) tail_ = id;
  b.in_free_queue = true;
  ++num_free_;
}

void KvBlockPool::PushBack(int32_t id) {
  Block& b = blocks_[id];
  b.next = -1;
  b.prev = tail_;
  if (tail_ != -1) blocks_[tail_].next = id;
  tail_ = id;
  if (head_ == -1) head_ = id;
  b.in_free_queue = true;
  ++num_free_;
}

void KvBlockPool::Unlink(int32_t id) {
  Block& b = blocks_[id];
  assert(b.in_free_queue);
  if (b.prev != -1) blocks_[b.prev].next = b.next; else head_ = b.next;
  if (b.next != -1) blocks_[b.next].prev = b.prev; else tail_ = b.prev;
  b.prev = b.next = -1;
  b.in_free_queue = false;
  --num_free_;
}

void KvBlockPool::Evict(int32_t id) {
  Block& b = blocks_[id];
  if (!b.cached) return;
  auto it = cached_.find(b.hash);
  if (it != cached_.end() && it->second == id) cached_.erase(it);
  b.cached = false;
  b.tokens.clear();
}

}  // namespace shoal::worker
