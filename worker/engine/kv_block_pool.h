#pragma once
// The paged KV cache's bookkeeping: which of the model's `num_blocks` KV blocks are in use,
// by how many sequences, and which hold a known run of tokens (the prefix cache).
//
// Blocks are integer ids with a reference count. A block whose count drops to zero goes on
// the free queue but keeps its contents: if it was a full block registered with Commit(),
// a later sequence whose prompt starts with the same tokens finds it with FindCachedPrefix()
// and takes it back with Acquire() without recomputing anything. Allocation takes blocks
// from the head of the free queue, dropping their cached identity (eviction), so cached
// blocks are evicted least recently freed first.
//
// A block's identity is a chain hash: hash(parent block's hash, this block's token ids).
// Two sequences therefore share a block only when everything before it is equal too. The
// pool keeps each cached block's tokens and parent hash and compares them on lookup, so a
// 64-bit hash collision can cost a cache hit but never returns wrong KV.
//
// Free queue order: a released block that was never committed holds nothing worth keeping
// and goes to the head (reused first); a committed one goes to the tail. Release() takes
// blocks in the order given, so callers pass a block table back to front: a sequence's
// last blocks (the least likely to be shared) are then evicted before its first ones.
#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

namespace shoal::worker {

using BlockHash = uint64_t;
inline constexpr BlockHash kNoParentHash = 0;

class KvBlockPool {
 public:
  KvBlockPool(int64_t num_blocks, int block_size, bool enable_prefix_caching);

  int64_t num_total_blocks() const { return static_cast<int64_t>(blocks_.size()); }
  // Blocks with no reference, including cached ones that can still be hit.
  int64_t num_free_blocks() const { return num_free_; }
  int block_size() const { return block_size_; }
  bool prefix_caching() const { return enable_prefix_caching_; }
  int ref_count(int32_t block) const { return blocks_[block].ref_count; }
  bool is_cached(int32_t block) const { return blocks_[block].cached; }

  // The chain hash of a full block of `tokens` (block_size of them) following `parent`.
  static BlockHash HashBlock(BlockHash parent, std::span<const int32_t> tokens);

  // The longest run of cached blocks holding tokens[0 .. k*block_size) for the largest k
  // with k*block_size <= tokens.size(). Appends block ids and their hashes; takes no
  // references. Empty when prefix caching is off.
  void FindCachedPrefix(std::span<const int32_t> tokens, std::vector<int32_t>* blocks,
                        std::vector<BlockHash>* hashes) const;

  // How many of `blocks` have no reference now, i.e. how many free blocks Acquire() of
  // them would use up. Admission needs num_free_blocks() >= this + new blocks.
  int64_t CountUnreferenced(std::span<const int32_t> blocks) const;

  // Takes one more reference on each block (blocks found by FindCachedPrefix).
  void Acquire(std::span<const int32_t> blocks);

  // Takes `n` blocks off the head of the free queue and appends them to *out with one
  // reference each, evicting whatever was cached in them. Returns false and changes
  // nothing when fewer than `n` are free.
  bool Allocate(int64_t n, std::vector<int32_t>* out);

  // Drops one reference on each block, in order; see the file comment for queue order.
  void Release(std::span<const int32_t> blocks);

  // Records that `block` now holds the full block `tokens` following `parent` and returns
  // its hash. When an equal block is already cached the existing one stays the cached
  // copy and `block` is left as plain storage (two sequences prefilled the same prefix
  // in one step); the returned hash is the same either way.
  BlockHash Commit(int32_t block, BlockHash parent, std::span<const int32_t> tokens);

  // Free queue from head (next allocated) to tail, for tests and debugging.
  std::vector<int32_t> FreeQueueForTesting() const;

 private:
  struct Block {
    int ref_count = 0;
    bool cached = false;          // registered in cached_ under `hash`
    bool in_free_queue = false;
    int32_t prev = -1, next = -1;  // free queue links
    BlockHash hash = 0;
    BlockHash parent_hash = 0;
    std::vector<int32_t> tokens;  // contents, kept while cached, to rule out collisions
  };

  void PushFront(int32_t id);
  void PushBack(int32_t id);
  void Unlink(int32_t id);
  void Evict(int32_t id);

  int block_size_;
  bool enable_prefix_caching_;
  std::vector<Block> blocks_;
  int32_t head_ = -1, tail_ = -1;
  int64_t num_free_ = 0;
  std::unordered_map<BlockHash, int32_t> cached_;  // hash -> block id
};

}  // namespace shoal::worker
