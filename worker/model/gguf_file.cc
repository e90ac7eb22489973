#include "worker/model/gguf_file.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <numeric>
#include <utility>

#include "worker/common/status_macros.h"

namespace shoal::worker {
namespace {

static_assert(std::endian::native == std::endian::little,
              "GGUF is little-endian; reading it on a big-endian host needs byte swaps");

// Deeper nesting than this is no real file: it only serves to exhaust the stack.
constexpr int kMaxArrayDepth = 8;
// The largest metadata array we accept. Real vocabularies are < 1M entries; the cap keeps
// a corrupt count from turning into tens of gigabytes of GgufValues.
constexpr uint64_t kMaxArrayItems = uint64_t{1} << 24;
constexpr uint32_t kMaxDims = 4;

// Reads little-endian scalars and strings from `bytes`, never past its end.
class ByteReader {
 public:
  ByteReader(const std::string& source, std::span<const std::byte> bytes)
      : source_(source), bytes_(bytes) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return bytes_.size() - pos_; }

  absl::Status Error(size_t offset, const std::string& what) const {
    return absl::InvalidArgumentError(fmt::format("{}: offset {}: {}", source_, offset, what));
  }

  template <typename T>
  absl::StatusOr<T> Read(std::string_view what) {
    if (remaining() < sizeof(T)) {
      return Error(pos_, fmt::format("truncated {}: expected {} bytes, {} left before end of file",
                                     what, sizeof(T), remaining()));
    }
    T v;
    std::memcpy(&v, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  absl::StatusOr<std::string> ReadString(std::string_view what) {
    size_t at = pos_;
    ASSIGN_OR_RETURN(uint64_t len, Read<uint64_t>(fmt::format("{} length", what)));
    if (len > remaining()) {
      return Error(at, fmt::format("{} length {} past end of file ({} bytes left)", what, len,
                                   remaining()));
    }
    std::string s(reinterpret_cast<const char*>(bytes_.data() + pos_), len);
    pos_ += len;
    return s;
  }

 private:
  const std::string& source_;
  std::span<const std::byte> bytes_;
  size_t pos_ = 0;
};

bool IsKnownType(uint32_t t) { return t <= static_cast<uint32_t>(GgufType::kFloat64); }

// Fewest bytes one value of type `t` can take; bounds array counts before allocating.
uint64_t MinEncodedSize(GgufType t) {
  switch (t) {
    case GgufType::kUint8:
    case GgufType::kInt8:
    case GgufType::kBool:
      return 1;
    case GgufType::kUint16:
    case GgufType::kInt16:
      return 2;
    case GgufType::kUint32:
    case GgufType::kInt32:
    case GgufType::kFloat32:
      return 4;
    case GgufType::kUint64:
    case GgufType::kInt64:
    case GgufType::kFloat64:
    case GgufType::kString:
      return 8;
    case GgufType::kArray:
      return 4 + 8;
  }
  return 1;
}

absl::StatusOr<GgufValue> ReadValue(ByteReader& r, GgufType type, int depth);

template <typename T, typename Stored>
absl::StatusOr<GgufValue> ReadScalar(ByteReader& r, GgufType type) {
  ASSIGN_OR_RETURN(T v, r.Read<T>(GgufTypeName(type)));
  GgufValue out;
  out.type = type;
  out.value = static_cast<Stored>(v);
  return out;
}

absl::StatusOr<GgufValue> ReadArray(ByteReader& r, int depth) {
  size_t at = r.pos();
  if (depth >= kMaxArrayDepth) {
    return r.Error(at, fmt::format("arrays nested more than {} deep", kMaxArrayDepth));
  }
  ASSIGN_OR_RETURN(uint32_t elem, r.Read<uint32_t>("array element type"));
  if (!IsKnownType(elem)) return r.Error(at, fmt::format("unknown array element type {}", elem));
  size_t count_at = r.pos();
  ASSIGN_OR_RETURN(uint64_t count, r.Read<uint64_t>("array length"));
  GgufType elem_type = static_cast<GgufType>(elem);
  if (count > kMaxArrayItems) {
    return r.Error(count_at, fmt::format("array of {} elements exceeds the limit of {}", count,
                                         kMaxArrayItems));
  }
  if (count * MinEncodedSize(elem_type) > r.remaining()) {
    return r.Error(count_at, fmt::format("array of {} {} elements past end of file ({} bytes left)",
                                         count, GgufTypeName(elem_type), r.remaining()));
  }
  GgufArray array;
  array.element_type = elem_type;
  array.items.reserve(count);
  for (uint64_t i = 0; i < count; ++i) {
    ASSIGN_OR_RETURN(GgufValue v, ReadValue(r, elem_type, depth + 1));
    array.items.push_back(std::move(v));
  }
  GgufValue out;
  out.type = GgufType::kArray;
  out.value = std::move(array);
  return out;
}

absl::StatusOr<GgufValue> ReadValue(ByteReader& r, GgufType type, int depth) {
  switch (type) {
    case GgufType::kUint8: return ReadScalar<uint8_t, uint64_t>(r, type);
    case GgufType::kInt8: return ReadScalar<int8_t, int64_t>(r, type);
    case GgufType::kUint16: return ReadScalar<uint16_t, uint64_t>(r, type);
    case GgufType::kInt16: return ReadScalar<int16_t, int64_t>(r, type);
    case GgufType::kUint32: return ReadScalar<uint32_t, uint64_t>(r, type);
    case GgufType::kInt32: return ReadScalar<int32_t, int64_t>(r, type);
    case GgufType::kUint64: return ReadScalar<uint64_t, uint64_t>(r, type);
    case GgufType::kInt64: return ReadScalar<int64_t, int64_t>(r, type);
    case GgufType::kFloat32: return ReadScalar<float, double>(r, type);
    case GgufType::kFloat64: return ReadScalar<double, double>(r, type);
    case GgufType::kBool: {
      size_t at = r.pos();
      ASSIGN_OR_RETURN(uint8_t b, r.Read<uint8_t>("bool"));
      if (b > 1) return r.Error(at, fmt::format("bool value {} (expected 0 or 1)", b));
      GgufValue out;
      out.type = type;
      out.value = b == 1;
      return out;
    }
    case GgufType::kString: {
      ASSIGN_OR_RETURN(std::string s, r.ReadString("string"));
      GgufValue out;
      out.type = type;
      out.value = std::move(s);
      return out;
    }
    case GgufType::kArray: return ReadArray(r, depth);
  }
  return r.Error(r.pos(), fmt::format("unknown value type {}", static_cast<uint32_t>(type)));
}

// a * b, or nullopt on overflow.
std::optional<uint64_t> CheckedMul(uint64_t a, uint64_t b) {
  uint64_t out;
  if (__builtin_mul_overflow(a, b, &out)) return std::nullopt;
  return out;
}

std::string FormatDims(const std::vector<int64_t>& dims) {
  return fmt::format("[{}]", fmt::join(dims, ", "));
}

// One tensor info record; sizes the tensor but leaves data placement to the caller,
// which knows the data section's offset only after the last record.
absl::StatusOr<GgufTensorInfo> ReadTensorInfo(ByteReader& r) {
  GgufTensorInfo t;
  t.info_offset = r.pos();
  ASSIGN_OR_RETURN(t.name, r.ReadString("tensor name"));
  size_t ndims_at = r.pos();
  ASSIGN_OR_RETURN(uint32_t n_dims, r.Read<uint32_t>("tensor n_dims"));
  if (n_dims == 0 || n_dims > kMaxDims) {
    return r.Error(ndims_at, fmt::format("tensor '{}': n_dims {} (expected 1 to {})", t.name,
                                         n_dims, kMaxDims));
  }
  for (uint32_t i = 0; i < n_dims; ++i) {
    size_t dim_at = r.pos();
    ASSIGN_OR_RETURN(uint64_t d, r.Read<uint64_t>("tensor dimension"));
    if (d == 0 || d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return r.Error(dim_at, fmt::format("tensor '{}': dimension {} is {} (expected > 0)",
                                         t.name, i, d));
    }
    t.dims.push_back(static_cast<int64_t>(d));
  }
  size_t type_at = r.pos();
  ASSIGN_OR_RETURN(t.ggml_type, r.Read<uint32_t>("tensor type"));
  std::optional<DType> dtype = DTypeFromGgml(t.ggml_type);
  if (!dtype) {
    return r.Error(type_at, fmt::format("unsupported ggml type {} ({}) for tensor '{}' "
                                        "(supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)",
                                        t.ggml_type, GgmlTypeName(t.ggml_type), t.name));
  }
  ASSIGN_OR_RETURN(t.offset, r.Read<uint64_t>("tensor data offset"));

  int64_t block = BlockSize(*dtype);
  if (t.dims[0] % block != 0) {
    return r.Error(t.info_offset,
                   fmt::format("tensor '{}': innermost dimension {} is not a multiple of the "
                               "{} block size {}",
                               t.name, t.dims[0], DTypeName(*dtype), block));
  }
  std::optional<uint64_t> nbytes = RowBytes(*dtype, t.dims[0]);
  uint64_t numel = static_cast<uint64_t>(t.dims[0]);
  for (size_t i = 1; i < t.dims.size() && nbytes; ++i) {
    nbytes = CheckedMul(*nbytes, static_cast<uint64_t>(t.dims[i]));
    std::optional<uint64_t> n = CheckedMul(numel, static_cast<uint64_t>(t.dims[i]));
    if (!n || *n > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) nbytes.reset();
    else numel = *n;
  }
  if (!nbytes) {
    return r.Error(t.info_offset, fmt::format("tensor '{}': size of dims {} overflows", t.name,
                                              FormatDims(t.dims)));
  }
  t.view.name = t.name;
  t.view.dtype = *dtype;
  t.view.shape.assign(t.dims.rbegin(), t.dims.rend());
  t.view.nbytes = *nbytes;
  return t;
}

}  // namespace

std::string_view GgufTypeName(GgufType t) {
  switch (t) {
    case GgufType::kUint8: return "uint8";
    case GgufType::kInt8: return "int8";
    case GgufType::kUint16: return "uint16";
    case GgufType::kInt16: return "int16";
    case GgufType::kUint32: return "uint32";
    case GgufType::kInt32: return "int32";
    case GgufType::kFloat32: return "float32";
    case GgufType::kBool: return "bool";
    case GgufType::kString: return "string";
    case GgufType::kArray: return "array";
    case GgufType::kUint64: return "uint64";
    case GgufType::kInt64: return "int64";
    case GgufType::kFloat64: return "float64";
  }
  return "unknown";
}

std::optional<int64_t> GgufValue::AsInt() const {
  if (const auto* u = std::get_if<uint64_t>(&value)) {
    if (*u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return static_cast<int64_t>(*u);
  }
  if (const auto* i = std::get_if<int64_t>(&value)) return *i;
  return std::nullopt;
}

std::optional<double> GgufValue::AsDouble() const {
  if (const auto* d = std::get_if<double>(&value)) return *d;
  if (const auto* u = std::get_if<uint64_t>(&value)) return static_cast<double>(*u);
  if (const auto* i = std::get_if<int64_t>(&value)) return static_cast<double>(*i);
  return std::nullopt;
}

const GgufValue* GgufFile::Find(std::string_view key) const {
  auto it = metadata.find(key);
  return it == metadata.end() ? nullptr : &it->second;
}

std::optional<DType> DTypeFromGgml(uint32_t ggml_type) {
  switch (ggml_type) {
    case 0: return DType::kF32;
    case 1: return DType::kF16;
    case 2: return DType::kQ4_0;
    case 3: return DType::kQ4_1;
    case 8: return DType::kQ8_0;
    case 30: return DType::kBF16;
    default: return std::nullopt;
  }
}

std::string_view GgmlTypeName(uint32_t ggml_type) {
  // ggml's type ids; gaps are ids ggml has retired.
  static constexpr std::string_view kNames[] = {
      "F32",     "F16",    "Q4_0",    "Q4_1",   "",       "",      "Q5_0",   "Q5_1",
      "Q8_0",    "Q8_1",   "Q2_K",    "Q3_K",   "Q4_K",   "Q5_K",  "Q6_K",   "Q8_K",
      "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S",  "IQ4_NL", "IQ3_S", "IQ2_S",  "IQ4_XS",
      "I8",      "I16",    "I32",     "I64",    "F64",    "IQ1_M", "BF16",   "",
      "",        "",       "TQ1_0",   "TQ2_0",  "",       "",      "",       "MXFP4"};
  if (ggml_type < std::size(kNames) && !kNames[ggml_type].empty()) return kNames[ggml_type];
  return "unknown";
}

absl::StatusOr<GgufFile> ParseGguf(std::string source, std::span<const std::byte> bytes) {
  GgufFile file;
  file.source = std::move(source);
  ByteReader r(file.source, bytes);

  constexpr size_t kHeaderBytes = 4 + 4 + 8 + 8;
  if (bytes.size() < 4) {
    return r.Error(0, fmt::format("truncated header: expected {} bytes, file is {} bytes",
                                  kHeaderBytes, bytes.size()));
  }
  if (std::memcmp(bytes.data(), "GGUF", 4) != 0) {
    const auto* b = reinterpret_cast<const uint8_t*>(bytes.data());
    return r.Error(0, fmt::format("bad magic: expected 'GGUF' (47 47 55 46), found "
                                  "{:02x} {:02x} {:02x} {:02x}",
                                  b[0], b[1], b[2], b[3]));
  }
  ASSIGN_OR_RETURN(uint32_t magic, r.Read<uint32_t>("magic"));
  (void)magic;
  ASSIGN_OR_RETURN(file.version, r.Read<uint32_t>("header (version)"));
  if (file.version != 2 && file.version != 3) {
    return r.Error(4, fmt::format("unsupported GGUF version {} (expected 2 or 3)", file.version));
  }
  ASSIGN_OR_RETURN(uint64_t n_tensors, r.Read<uint64_t>("header (tensor count)"));
  ASSIGN_OR_RETURN(uint64_t n_kv, r.Read<uint64_t>("header (metadata count)"));
  // Each record has a minimum encoded size; a count the rest of the file cannot hold is
  // corruption, caught here before it turns into a huge allocation.
  constexpr uint64_t kMinKvBytes = 8 + 4 + 1;
  constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;
  if (n_kv > r.remaining() / kMinKvBytes) {
    return r.Error(16, fmt::format("metadata count {} past end of file ({} bytes left)", n_kv,
                                   r.remaining()));
  }
  if (n_tensors > r.remaining() / kMinTensorInfoBytes) {
    return r.Error(8, fmt::format("tensor count {} past end of file ({} bytes left)", n_tensors,
                                  r.remaining()));
  }

  for (uint64_t i = 0; i < n_kv; ++i) {
    size_t key_at = r.pos();
    ASSIGN_OR_RETURN(std::string key, r.ReadString("metadata key"));
    size_t type_at = r.pos();
    ASSIGN_OR_RETURN(uint32_t type, r.Read<uint32_t>("metadata value type"));
    if (!IsKnownType(type)) {
      return r.Error(type_at, fmt::format("unknown value type {} for key '{}'", type, key));
    }
    ASSIGN_OR_RETURN(GgufValue value, ReadValue(r, static_cast<GgufType>(type), 0));
    if (key == "general.alignment") {
      std::optional<int64_t> a = value.AsInt();
      if (!a || *a <= 0 || *a > (1 << 30) || !std::has_single_bit(static_cast<uint64_t>(*a))) {
        return r.Error(type_at, "general.alignment must be a power of two integer");
      }
      file.alignment = static_cast<uint64_t>(*a);
    }
    if (!file.metadata.emplace(key, std::move(value)).second) {
      return r.Error(key_at, fmt::format("duplicate metadata key '{}'", key));
    }
  }

  file.tensors.reserve(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    ASSIGN_OR_RETURN(GgufTensorInfo t, ReadTensorInfo(r));
    file.tensors.push_back(std::move(t));
  }
  file.data_offset = (r.pos() + file.alignment - 1) / file.alignment * file.alignment;

  // Place each tensor in the data section and check it lies inside the file.
  std::map<std::string_view, size_t> seen;
  for (size_t i = 0; i < file.tensors.size(); ++i) {
    GgufTensorInfo& t = file.tensors[i];
    if (!seen.emplace(t.name, i).second) {
      return r.Error(t.info_offset, fmt::format("duplicate tensor '{}'", t.name));
    }
    if (t.offset % file.alignment != 0) {
      return r.Error(t.info_offset, fmt::format("tensor '{}': data offset {} is not a multiple of "
                                                "the alignment {}",
                                                t.name, t.offset, file.alignment));
    }
    uint64_t begin = file.data_offset + t.offset;  // no overflow: both are below 2^63 + file size
    if (t.offset > bytes.size() || begin > bytes.size() || t.view.nbytes > bytes.size() - begin) {
      uint64_t end = t.offset > bytes.size() ? t.offset : begin + t.view.nbytes;
      return r.Error(t.info_offset, fmt::format("tensor '{}' data [{}, {}) past end of file ({} bytes)",
                                                t.name, begin, end, bytes.size()));
    }
    t.view.data = bytes.data() + begin;
  }

  // Tensors must not share bytes: sort by start and compare neighbours.
  std::vector<size_t> order(file.tensors.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return file.tensors[a].offset < file.tensors[b].offset; });
  for (size_t k = 1; k < order.size(); ++k) {
    const GgufTensorInfo& prev = file.tensors[order[k - 1]];
    const GgufTensorInfo& cur = file.tensors[order[k]];
    if (prev.offset + prev.view.nbytes > cur.offset) {
      return r.Error(cur.info_offset,
                     fmt::format("tensors '{}' [{}, {}) and '{}' [{}, {}) overlap", prev.name,
                                 prev.offset, prev.offset + prev.view.nbytes, cur.name,
                                 cur.offset, cur.offset + cur.view.nbytes));
    }
  }
  return file;
}

}  // namespace shoal::worker
