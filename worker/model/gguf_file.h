#pragma once
// The GGUF container (versions 2 and 3), parsed from bytes already in memory:
//
//   magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
//   n_kv × (string key, u32 value type, value)
//   n_tensors × (string name, u32 n_dims, u64 dims[n_dims] innermost first,
//                u32 ggml type, u64 offset relative to the data section)
//   padding to general.alignment (default 32) | data section
//
// All integers are little-endian; a string is u64 length + bytes; an array is u32 element
// type + u64 count + elements. Every read is bounds-checked: a corrupt file gives an
// error "<file>: offset <N>: <what was expected / found>", never a crash.
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/model/tensor_view.h"

namespace shoal::worker {

enum class GgufType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

std::string_view GgufTypeName(GgufType t);

struct GgufValue;
struct GgufArray {
  GgufType element_type = GgufType::kUint8;
  std::vector<GgufValue> items;
};

// One metadata value. Integers of every width land in int64_t or uint64_t (by
// signedness), floats in double; `type` keeps the type the file declared.
struct GgufValue {
  GgufType type = GgufType::kUint8;
  std::variant<uint64_t, int64_t, double, bool, std::string, GgufArray> value;

  // Any integer type whose value fits in int64_t; nullopt otherwise.
  std::optional<int64_t> AsInt() const;
  // Any float or integer type.
  std::optional<double> AsDouble() const;
  const bool* AsBool() const { return std::get_if<bool>(&value); }
  const std::string* AsString() const { return std::get_if<std::string>(&value); }
  const GgufArray* AsArray() const { return std::get_if<GgufArray>(&value); }
};

struct GgufTensorInfo {
  std::string name;             // as in the file, e.g. "blk.0.attn_q.weight"
  uint32_t ggml_type = 0;
  std::vector<int64_t> dims;    // innermost first, as in the file
  uint64_t offset = 0;          // relative to the data section
  size_t info_offset = 0;       // where this tensor's info record starts, for errors
  TensorView view;              // name as in the file; shape outermost first
};

struct GgufFile {
  std::string source;  // file name for messages
  uint32_t version = 0;
  std::map<std::string, GgufValue, std::less<>> metadata;
  std::vector<GgufTensorInfo> tensors;  // in file order
  uint64_t alignment = 32;
  size_t data_offset = 0;  // absolute offset of the data section

  const GgufValue* Find(std::string_view key) const;
};

// The ggml tensor types Shoal runs (F32, F16, BF16, Q8_0, Q4_0, Q4_1); nullopt otherwise.
std::optional<DType> DTypeFromGgml(uint32_t ggml_type);
// "Q4_K", "IQ2_XS", ... or "unknown" — for messages about unsupported tensors.
std::string_view GgmlTypeName(uint32_t ggml_type);

// Parses `bytes` (which must outlive the result: tensor views point into it). `source`
// names the file in error messages.
absl::StatusOr<GgufFile> ParseGguf(std::string source, std::span<const std::byte> bytes);

}  // namespace shoal::worker
