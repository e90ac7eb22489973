#include "worker/model/safetensors_file.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>

#include "tests/model/model_files.h"

namespace shoal::worker {
namespace {

using ::testing::HasSubstr;
using testing::BuildSafetensors;
using testing::BuildSafetensorsRaw;
using testing::StTensor;

std::span<const std::byte> Bytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

std::string ParseError(const std::string& s) {
  absl::StatusOr<std::vector<TensorView>> t = ParseSafetensors("w.safetensors", Bytes(s));
  EXPECT_FALSE(t.ok()) << "parsing unexpectedly succeeded";
  return t.ok() ? "" : std::string(t.status().message());
}

TEST(Safetensors, ReadsEveryDtypeAsZeroCopyViews) {
  std::vector<StTensor> in = {
      {"a.f32", "F32", {2, 3}},   {"b.f16", "F16", {4}},  {"c.bf16", "BF16", {2, 2, 2}},
      {"d.fp8", "F8_E4M3", {8, 16}}, {"e.i32", "I32", {3}}, {"f.i64", "I64", {1, 2}},
      {"g.empty", "F32", {0, 4}},  {"h.scalar", "F32", {}},
  };
  std::string s = BuildSafetensors(in);
  absl::StatusOr<std::vector<TensorView>> t = ParseSafetensors("w.safetensors", Bytes(s));
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->size(), in.size());
  const DType want[] = {DType::kF32, DType::kF16, DType::kBF16, DType::kF8E4M3,
                        DType::kI32, DType::kI64, DType::kF32,  DType::kF32};
  uint64_t header_len;
  std::memcpy(&header_len, s.data(), 8);
  const char* data = s.data() + 8 + header_len;
  size_t offset = 0;
  for (size_t i = 0; i < in.size(); ++i) {
    const TensorView& v = (*t)[i];  // sorted by name, which is the input order here
    EXPECT_EQ(v.name, in[i].name);
    EXPECT_EQ(v.dtype, want[i]) << v.name;
    EXPECT_EQ(v.shape, in[i].shape) << v.name;
    EXPECT_EQ(v.nbytes, static_cast<size_t>(v.numel()) * BlockBytes(v.dtype)) << v.name;
    EXPECT_EQ(reinterpret_cast<const char*>(v.data), data + offset) << v.name;
    if (v.nbytes > 0) {
      EXPECT_EQ(static_cast<uint8_t>(v.data[0]), (i * 13) & 0xff) << v.name;
    }
    offset += v.nbytes;
  }
}

TEST(Safetensors, EveryTruncationIsAnError) {
  std::string s = BuildSafetensors({{"x", "F32", {4}}, {"y", "BF16", {2, 2}}});
  for (size_t n = 0; n < s.size(); ++n) {
    const auto* begin = reinterpret_cast<const std::byte*>(s.data());
    std::vector<std::byte> prefix(begin, begin + n);
    absl::StatusOr<std::vector<TensorView>> t = ParseSafetensors("w.safetensors", prefix);
    ASSERT_FALSE(t.ok()) << "prefix of " << n << " bytes parsed";
    EXPECT_THAT(t.status().message(), HasSubstr("w.safetensors: ")) << n;
  }
}

struct BadCase {
  const char* name;
  std::string file;
  const char* message;
};

class SafetensorsRejects : public ::testing::TestWithParam<BadCase> {};

TEST_P(SafetensorsRejects, WithMessage) {
  std::string msg = ParseError(GetParam().file);
  EXPECT_THAT(msg, ::testing::StartsWith("w.safetensors: "));
  EXPECT_THAT(msg, HasSubstr(GetParam().message));
}

std::string WithHeaderLength(uint64_t len) {
  std::string s = BuildSafetensors({{"x", "F32", {4}}});
  std::memcpy(s.data(), &len, 8);
  return s;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, SafetensorsRejects,
    ::testing::Values(
        BadCase{"TooShort", "abc", "offset 0: truncated header: expected 8-byte header length, file is 3 bytes"},
        BadCase{"HeaderPastEof", WithHeaderLength(1000), "offset 0: header length 1000 past end of file"},
        BadCase{"HeaderHuge", WithHeaderLength(uint64_t{1} << 62), "header length 4611686018427387904 past end of file"},
        BadCase{"NotJson", BuildSafetensorsRaw("{\"x\": [1, 2", ""), "header is not valid JSON (offset "},
        BadCase{"NotObject", BuildSafetensorsRaw("[1, 2]", ""), "header is not a JSON object"},
        BadCase{"EntryNotObject", BuildSafetensorsRaw(R"({"x": 3})", ""), "tensor 'x': header entry is not a JSON object"},
        BadCase{"MissingDtype", BuildSafetensorsRaw(R"({"x": {"shape": [1], "data_offsets": [0, 4]}})", std::string(4, '\0')),
                "tensor 'x': missing string field 'dtype'"},
        BadCase{"UnsupportedDtype", BuildSafetensorsRaw(R"({"x": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}})", std::string(8, '\0')),
                "tensor 'x': unsupported dtype 'F64' (supported: F32, F16, BF16, F8_E4M3, I32, I64)"},
        BadCase{"NegativeShape", BuildSafetensorsRaw(R"({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", std::string(4, '\0')),
                "tensor 'x': shape entry 0 is not a non-negative integer"},
        BadCase{"ShapeOverflow", BuildSafetensorsRaw(R"({"x": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 4]}})", std::string(4, '\0')),
                "tensor 'x': shape entry 1 (4294967296) makes the element count overflow"},
        BadCase{"BadOffsets", BuildSafetensorsRaw(R"({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0]}})", std::string(4, '\0')),
                "tensor 'x': 'data_offsets' must be [begin, end]"},
        BadCase{"EndBeforeBegin", BuildSafetensorsRaw(R"({"x": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}})", std::string(8, '\0')),
                "tensor 'x': data_offsets [8, 4) end before begin"},
        BadCase{"OutOfRange", BuildSafetensorsRaw(R"({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", std::string(12, '\0')),
                "tensor 'x': data_offsets [0, 16) past end of data (12 bytes)"},
        BadCase{"WrongNumel", BuildSafetensorsRaw(R"({"x": {"dtype": "BF16", "shape": [3, 2], "data_offsets": [0, 8]}})", std::string(8, '\0')),
                "tensor 'x': data_offsets [0, 8) hold 8 bytes but shape [3, 2] of BF16 needs 12"},
        BadCase{"Overlap", BuildSafetensorsRaw(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})", std::string(12, '\0')),
                "tensors 'a' [0, 8) and 'b' [4, 12) overlap"}),
    [](const ::testing::TestParamInfo<BadCase>& i) { return i.param.name; });

TEST(Safetensors, MetadataIsIgnored) {
  std::string s = BuildSafetensorsRaw(
      R"({"__metadata__": {"format": "pt", "x": "y"}, "w": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]}})",
      std::string(4, '\1'));
  absl::StatusOr<std::vector<TensorView>> t = ParseSafetensors("w.safetensors", Bytes(s));
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->size(), 1u);
  EXPECT_EQ((*t)[0].name, "w");
}

}  // namespace
}  // namespace shoal::worker
