#include "worker/model/gguf_file.h"

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>

#include "tests/model/gguf_writer.h"

namespace shoal::worker {
namespace {

using ::testing::HasSubstr;
using testing::Encode;
using testing::EncodeArray;
using testing::EncodeString;
using testing::GgufWriter;

std::span<const std::byte> Bytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

absl::StatusOr<GgufFile> Parse(const std::string& s) { return ParseGguf("t.gguf", Bytes(s)); }

// The error message of parsing `s`, which must fail.
std::string ParseError(const std::string& s) {
  absl::StatusOr<GgufFile> f = Parse(s);
  EXPECT_FALSE(f.ok()) << "parsing unexpectedly succeeded";
  return f.ok() ? "" : std::string(f.status().message());
}

void Patch64(std::string& s, size_t at, uint64_t v) { std::memcpy(s.data() + at, &v, 8); }

TEST(GgufFile, ReadsEveryValueType) {
  for (uint32_t version : {2u, 3u}) {
    GgufWriter w(version);
    w.Raw("u8", 0, Encode<uint8_t>(200));
    w.Raw("i8", 1, Encode<int8_t>(-100));
    w.Raw("u16", 2, Encode<uint16_t>(60000));
    w.Raw("i16", 3, Encode<int16_t>(-30000));
    w.Raw("u32", 4, Encode<uint32_t>(4000000000u));
    w.Raw("i32", 5, Encode<int32_t>(-2000000000));
    w.Raw("f32", 6, Encode<float>(1.5f));
    w.Raw("bool", 7, std::string(1, '\1'));
    w.Raw("str", 8, EncodeString("héllo"));
    w.Raw("u64", 10, Encode<uint64_t>(uint64_t{1} << 40));
    w.Raw("i64", 11, Encode<int64_t>(-(int64_t{1} << 40)));
    w.Raw("f64", 12, Encode<double>(-2.25));
    // [[1, 2], [3]] as an array of arrays of int32.
    std::string inner1 = EncodeArray(5, 2, Encode<int32_t>(1) + Encode<int32_t>(2));
    std::string inner2 = EncodeArray(5, 1, Encode<int32_t>(3));
    w.Raw("nested", 9, EncodeArray(9, 2, inner1 + inner2));
    w.StringArray("strs", {"a", "", "bc"});
    std::string s = w.Build();
    absl::StatusOr<GgufFile> f = Parse(s);
    ASSERT_TRUE(f.ok()) << f.status();
    EXPECT_EQ(f->version, version);
    EXPECT_EQ(f->metadata.size(), 14u);
    EXPECT_EQ(f->Find("u8")->AsInt(), 200);
    EXPECT_EQ(f->Find("i8")->AsInt(), -100);
    EXPECT_EQ(f->Find("u16")->AsInt(), 60000);
    EXPECT_EQ(f->Find("i16")->AsInt(), -30000);
    EXPECT_EQ(f->Find("u32")->AsInt(), 4000000000);
    EXPECT_EQ(f->Find("i32")->AsInt(), -2000000000);
    EXPECT_EQ(f->Find("f32")->AsDouble(), 1.5);
    EXPECT_EQ(f->Find("f32")->type, GgufType::kFloat32);
    EXPECT_EQ(f->Find("f32")->AsInt(), std::nullopt);
    ASSERT_NE(f->Find("bool")->AsBool(), nullptr);
    EXPECT_TRUE(*f->Find("bool")->AsBool());
    EXPECT_EQ(*f->Find("str")->AsString(), "héllo");
    EXPECT_EQ(f->Find("u64")->AsInt(), int64_t{1} << 40);
    EXPECT_EQ(f->Find("i64")->AsInt(), -(int64_t{1} << 40));
    EXPECT_EQ(f->Find("f64")->AsDouble(), -2.25);
    const GgufArray* nested = f->Find("nested")->AsArray();
    ASSERT_NE(nested, nullptr);
    EXPECT_EQ(nested->element_type, GgufType::kArray);
    ASSERT_EQ(nested->items.size(), 2u);
    ASSERT_EQ(nested->items[0].AsArray()->items.size(), 2u);
    EXPECT_EQ(nested->items[0].AsArray()->items[1].AsInt(), 2);
    EXPECT_EQ(nested->items[1].AsArray()->items[0].AsInt(), 3);
    const GgufArray* strs = f->Find("strs")->AsArray();
    ASSERT_EQ(strs->items.size(), 3u);
    EXPECT_EQ(*strs->items[1].AsString(), "");
    EXPECT_EQ(*strs->items[2].AsString(), "bc");
    EXPECT_EQ(f->Find("absent"), nullptr);
  }
}

TEST(GgufFile, ReadsEverySupportedTensorTypeWithShapeOutermostFirst) {
  GgufWriter w;
  w.Tensor("f32", testing::kGgmlF32, {3, 2});
  w.Tensor("f16", testing::kGgmlF16, {5});
  w.Tensor("bf16", testing::kGgmlBF16, {4, 3, 2});
  w.Tensor("q8", testing::kGgmlQ8_0, {64, 3});
  w.Tensor("q40", testing::kGgmlQ4_0, {32, 2, 1, 1});
  w.Tensor("q41", testing::kGgmlQ4_1, {96});
  std::string s = w.Build();
  absl::StatusOr<GgufFile> f = Parse(s);
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_EQ(f->tensors.size(), 6u);
  struct Want {
    DType dtype;
    std::vector<int64_t> shape;
    size_t nbytes;
  };
  const Want want[] = {
      {DType::kF32, {2, 3}, 24},        {DType::kF16, {5}, 10},
      {DType::kBF16, {2, 3, 4}, 48},    {DType::kQ8_0, {3, 64}, 3 * 2 * 34},
      {DType::kQ4_0, {1, 1, 2, 32}, 2 * 18}, {DType::kQ4_1, {96}, 3 * 20},
  };
  EXPECT_EQ(f->data_offset, w.layout().data_start);
  EXPECT_EQ(f->data_offset % 32, 0u);
  for (size_t i = 0; i < 6; ++i) {
    const TensorView& v = f->tensors[i].view;
    EXPECT_EQ(v.dtype, want[i].dtype) << v.name;
    EXPECT_EQ(v.shape, want[i].shape) << v.name;
    EXPECT_EQ(v.nbytes, want[i].nbytes) << v.name;
    // The view points at the tensor's bytes inside the buffer (zero-copy).
    EXPECT_EQ(reinterpret_cast<const char*>(v.data), s.data() + w.layout().tensor_data[i]);
    EXPECT_EQ(static_cast<uint8_t>(v.data[1]), (i * 7 + 1) & 0xff);
  }
}

TEST(GgufFile, HonoursGeneralAlignment) {
  GgufWriter w;
  w.set_alignment(64);
  w.Uint32("general.alignment", 64);
  w.Tensor("a", testing::kGgmlF32, {3});
  w.Tensor("b", testing::kGgmlF32, {5});
  std::string s = w.Build();
  absl::StatusOr<GgufFile> f = Parse(s);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->alignment, 64u);
  EXPECT_EQ(f->data_offset % 64, 0u);
  EXPECT_EQ(f->tensors[1].offset, 64u);
  EXPECT_EQ(reinterpret_cast<const char*>(f->tensors[1].view.data),
            s.data() + w.layout().tensor_data[1]);
}

TEST(GgufFile, EveryTruncationIsAnErrorNamingFileAndOffset) {
  GgufWriter w;
  w.String("general.architecture", "llama");
  w.StringArray("tokens", {"a", "bb"});
  w.Float32("eps", 1e-5f);
  w.Tensor("x", testing::kGgmlQ8_0, {32, 2});
  w.Tensor("y", testing::kGgmlF32, {4});
  std::string s = w.Build();
  ASSERT_TRUE(Parse(s).ok());
  for (size_t n = 0; n < s.size(); ++n) {
    // A fresh allocation of exactly n bytes, so ASan would see any read past the end.
    const auto* begin = reinterpret_cast<const std::byte*>(s.data());
    std::vector<std::byte> prefix(begin, begin + n);
    absl::StatusOr<GgufFile> f = ParseGguf("t.gguf", prefix);
    ASSERT_FALSE(f.ok()) << "prefix of " << n << " bytes parsed";
    EXPECT_THAT(f.status().message(), HasSubstr("t.gguf: offset ")) << n;
  }
}

TEST(GgufFile, TruncatedHeader) {
  EXPECT_THAT(ParseError("GG"), HasSubstr("t.gguf: offset 0: truncated header"));
  EXPECT_THAT(ParseError(std::string("GGUF\3\0\0\0", 8)),
              HasSubstr("t.gguf: offset 8: truncated header (tensor count)"));
}

TEST(GgufFile, BadMagic) {
  std::string s = GgufWriter().Build();
  s[0] = 'X';
  EXPECT_THAT(ParseError(s), HasSubstr("t.gguf: offset 0: bad magic: expected 'GGUF'"));
  EXPECT_THAT(ParseError(s), HasSubstr("found 58 47 55 46"));
}

TEST(GgufFile, UnsupportedVersion) {
  std::string s = GgufWriter(1).Build();
  EXPECT_THAT(ParseError(s), HasSubstr("t.gguf: offset 4: unsupported GGUF version 1"));
}

TEST(GgufFile, UnknownValueType) {
  GgufWriter w;
  w.Raw("k", 99, "");
  EXPECT_THAT(ParseError(w.Build()), HasSubstr("offset 33: unknown value type 99 for key 'k'"));
  GgufWriter a;
  a.Raw("k", 9, EncodeArray(42, 0, ""));
  EXPECT_THAT(ParseError(a.Build()), HasSubstr("offset 37: unknown array element type 42"));
}

TEST(GgufFile, HugeStringLength) {
  GgufWriter w;
  w.String("name", "abc");
  std::string s = w.Build();
  // The value's length field follows key length (8) + "name" (4) + type (4).
  size_t at = w.layout().kv_offsets[0] + 16;
  Patch64(s, at, uint64_t{1} << 62);
  EXPECT_THAT(ParseError(s), HasSubstr(fmt::format("t.gguf: offset {}: string length 4611686018427387904 past end of file", at)));
}

TEST(GgufFile, HugeCounts) {
  std::string s = GgufWriter().Build();
  Patch64(s, 8, uint64_t{1} << 60);
  EXPECT_THAT(ParseError(s), HasSubstr("t.gguf: offset 8: tensor count 1152921504606846976 past end of file"));
  s = GgufWriter().Build();
  Patch64(s, 16, 1000);
  EXPECT_THAT(ParseError(s), HasSubstr("t.gguf: offset 16: metadata count 1000 past end of file"));
  GgufWriter a;
  a.Raw("arr", 9, EncodeArray(8, uint64_t{1} << 20, ""));
  EXPECT_THAT(ParseError(a.Build()), HasSubstr("array of 1048576 string elements past end of file"));
  GgufWriter b;
  b.Raw("arr", 9, EncodeArray(0, uint64_t{1} << 30, ""));
  EXPECT_THAT(ParseError(b.Build()), HasSubstr("exceeds the limit"));
}

TEST(GgufFile, DeeplyNestedArraysAreRejected) {
  std::string v = EncodeArray(5, 0, "");
  for (int i = 0; i < 20; ++i) v = EncodeArray(9, 1, v);
  GgufWriter w;
  w.Raw("deep", 9, v);
  EXPECT_THAT(ParseError(w.Build()), HasSubstr("arrays nested more than 8 deep"));
}

TEST(GgufFile, BadBoolAndAlignment) {
  GgufWriter w;
  w.Raw("b", 7, std::string(1, '\x07'));
  EXPECT_THAT(ParseError(w.Build()), HasSubstr("bool value 7 (expected 0 or 1)"));
  GgufWriter a;
  a.Uint32("general.alignment", 48);
  EXPECT_THAT(ParseError(a.Build()), HasSubstr("general.alignment must be a power of two"));
}

TEST(GgufFile, DuplicateKeysAndTensors) {
  GgufWriter w;
  w.Uint32("k", 1);
  w.RawDuplicate("k", 4, Encode<uint32_t>(2));
  EXPECT_THAT(ParseError(w.Build()), HasSubstr("duplicate metadata key 'k'"));
  GgufWriter t;
  t.Tensor("x", testing::kGgmlF32, {4});
  t.Tensor("x", testing::kGgmlF32, {4});
  EXPECT_THAT(ParseError(t.Build()), HasSubstr("duplicate tensor 'x'"));
}

TEST(GgufFile, TensorDataPastEndOfFile) {
  GgufWriter w;
  w.Tensor("blk.0.attn_q.weight", testing::kGgmlF32, {8, 8});
  std::string s = w.Build();
  size_t info = w.layout().tensor_offsets[0];
  s.resize(s.size() - 4);
  EXPECT_THAT(ParseError(s),
              HasSubstr(fmt::format("t.gguf: offset {}: tensor 'blk.0.attn_q.weight' data [{}, {}) "
                                    "past end of file ({} bytes)",
                                    info, w.layout().data_start, w.layout().data_start + 256,
                                    s.size())));
  GgufWriter far;
  far.Tensor("x", testing::kGgmlF32, {8}, /*offset=*/uint64_t{1} << 63);
  EXPECT_THAT(ParseError(far.Build()), HasSubstr("tensor 'x' data ["));
}

TEST(GgufFile, BadDims) {
  GgufWriter w;
  w.Tensor("x", testing::kGgmlF32, {1, 2, 3, 4, 5});
  EXPECT_THAT(ParseError(w.Build()), HasSubstr("tensor 'x': n_dims 5 (expected 1 to 4)"));
  GgufWriter z;
  z.Tensor("x", testing::kGgmlF32, {});
  EXPECT_THAT(ParseError(z.Build()), HasSubstr("n_dims 0"));
  GgufWriter zero;
  zero.Tensor("x", testing::kGgmlF32, {4, 0}, 0, std::string(16, '\0'));
  EXPECT_THAT(ParseError(zero.Build()), HasSubstr("tensor 'x': dimension 1 is 0"));
  GgufWriter big;
  big.Tensor("x", testing::kGgmlF32, {uint64_t{1} << 40, uint64_t{1} << 40}, 0, "");
  EXPECT_THAT(ParseError(big.Build()), HasSubstr("tensor 'x': size of dims"));
}

TEST(GgufFile, UnsupportedTypeNamesTensorAndType) {
  GgufWriter w;
  w.Tensor("blk.3.ffn_down.weight", testing::kGgmlQ4_K, {256});
  std::string s = w.Build();
  size_t type_at = w.layout().tensor_offsets[0] + 8 + 21 + 4 + 8;
  EXPECT_THAT(ParseError(s),
              HasSubstr(fmt::format("t.gguf: offset {}: unsupported ggml type 12 (Q4_K) for tensor "
                                    "'blk.3.ffn_down.weight'",
                                    type_at)));
  GgufWriter u;
  u.Tensor("x", 1000, {4});
  EXPECT_THAT(ParseError(u.Build()), HasSubstr("unsupported ggml type 1000 (unknown)"));
}

TEST(GgufFile, SizeNotAMultipleOfBlockSize) {
  GgufWriter w;
  w.Tensor("x", testing::kGgmlQ8_0, {48, 2}, 0, std::string(200, '\0'));
  EXPECT_THAT(ParseError(w.Build()),
              HasSubstr("tensor 'x': innermost dimension 48 is not a multiple of the Q8_0 block size 32"));
}

TEST(GgufFile, OverlappingTensors) {
  GgufWriter w;
  w.Tensor("a", testing::kGgmlF32, {16}, 0);
  w.Tensor("b", testing::kGgmlF32, {16}, 32);
  EXPECT_THAT(ParseError(w.Build()), HasSubstr("tensors 'a' [0, 64) and 'b' [32, 96) overlap"));
}

TEST(GgufFile, MisalignedTensorOffset) {
  GgufWriter w;
  w.Tensor("a", testing::kGgmlF32, {4}, 4);
  EXPECT_THAT(ParseError(w.Build()),
              HasSubstr("tensor 'a': data offset 4 is not a multiple of the alignment 32"));
}

}  // namespace
}  // namespace shoal::worker
