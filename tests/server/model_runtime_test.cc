// How ModelRuntime sizes the KV cache: bytes for a model in host memory, or a fraction of
// the device memory a GPU model leaves free (--kv-cache-memory-fraction).
#include <gtest/gtest.h>

#include "worker/server/model_runtime.h"

namespace shoal::worker {
namespace {

// Only what KvCacheBytes reads: the free device memory.
class FreeMemoryModel final : public CausalLM {
 public:
  explicit FreeMemoryModel(size_t free_bytes) : free_bytes_(free_bytes) {}
  const ModelConfig& config() const override { return config_; }
  const ShardSpec& shard() const override { return shard_; }
  size_t KvBytesPerBlock(int block_size) const override { return 1; }
  absl::Status AllocateKvCache(int64_t, int) override { return absl::OkStatus(); }
  absl::Status Forward(const ForwardBatch&, std::vector<float>*) override { return absl::OkStatus(); }
  size_t WeightBytes() const override { return 0; }
  size_t FreeDeviceBytes() const override { return free_bytes_; }

 private:
  ModelConfig config_;
  ShardSpec shard_;
  size_t free_bytes_;
};

TEST(KvCacheBytes, WithoutAFractionIsTheByteBudget) {
  ModelRuntimeOptions options;
  options.engine.kv_cache_bytes = 123 << 20;
  auto bytes = KvCacheBytes(options, FreeMemoryModel(0));
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_EQ(*bytes, size_t{123} << 20);
}

TEST(KvCacheBytes, FractionTakesThatShareOfTheFreeDeviceMemory) {
  ModelRuntimeOptions options;
  options.kv_cache_memory_fraction = 0.9;
  auto bytes = KvCacheBytes(options, FreeMemoryModel(size_t{100} << 30));
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_EQ(*bytes, static_cast<size_t>(0.9 * static_cast<double>(size_t{100} << 30)));
}

TEST(KvCacheBytes, FractionOfAHostMemoryModelIsAnError) {
  ModelRuntimeOptions options;
  options.kv_cache_memory_fraction = 0.5;
  auto bytes = KvCacheBytes(options, FreeMemoryModel(0));
  EXPECT_EQ(bytes.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(bytes.status().message()).find("GPU"), std::string::npos) << bytes.status();
}

TEST(KvCacheBytes, FractionOfOneOrMoreIsAnError) {
  ModelRuntimeOptions options;
  options.kv_cache_memory_fraction = 1.0;
  EXPECT_EQ(KvCacheBytes(options, FreeMemoryModel(1 << 30)).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace shoal::worker
