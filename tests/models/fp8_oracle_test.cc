// FP8 checkpoints in DeepSeek-V3's release layout (F8_E4M3 weights + 128x128
// weight_scale_inv blocks) against Hugging Face transformers run on the dequantized
// weights (tests/oracle/generate_fp8_fixtures.py), and the FP8 paths of the linear layers:
// scale pick-up, shard views of the scale grid, load errors.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "tests/models/greedy_driver.h"
#include "worker/kernels/cpu/fp8_matmul.h"
#include "worker/kernels/cpu/thread_pool.h"
#include "worker/model/hf_config.h"
#include "worker/model/loaded_model.h"
#include "worker/models/causal_lm.h"
#include "worker/models/linear.h"

namespace shoal::worker {
namespace {

using testing::RelativeError;
using testing::RunGreedy;
using testing::SequenceRun;

constexpr double kLogitTolerance = 1e-3;
constexpr int kBlockSize = 4;
constexpr int kBlocksPerSeq = 16;

class Fp8OracleFixture : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    testing::OracleExpectation e;
    std::string error;
    ASSERT_TRUE(testing::ReadOracleExpectation(GetParam(), &e, &error)) << error;
    dir_ = e.dir;
    expected_ = e.json;
    prompt_ = e.prompt;
    logits_ = e.logits;
    auto model = LoadModel(dir_);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
    auto lm = CreateCausalLM(model_, ShardSpec{}, &pool_, CausalLMOptions{.kv_cache_dtype = DType::kF32});
    ASSERT_TRUE(lm.ok()) << lm.status();
    lm_ = std::move(*lm);
    ASSERT_TRUE(lm_->AllocateKvCache(4 * kBlocksPerSeq, kBlockSize).ok());
  }

  std::string dir_;
  nlohmann::json expected_;
  std::vector<int32_t> prompt_;
  std::map<int, std::vector<float>> logits_;
  ThreadPool pool_{2};
  LoadedModel model_;
  std::unique_ptr<CausalLM> lm_;
};

TEST_P(Fp8OracleFixture, CheckpointHoldsFp8WeightsWithBlockScales) {
  int num_fp8 = 0;
  for (const std::string& name : model_.weights->Names()) {
    const TensorView* t = model_.weights->Find(name);
    if (t->dtype != DType::kF8E4M3) continue;
    ++num_fp8;
    EXPECT_NE(model_.weights->Find(name + "_scale_inv"), nullptr) << name;
  }
  EXPECT_GT(num_fp8, 0) << "the fixture should be in the FP8 release layout";
}

// Every recorded position: one batch of prefixes, each ending at one of them.
TEST_P(Fp8OracleFixture, LogitsMatchTransformersOnDequantizedWeights) {
  std::vector<int> positions;
  std::vector<float> logits;
  ASSERT_TRUE(testing::ForwardRecordedPrefixes(*lm_, prompt_, logits_, &positions, &logits));
  const int64_t vocab = lm_->config().vocab_size;
  double worst = 0;
  for (size_t i = 0; i < positions.size(); ++i) {
    const double err = RelativeError(logits.data() + i * vocab, logits_.at(positions[i]));
    EXPECT_LE(err, kLogitTolerance) << "position " << positions[i];
    worst = std::max(worst, err);
  }
  std::cout << fmt::format("{}: worst logit error vs transformers {:.2e} relative\n", GetParam(), worst);
}

TEST_P(Fp8OracleFixture, GreedyTokensMatchTransformers) {
  const auto greedy = expected_["greedy"].get<std::vector<int32_t>>();
  for (std::vector<int> chunks : {std::vector<int>{}, std::vector<int>{7, 2, 5}}) {
    std::vector<SequenceRun> runs(1);
    runs[0].prompt = prompt_;
    runs[0].chunk_sizes = chunks;
    runs[0].num_new = static_cast<int>(greedy.size());
    RunGreedy(*lm_, runs, kBlockSize, kBlocksPerSeq);
    EXPECT_EQ(runs[0].generated, greedy) << "prompt in " << (chunks.empty() ? "one step" : "chunks");
  }
}

// The point of reading FP8 in place: the projections take one byte per weight (plus a
// float per 128x128 block) instead of the four that dequantizing to f32 on load would.
TEST_P(Fp8OracleFixture, ResidentWeightsStayOneBytePerWeight) {
  const size_t fp8_projection_bytes = expected_["weight_bytes"].get<size_t>();
  const size_t f32_projection_bytes = expected_["dequantized_f32_bytes"].get<size_t>();
  size_t other_bytes = 0;  // embeddings, norms, output head: not FP8 in the release layout
  size_t other_f32_bytes = 0;
  for (const std::string& name : model_.weights->Names()) {
    const TensorView* t = model_.weights->Find(name);
    if (t->dtype == DType::kF8E4M3 || name.ends_with("_scale_inv")) continue;
    other_f32_bytes += t->numel() * sizeof(float);
    other_bytes += t->nbytes;
  }
  const size_t resident = lm_->WeightBytes();
  std::cout << fmt::format(
      "{}: resident weight bytes: fp8 on-the-fly {} (projections {}), dequantized to f32 {} "
      "(projections {}); ratio {:.2f}\n",
      GetParam(), resident, fp8_projection_bytes, f32_projection_bytes + other_f32_bytes,
      f32_projection_bytes, static_cast<double>(f32_projection_bytes + other_f32_bytes) / resident);
  // Norm weights are widened to f32 on load, so the non-FP8 part is between its stored
  // and its f32 size; the FP8 part is exact.
  EXPECT_GE(resident, fp8_projection_bytes + other_bytes);
  EXPECT_LE(resident, fp8_projection_bytes + other_f32_bytes);
}

INSTANTIATE_TEST_SUITE_P(Transformers, Fp8OracleFixture, ::testing::Values("fp8_llama_tiny", "fp8_deepseek_v3_tiny"),
                         [](const auto& info) { return info.param; });

// --- linear layers over a hand-built FP8 store ------------------------------------------

// Tensors over buffers the test owns, by name; tensors can be dropped or replaced to make
// a broken checkpoint.
class InMemoryStore : public WeightStore {
 public:
  const TensorView* Find(std::string_view name) const override {
    auto it = tensors_.find(std::string(name));
    return it == tensors_.end() ? nullptr : &it->second;
  }
  std::vector<std::string> Names() const override {
    std::vector<std::string> out;
    for (const auto& [n, t] : tensors_) out.push_back(n);
    return out;
  }
  std::string Source() const override { return "in-memory.safetensors"; }
  void Put(const std::string& name, DType dtype, std::vector<int64_t> shape, const void* data, size_t nbytes) {
    TensorView t;
    t.name = name;
    t.dtype = dtype;
    t.shape = std::move(shape);
    t.data = static_cast<const std::byte*>(data);
    t.nbytes = nbytes;
    tensors_[name] = t;
  }
  void Drop(const std::string& name) { tensors_.erase(name); }

 private:
  std::map<std::string, TensorView> tensors_;
};

// A [out, in] FP8 projection "p" with random finite codes and block scales.
struct Fp8Projection {
  int64_t out, in;
  std::vector<uint8_t> codes;
  std::vector<float> scales;
  Fp8Projection(int64_t out_, int64_t in_, uint32_t seed) : out(out_), in(in_), codes(out_ * in_) {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int> code(0, 255);
    for (uint8_t& c : codes) {
      do c = static_cast<uint8_t>(code(rng));
      while ((c & 0x7f) == 0x7f);
    }
    scales.resize(((out + 127) / 128) * ((in + 127) / 128));
    std::uniform_real_distribution<float> s(1e-3f, 1e-2f);
    for (float& x : scales) x = s(rng);
  }
  void AddTo(InMemoryStore* store) const {
    store->Put("p.weight", DType::kF8E4M3, {out, in}, codes.data(), codes.size());
    store->Put("p.weight_scale_inv", DType::kF32, {(out + 127) / 128, (in + 127) / 128}, scales.data(),
               scales.size() * 4);
  }
};

std::vector<float> RandomInput(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d;
  std::vector<float> x(n);
  for (float& v : x) v = d(rng);
  return x;
}

// y [T, out] through one linear's matmul target.
std::vector<float> Apply(const cpu::MatmulTarget& target, const std::vector<float>& x, int64_t T,
                         int64_t ldx, int64_t out, ThreadPool* pool) {
  std::vector<float> y(T * out, 0.0f);
  cpu::MatmulTarget t = target;
  t.y = y.data();
  t.ldy = out;
  cpu::Matmul(pool, x.data(), T, ldx, {&t, 1});
  return y;
}

TEST(Fp8Linear, ColumnShardsReproduceTheirRowsOfTheWholeMatrix) {
  Fp8Projection p(384, 200, 1);
  InMemoryStore store;
  p.AddTo(&store);
  ThreadPool pool(2);
  const int64_t T = 3;
  const auto x = RandomInput(T * 200, 2);
  auto whole = ColumnParallelLinear::Load(store, "p", 200, 384, false, {0, 1});
  ASSERT_TRUE(whole.ok()) << whole.status();
  const auto y = Apply(whole->Target(nullptr, 0), x, T, 200, 384, &pool);
  for (int rank = 0; rank < 3; ++rank) {
    auto shard = ColumnParallelLinear::Load(store, "p", 200, 384, false, {rank, 3});
    ASSERT_TRUE(shard.ok()) << shard.status();
    ASSERT_EQ(shard->out_features(), 128);
    const auto ys = Apply(shard->Target(nullptr, 0), x, T, 200, 128, &pool);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t r = 0; r < 128; ++r) {
        EXPECT_EQ(ys[t * 128 + r], y[t * 384 + rank * 128 + r]) << "rank " << rank << " row " << r;
      }
    }
  }
}

TEST(Fp8Linear, RowShardsSumToTheWholeMatrix) {
  Fp8Projection p(130, 256, 4);  // a partial row block, two column blocks
  InMemoryStore store;
  p.AddTo(&store);
  ThreadPool pool(2);
  const int64_t T = 2;
  const auto x = RandomInput(T * 256, 5);
  auto whole = RowParallelLinear::Load(store, "p", 256, 130, {0, 1});
  ASSERT_TRUE(whole.ok()) << whole.status();
  const auto y = Apply(whole->AccumulateInto(nullptr, 0), x, T, 256, 130, &pool);
  std::vector<float> sum(T * 130, 0.0f);
  for (int rank = 0; rank < 2; ++rank) {
    auto shard = RowParallelLinear::Load(store, "p", 256, 130, {rank, 2});
    ASSERT_TRUE(shard.ok()) << shard.status();
    ASSERT_EQ(shard->in_features(), 128);
    std::vector<float> xs(T * 128);
    for (int64_t t = 0; t < T; ++t) std::memcpy(&xs[t * 128], &x[t * 256 + rank * 128], 128 * 4);
    const auto ys = Apply(shard->AccumulateInto(nullptr, 0), xs, T, 128, 130, &pool);
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += ys[i];
  }
  float max_diff = 0, max_abs = 0;
  for (size_t i = 0; i < sum.size(); ++i) {
    max_diff = std::max(max_diff, std::fabs(sum[i] - y[i]));
    max_abs = std::max(max_abs, std::fabs(y[i]));
  }
  EXPECT_LE(max_diff, 1e-5f * max_abs);  // same products, summed in another order
}

TEST(Fp8Linear, ShardsOffTheScaleBlocksAreAnError) {
  Fp8Projection p(320, 192, 6);
  InMemoryStore store;
  p.AddTo(&store);
  auto col = ColumnParallelLinear::Load(store, "p", 192, 320, false, {0, 2});  // 160 rows each
  ASSERT_FALSE(col.ok());
  EXPECT_EQ(col.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(col.status().message()).find("'p.weight'"), std::string::npos) << col.status();
  EXPECT_NE(std::string(col.status().message()).find("128"), std::string::npos) << col.status();
  auto row = RowParallelLinear::Load(store, "p", 192, 320, {1, 2});  // 96 columns each
  ASSERT_FALSE(row.ok());
  EXPECT_NE(std::string(row.status().message()).find("128"), std::string::npos) << row.status();
}

TEST(Fp8Linear, MissingScalesNameTheTensor) {
  Fp8Projection p(64, 64, 7);
  InMemoryStore store;
  p.AddTo(&store);
  store.Drop("p.weight_scale_inv");
  auto l = ColumnParallelLinear::Load(store, "p", 64, 64, false, {0, 1});
  ASSERT_FALSE(l.ok());
  EXPECT_EQ(l.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(l.status().message()).find("'p.weight_scale_inv' are missing"), std::string::npos)
      << l.status();
  EXPECT_FALSE(RowParallelLinear::Load(store, "p", 64, 64, {0, 1}).ok());
}

TEST(Fp8Linear, ScalesOfTheWrongShapeOrTypeAreAnError) {
  Fp8Projection p(300, 200, 8);  // grid [3, 2]
  InMemoryStore store;
  p.AddTo(&store);
  store.Put("p.weight_scale_inv", DType::kF32, {2, 3}, p.scales.data(), p.scales.size() * 4);
  auto l = ColumnParallelLinear::Load(store, "p", 200, 300, false, {0, 1});
  ASSERT_FALSE(l.ok());
  EXPECT_NE(std::string(l.status().message()).find("'p.weight_scale_inv'"), std::string::npos) << l.status();
  EXPECT_NE(std::string(l.status().message()).find("[3, 2]"), std::string::npos) << l.status();
  store.Put("p.weight_scale_inv", DType::kBF16, {3, 2}, p.scales.data(), 12);
  EXPECT_FALSE(ColumnParallelLinear::Load(store, "p", 200, 300, false, {0, 1}).ok());
}

// The config's quantization_config announces the scheme; only DeepSeek's is read.
// A safetensors tensor may start at any byte (after an FP8 tensor of odd size): f32
// vectors and block scales read from such an offset keep their values, and no float is
// loaded from a misaligned address (which the sanitizer build reports).
TEST(Fp8Linear, F32TensorsAtOddOffsetsReadTheirValues) {
  const std::vector<float> values = {0.5f, -1.25f, 3.0f, 1e-3f, 7.5f};
  std::vector<std::byte> buffer(1 + values.size() * sizeof(float) + 8);
  std::memcpy(buffer.data() + 1, values.data(), values.size() * sizeof(float));
  InMemoryStore store;
  store.Put("v", DType::kF32, {static_cast<int64_t>(values.size())}, buffer.data() + 1, values.size() * sizeof(float));
  auto v = VectorParam::Load(store, "v", 3, /*offset=*/2);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(reinterpret_cast<uintptr_t>(v->data()) % alignof(float), 0u);
  EXPECT_EQ(std::vector<float>(v->data(), v->data() + 3), std::vector<float>(values.begin() + 2, values.end()));

  cpu::WeightMatrix w;
  w.rows = 256;
  w.cols = 256;
  w.block_scales = reinterpret_cast<const float*>(buffer.data() + 1);  // a 2 x 2 grid, misaligned
  w.scale_stride = 2;
  EXPECT_EQ(cpu::Fp8BlockScale(w, 0, 0), values[0]);
  EXPECT_EQ(cpu::Fp8BlockScale(w, 0, 200), values[1]);
  EXPECT_EQ(cpu::Fp8BlockScale(w, 130, 5), values[2]);
  EXPECT_EQ(cpu::Fp8BlockScale(w, 255, 255), values[3]);
}

TEST(Fp8Config, OtherQuantizationSchemesAreRefusedNamingTheField) {
  std::ifstream f(testing::SourceDir() + "/tests/oracle/fixtures/fp8_llama_tiny/config.json");
  ASSERT_TRUE(f);
  const nlohmann::json config = nlohmann::json::parse(f);
  ASSERT_TRUE(ParseHfConfig("config.json", config.dump()).ok());
  const std::pair<const char*, nlohmann::json> bad[] = {
      {"weight_block_size", nlohmann::json::array({64, 64})},
      {"fmt", "e5m2"},
      {"quant_method", "gptq"},
      {"activation_scheme", "static"},
  };
  for (const auto& [field, value] : bad) {
    nlohmann::json c = config;
    c["quantization_config"][field] = value;
    auto parsed = ParseHfConfig("config.json", c.dump());
    ASSERT_FALSE(parsed.ok()) << field;
    EXPECT_NE(std::string(parsed.status().message()).find(std::string("quantization_config.") + field),
              std::string::npos)
        << parsed.status();
  }
}

}  // namespace
}  // namespace shoal::worker
