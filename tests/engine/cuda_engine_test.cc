// The engine over a CUDA model that samples on its GPU (CausalLM::ForwardSample) against
// the same engine over the same model sampling on the host (label cuda): every stream the
// same, greedy with penalties, seeded with each truncation, and a request that wants
// logprobs (whose steps sample on the host in both). Without a GPU: "skipped: no GPU".
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "tests/engine/engine_collector.h"
#include "tests/engine/test_model.h"
#include "tests/models/greedy_driver.h"
#include "worker/engine/engine.h"
#include "worker/kernels/cuda/device.h"
#include "worker/model/loaded_model.h"
#include "worker/models/causal_lm.h"

namespace shoal::worker::testing {
namespace {

// A model exactly as `inner`, except that it does not sample on its device: the engine
// then takes its logits and samples on the host.
class HostSampled final : public CausalLM {
 public:
  explicit HostSampled(std::unique_ptr<CausalLM> inner) : inner_(std::move(inner)) {}
  const ModelConfig& config() const override { return inner_->config(); }
  const ShardSpec& shard() const override { return inner_->shard(); }
  size_t KvBytesPerBlock(int block_size) const override { return inner_->KvBytesPerBlock(block_size); }
  absl::Status AllocateKvCache(int64_t num_blocks, int block_size) override {
    return inner_->AllocateKvCache(num_blocks, block_size);
  }
  absl::Status Forward(const ForwardBatch& batch, std::vector<float>* logits) override {
    return inner_->Forward(batch, logits);
  }
  size_t WeightBytes() const override { return inner_->WeightBytes(); }

 private:
  std::unique_ptr<CausalLM> inner_;
};

GenerationRequest Request(std::string id, const std::string& prompt, int max_tokens) {
  GenerationRequest r;
  r.request_id = std::move(id);
  for (unsigned char c : prompt) r.prompt_tokens.push_back(c);
  r.stop.max_tokens = max_tokens;
  r.stop.ignore_eos = true;
  return r;
}

std::vector<Collected> RunTogether(Engine& engine, const std::vector<GenerationRequest>& requests) {
  Collector collector;
  for (const GenerationRequest& r : requests) EXPECT_TRUE(engine.Submit(r, collector.Callback()).ok());
  std::vector<Collected> out;
  for (const GenerationRequest& r : requests) out.push_back(collector.Wait(r.request_id));
  return out;
}

TEST(CudaEngine, DeviceSamplingGivesTheHostSamplersStreams) {
  std::string why_not;
  if (cuda::CudaDeviceCount(&why_not) == 0) GTEST_SKIP() << "skipped: " << why_not;
  // llama-tiny's 256-token vocabulary is the byte tokenizer's.
  auto model = LoadModel(SourceDir() + "/tests/oracle/fixtures/llama-tiny");
  ASSERT_TRUE(model.ok()) << model.status();
  CausalLMOptions o;
  o.device = Device::kCuda;
  o.device_weight_dtype = DType::kF32;
  o.kv_cache_dtype = DType::kF32;
  auto device_lm = CreateCausalLM(*model, ShardSpec{}, nullptr, o);
  auto host_lm = CreateCausalLM(*model, ShardSpec{}, nullptr, o);
  ASSERT_TRUE(device_lm.ok() && host_lm.ok()) << device_lm.status() << host_lm.status();
  ASSERT_TRUE((*device_lm)->SamplesOnDevice());
  EngineOptions e;
  e.max_model_len = 128;
  e.kv_cache_bytes = 8u << 20;
  auto on_device = Engine::Create(e, std::move(*device_lm), std::make_shared<ByteTokenizer>());
  auto on_host = Engine::Create(e, std::make_unique<HostSampled>(std::move(*host_lm)), std::make_shared<ByteTokenizer>());
  ASSERT_TRUE(on_device.ok() && on_host.ok());

  std::vector<GenerationRequest> requests;
  requests.push_back(Request("greedy-penalized", "the quick brown fox", 24));
  requests.back().sampling.repetition_penalty = 1.3f;
  requests.push_back(Request("top-k-top-p", "jumps over the lazy", 24));
  requests.back().sampling.temperature = 0.9f, requests.back().sampling.top_k = 40;
  requests.back().sampling.top_p = 0.95f, requests.back().sampling.seed = 42;
  requests.push_back(Request("min-p-presence", "dog and then some", 24));
  requests.back().sampling.temperature = 1.2f, requests.back().sampling.min_p = 0.05f;
  requests.back().sampling.presence_penalty = 0.4f, requests.back().sampling.frequency_penalty = 0.2f;
  requests.back().sampling.seed = 7;
  requests.push_back(Request("logprobs", "a seeded stream", 12));
  requests.back().sampling.temperature = 0.7f, requests.back().sampling.seed = 3;
  requests.back().include_logprobs = true;

  const std::vector<Collected> device_out = RunTogether(**on_device, requests);
  const std::vector<Collected> host_out = RunTogether(**on_host, requests);
  for (size_t i = 0; i < requests.size(); ++i) {
    SCOPED_TRACE(requests[i].request_id);
    EXPECT_NE(device_out[i].final_output.finish, FinishReason::kError) << device_out[i].final_output.error;
    EXPECT_EQ(device_out[i].tokens.size(), static_cast<size_t>(requests[i].stop.max_tokens));
    EXPECT_EQ(device_out[i].tokens, host_out[i].tokens);
  }
  EXPECT_EQ(device_out[3].logprobs.size(), device_out[3].tokens.size());
}

}  // namespace
}  // namespace shoal::worker::testing
