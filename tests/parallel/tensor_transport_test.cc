// The rule that puts a stage's tensor collectives on NCCL or Gloo, and the record each
// tensor rank publishes for it.
#include "worker/parallel/tensor_transport.h"

#include <gtest/gtest.h>

#include <vector>

namespace shoal::worker {
namespace {

TensorRankDevice OnGpu(const std::string& gpu) {
  TensorRankDevice d;
  d.gpu = gpu;
  return d;
}

TEST(TensorTransport, RanksWithAGpuEachAndNcclUseNccl) {
  const std::vector<TensorRankDevice> ranks = {OnGpu("a/0000:17:00.0"), OnGpu("a/0000:18:00.0"),
                                               OnGpu("b/0000:17:00.0")};
  EXPECT_EQ(WhyNotNccl(ranks), "");
}

TEST(TensorTransport, EachReasonForGlooNamesTheRank) {
  std::vector<TensorRankDevice> ranks = {OnGpu("a/0000:17:00.0"), OnGpu("a/0000:18:00.0"), OnGpu("a/0000:17:00.0")};
  EXPECT_EQ(WhyNotNccl(ranks), "tensor ranks 0 and 2 share GPU a/0000:17:00.0 (NCCL needs a GPU per rank)");
  ranks[2] = OnGpu("");
  EXPECT_EQ(WhyNotNccl(ranks), "tensor rank 2 runs its shard on the CPU");
  ranks[2] = OnGpu("b/0000:17:00.0");
  ranks[1].nccl_error = "no NCCL: libnccl.so.2: cannot open shared object file";
  EXPECT_EQ(WhyNotNccl(ranks), "tensor rank 1 cannot load NCCL (no NCCL: libnccl.so.2: cannot open shared object file)");
  ranks[1].nccl_error.clear();
  ranks[0].allow_nccl = false;
  EXPECT_EQ(WhyNotNccl(ranks), "tensor rank 0 keeps to Gloo (--tensor-collectives gloo)");
}

TEST(TensorTransport, RecordsRoundTripAndForeignBytesAreRefused) {
  TensorRankDevice d = OnGpu("node-7/0000:c1:00.0");
  d.nccl_error = "no NCCL: libnccl lacks ncclSend\nsecond line";
  d.allow_nccl = false;
  auto back = TensorRankDevice::Decode(d.Encode());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->gpu, d.gpu);
  EXPECT_EQ(back->nccl_error, d.nccl_error);
  EXPECT_FALSE(back->allow_nccl);
  auto empty = TensorRankDevice::Decode(TensorRankDevice().Encode());
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->gpu.empty() && empty->nccl_error.empty() && empty->allow_nccl);
  for (const std::string bad : {"", "garbage", "shoal-tensor-rank-v1\ngpu\nmaybe\n", "shoal-tensor-rank-v0\na\nnccl\n"}) {
    EXPECT_EQ(TensorRankDevice::Decode(bad).status().code(), absl::StatusCode::kDataLoss) << bad;
  }
}

}  // namespace
}  // namespace shoal::worker
