#pragma once
// A small GGUF writer for tests: builds valid files byte by byte, and exposes the layout
// so corruption tests can patch a known offset.
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

namespace shoal::worker::testing {

inline void AppendU32(std::string& out, uint32_t v) { out.append(reinterpret_cast<const char*>(&v), 4); }
inline void AppendU64(std::string& out, uint64_t v) { out.append(reinterpret_cast<const char*>(&v), 8); }
inline void AppendString(std::string& out, const std::string& s) {
  AppendU64(out, s.size());
  out += s;
}
template <typename T>
std::string Encode(T v) {
  return std::string(reinterpret_cast<const char*>(&v), sizeof(T));
}
inline std::string EncodeString(const std::string& s) {
  std::string out;
  AppendString(out, s);
  return out;
}
// An array value: element type, count, then the already-encoded elements.
inline std::string EncodeArray(uint32_t elem_type, uint64_t count, const std::string& elems) {
  std::string out;
  AppendU32(out, elem_type);
  AppendU64(out, count);
  return out + elems;
}

// ggml type ids used in tests.
enum GgmlType : uint32_t { kGgmlF32 = 0, kGgmlF16 = 1, kGgmlQ4_0 = 2, kGgmlQ4_1 = 3,
                           kGgmlQ8_0 = 8, kGgmlQ4_K = 12, kGgmlBF16 = 30 };

inline uint64_t GgmlBytes(uint32_t type, const std::vector<uint64_t>& dims) {
  uint64_t block = 1, block_bytes = 0;
  switch (type) {
    case kGgmlF32: block_bytes = 4; break;
    case kGgmlF16: case kGgmlBF16: block_bytes = 2; break;
    case kGgmlQ8_0: block = 32; block_bytes = 34; break;
    case kGgmlQ4_0: block = 32; block_bytes = 18; break;
    case kGgmlQ4_1: block = 32; block_bytes = 20; break;
    default: return 64;
  }
  uint64_t n = 1;
  for (uint64_t d : dims) n *= d;
  return n / block * block_bytes;
}

class GgufWriter {
 public:
  struct Layout {
    size_t kv_start = 0;
    std::vector<size_t> kv_offsets;      // start of each key/value record
    std::vector<size_t> tensor_offsets;  // start of each tensor info record
    size_t data_start = 0;
    std::vector<size_t> tensor_data;     // absolute start of each tensor's bytes
  };

  explicit GgufWriter(uint32_t version = 3) : version_(version) {}

  // Sets `key`, replacing an earlier value of the same key in place.
  void Raw(const std::string& key, uint32_t type, const std::string& encoded) {
    for (Kv& kv : kvs_) {
      if (kv.key == key) {
        kv = {key, type, encoded};
        return;
      }
    }
    kvs_.push_back({key, type, encoded});
  }
  // Appends even if `key` exists (to write a corrupt file with a duplicate key).
  void RawDuplicate(const std::string& key, uint32_t type, const std::string& encoded) {
    kvs_.push_back({key, type, encoded});
  }
  void Remove(const std::string& key) {
    std::erase_if(kvs_, [&](const Kv& kv) { return kv.key == key; });
  }
  void RemoveTensor(const std::string& name) {
    std::erase_if(tensors_, [&](const T& t) { return t.name == name; });
  }
  void Uint32(const std::string& key, uint32_t v) { Raw(key, 4, Encode(v)); }
  void Int32(const std::string& key, int32_t v) { Raw(key, 5, Encode(v)); }
  void Float32(const std::string& key, float v) { Raw(key, 6, Encode(v)); }
  void Bool(const std::string& key, bool v) { Raw(key, 7, std::string(1, v ? 1 : 0)); }
  void String(const std::string& key, const std::string& v) { Raw(key, 8, EncodeString(v)); }
  void StringArray(const std::string& key, const std::vector<std::string>& v) {
    std::string elems;
    for (const std::string& s : v) AppendString(elems, s);
    Raw(key, 9, EncodeArray(8, v.size(), elems));
  }
  void Int32Array(const std::string& key, const std::vector<int32_t>& v) {
    std::string elems;
    for (int32_t x : v) elems += Encode(x);
    Raw(key, 9, EncodeArray(5, v.size(), elems));
  }

  // dims innermost first, as GGUF stores them. Data defaults to a pattern derived from
  // the tensor's index; offset defaults to the next aligned spot after the previous one.
  void Tensor(const std::string& name, uint32_t type, std::vector<uint64_t> dims,
              std::optional<uint64_t> offset = std::nullopt,
              std::optional<std::string> data = std::nullopt) {
    tensors_.push_back({name, type, std::move(dims), offset, std::move(data)});
  }

  void set_alignment(uint64_t a) { alignment_ = a; }
  void set_tensor_count(uint64_t n) { tensor_count_ = n; }
  void set_kv_count(uint64_t n) { kv_count_ = n; }
  const Layout& layout() const { return layout_; }

  std::string Build() {
    layout_ = Layout();
    std::string out = "GGUF";
    AppendU32(out, version_);
    AppendU64(out, tensor_count_.value_or(tensors_.size()));
    AppendU64(out, kv_count_.value_or(kvs_.size()));
    layout_.kv_start = out.size();
    for (const Kv& kv : kvs_) {
      layout_.kv_offsets.push_back(out.size());
      AppendString(out, kv.key);
      AppendU32(out, kv.type);
      out += kv.encoded;
    }
    std::vector<uint64_t> offsets;
    std::vector<std::string> datas;
    uint64_t next = 0;
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const T& t = tensors_[i];
      std::string data;
      if (t.data) {
        data = *t.data;
      } else {
        data.resize(GgmlBytes(t.type, t.dims));
        for (size_t b = 0; b < data.size(); ++b) data[b] = static_cast<char>((i * 7 + b) & 0xff);
      }
      uint64_t off = t.offset.value_or(next);
      next = (off + data.size() + alignment_ - 1) / alignment_ * alignment_;
      offsets.push_back(off);
      datas.push_back(std::move(data));
    }
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const T& t = tensors_[i];
      layout_.tensor_offsets.push_back(out.size());
      AppendString(out, t.name);
      AppendU32(out, static_cast<uint32_t>(t.dims.size()));
      for (uint64_t d : t.dims) AppendU64(out, d);
      AppendU32(out, t.type);
      AppendU64(out, offsets[i]);
    }
    out.resize((out.size() + alignment_ - 1) / alignment_ * alignment_, '\0');
    layout_.data_start = out.size();
    for (size_t i = 0; i < tensors_.size(); ++i) {
      size_t at = layout_.data_start + offsets[i];
      layout_.tensor_data.push_back(at);
      if (offsets[i] > (uint64_t{1} << 30)) continue;  // deliberately out of range: write nothing
      if (out.size() < at + datas[i].size()) out.resize(at + datas[i].size(), '\0');
      std::memcpy(out.data() + at, datas[i].data(), datas[i].size());
    }
    return out;
  }

 private:
  struct Kv {
    std::string key;
    uint32_t type;
    std::string encoded;
  };
  struct T {
    std::string name;
    uint32_t type;
    std::vector<uint64_t> dims;
    std::optional<uint64_t> offset;
    std::optional<std::string> data;
  };
  uint32_t version_;
  uint64_t alignment_ = 32;
  std::optional<uint64_t> tensor_count_, kv_count_;
  std::vector<Kv> kvs_;
  std::vector<T> tensors_;
  Layout layout_;
};

}  // namespace shoal::worker::testing
