// Files written by the reference writers (llama.cpp's `gguf` package, the `safetensors`
// package), read back by our loaders. Expected values were printed by the matching
// reference readers; tests/model/testdata/make_reference_files.py regenerates the files.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>

#include "worker/model/gguf_file.h"
#include "worker/model/loaded_model.h"
#include "worker/model/mapped_file.h"
#include "worker/model/safetensors_file.h"

namespace shoal::worker {
namespace {

std::string TestData(const std::string& name) {
  const char* src = std::getenv("SHOAL_SOURCE_DIR");
  std::filesystem::path dir = src ? std::filesystem::path(src) / "tests/model/testdata"
                                  : std::filesystem::path(__FILE__).parent_path() / "testdata";
  return (dir / name).string();
}

float F16ToFloat(uint16_t h) {
  int sign = h >> 15, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  float v = exp == 0 ? std::ldexp(static_cast<float>(mant), -24)
                     : std::ldexp(static_cast<float>(mant | 0x400), exp - 25);
  return sign ? -v : v;
}

float ElementAsFloat(const TensorView& t, int64_t i) {
  switch (t.dtype) {
    case DType::kF32: {
      float f;
      std::memcpy(&f, t.data + 4 * i, 4);
      return f;
    }
    case DType::kF16: {
      uint16_t h;
      std::memcpy(&h, t.data + 2 * i, 2);
      return F16ToFloat(h);
    }
    case DType::kBF16: {
      uint16_t b;
      std::memcpy(&b, t.data + 2 * i, 2);
      uint32_t bits = static_cast<uint32_t>(b) << 16;
      float f;
      std::memcpy(&f, &bits, 4);
      return f;
    }
    default:
      ADD_FAILURE() << "no float view of " << DTypeName(t.dtype);
      return NAN;
  }
}

TEST(ReferenceGguf, LoadsWhatTheGgufPackageWrote) {
  std::string path = TestData("tiny_llama_ref.gguf");
  absl::StatusOr<LoadedModel> m = LoadModel(path);
  ASSERT_TRUE(m.ok()) << m.status();
  const ModelConfig& c = m->config;
  EXPECT_EQ(c.num_layers, 2);
  EXPECT_EQ(c.hidden_size, 32);
  EXPECT_EQ(c.intermediate_size, 64);
  EXPECT_EQ(c.num_heads, 2);
  EXPECT_EQ(c.num_kv_heads, 1);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.vocab_size, 8);
  EXPECT_EQ(c.rope_theta, 500000.0);
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-6f);
  EXPECT_EQ(c.max_position_embeddings, 512);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, 0);
  EXPECT_THAT(c.eos_token_ids, ::testing::ElementsAre(1));
  const GgufVocab& v = *m->gguf_vocab;
  EXPECT_EQ(v.pre, "llama-bpe");
  EXPECT_THAT(v.tokens, ::testing::ElementsAre("<s>", "</s>", "a", "b", "ab", "Ġ", "Ġa", "c"));
  EXPECT_THAT(v.token_types, ::testing::ElementsAre(3, 3, 1, 1, 1, 1, 1, 1));
  EXPECT_THAT(v.merges, ::testing::ElementsAre("a b", "Ġ a"));
  EXPECT_TRUE(v.add_bos_token);
  EXPECT_EQ(m->chat_template, "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}");

  const WeightStore& w = *m->weights;
  EXPECT_EQ(w.Names().size(), 21u);
  const TensorView* embed = w.Find("model.embed_tokens.weight");
  ASSERT_NE(embed, nullptr);
  EXPECT_EQ(embed->dtype, DType::kQ8_0);
  EXPECT_EQ(embed->shape, (std::vector<int64_t>{8, 32}));
  EXPECT_EQ(embed->nbytes, 272u);
  const uint8_t embed_head[] = {0x77, 0x25, 0x10, 0x26};
  EXPECT_EQ(std::memcmp(embed->data, embed_head, 4), 0);

  struct Want {
    const char* name;
    DType dtype;
    std::vector<int64_t> shape;
    float first[3];
  };
  const Want want[] = {
      {"model.layers.0.self_attn.q_proj.weight", DType::kF16, {32, 32}, {2.041015625f, -2.556640625f, 0.418212890625f}},
      {"model.layers.1.input_layernorm.weight", DType::kF32, {32}, {0.0341927669942379f, 1.3597475290298462f, 1.224721074104309f}},
      {"model.layers.1.mlp.down_proj.weight", DType::kF16, {32, 64}, {-0.3701171875f, 0.994140625f, 0.415771484375f}},
      {"lm_head.weight", DType::kF16, {8, 32}, {0.35888671875f, 1.5107421875f, -1.7861328125f}},
  };
  for (const Want& x : want) {
    const TensorView* t = w.Find(x.name);
    ASSERT_NE(t, nullptr) << x.name;
    EXPECT_EQ(t->dtype, x.dtype) << x.name;
    EXPECT_EQ(t->shape, x.shape) << x.name;
    for (int i = 0; i < 3; ++i) EXPECT_EQ(ElementAsFloat(*t, i), x.first[i]) << x.name << "[" << i << "]";
  }
}

TEST(ReferenceGguf, ReadsEveryValueKindTheGgufPackageWrote) {
  absl::StatusOr<MappedFile> f = MappedFile::Open(TestData("tiny_llama_ref.gguf"));
  ASSERT_TRUE(f.ok()) << f.status();
  absl::StatusOr<GgufFile> g = ParseGguf(f->path(), f->bytes());
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->version, 3u);
  EXPECT_EQ(g->metadata.size(), 24u);
  EXPECT_EQ(g->data_offset, 2432u);
  EXPECT_EQ(g->Find("test.u8")->type, GgufType::kUint8);
  EXPECT_EQ(g->Find("test.u8")->AsInt(), 250);
  EXPECT_EQ(g->Find("test.i16")->AsInt(), -1234);
  EXPECT_EQ(g->Find("test.u64")->AsInt(), int64_t{1} << 40);
  EXPECT_EQ(g->Find("test.f64")->AsDouble(), 0.125);
  const GgufArray* nested = g->Find("test.nested")->AsArray();
  ASSERT_NE(nested, nullptr);
  ASSERT_EQ(nested->items.size(), 2u);
  ASSERT_EQ(nested->items[0].AsArray()->items.size(), 3u);
  EXPECT_EQ(nested->items[0].AsArray()->items[2].AsInt(), 3);
  EXPECT_EQ(nested->items[1].AsArray()->items[0].AsInt(), 4);
  for (const GgufTensorInfo& t : g->tensors) {
    size_t abs = static_cast<size_t>(t.view.data - f->bytes().data());
    if (t.name == "blk.0.attn_q.weight") {
      EXPECT_EQ(abs, 2848u);
    }
    if (t.name == "blk.1.ffn_down.weight") {
      EXPECT_EQ(abs, 35040u);
    }
    if (t.name == "output.weight") {
      EXPECT_EQ(abs, 39264u);
    }
  }
}

TEST(ReferenceSafetensors, ReadsWhatTheSafetensorsPackageWrote) {
  absl::StatusOr<MappedFile> f = MappedFile::Open(TestData("reference.safetensors"));
  ASSERT_TRUE(f.ok()) << f.status();
  absl::StatusOr<std::vector<TensorView>> t = ParseSafetensors(f->path(), f->bytes());
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->size(), 6u);
  std::map<std::string, const TensorView*> by_name;
  for (const TensorView& v : *t) by_name[v.name] = &v;
  const TensorView& bf16 = *by_name.at("bf16");
  EXPECT_EQ(bf16.dtype, DType::kBF16);
  EXPECT_EQ(bf16.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(ElementAsFloat(bf16, 0), 0.373046875f);
  EXPECT_EQ(ElementAsFloat(bf16, 2), -1.5078125f);
  const TensorView& f16 = *by_name.at("f16");
  EXPECT_EQ(f16.shape, (std::vector<int64_t>{5}));
  EXPECT_EQ(ElementAsFloat(f16, 1), 1.1005859375f);
  const TensorView& f32 = *by_name.at("f32");
  EXPECT_EQ(f32.shape, (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(ElementAsFloat(f32, 0), 1.5409960746765137f);
  EXPECT_EQ(ElementAsFloat(f32, 2), -2.1787893772125244f);
  const TensorView& fp8 = *by_name.at("fp8");
  EXPECT_EQ(fp8.dtype, DType::kF8E4M3);
  EXPECT_EQ(fp8.shape, (std::vector<int64_t>{4, 4}));
  // -0.6875, 0.875, 1.0 in e4m3: sign | 4-bit exponent (bias 7) | 3-bit mantissa.
  const uint8_t fp8_head[] = {0xb3, 0x36, 0x38};
  EXPECT_EQ(std::memcmp(fp8.data, fp8_head, 3), 0);
  const TensorView& i32 = *by_name.at("i32");
  EXPECT_EQ(i32.dtype, DType::kI32);
  int32_t iv[6];
  std::memcpy(iv, i32.data, sizeof(iv));
  EXPECT_THAT(iv, ::testing::ElementsAre(0, 1, 2, 3, 4, 5));
  const TensorView& i64 = *by_name.at("i64");
  EXPECT_EQ(i64.dtype, DType::kI64);
  int64_t lv[3];
  std::memcpy(lv, i64.data, sizeof(lv));
  EXPECT_THAT(lv, ::testing::ElementsAre(-1, 0, 1));
}

}  // namespace
}  // namespace shoal::worker
