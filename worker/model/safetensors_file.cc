#include "worker/model/safetensors_file.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>

namespace shoal::worker {
namespace {

using Json = nlohmann::json;

std::optional<DType> DTypeFromSafetensors(std::string_view s) {
  if (s == "F32") return DType::kF32;
  if (s == "F16") return DType::kF16;
  if (s == "BF16") return DType::kBF16;
  if (s == "F8_E4M3") return DType::kF8E4M3;
  if (s == "I32") return DType::kI32;
  if (s == "I64") return DType::kI64;
  return std::nullopt;
}

// a * b, or nullopt on overflow past int64.
std::optional<uint64_t> CheckedMul(uint64_t a, uint64_t b) {
  uint64_t out;
  if (__builtin_mul_overflow(a, b, &out) ||
      out > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return std::nullopt;
  }
  return out;
}

struct Entry {
  TensorView view;
  uint64_t begin = 0;
  uint64_t end = 0;
};

// One header entry; the JSON is untrusted, so every field's type is checked.
absl::StatusOr<Entry> ParseEntry(const std::string& source, const std::string& name,
                                 const Json& j, uint64_t data_size) {
  auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(fmt::format("{}: tensor '{}': {}", source, name, what));
  };
  if (!j.is_object()) return bad("header entry is not a JSON object");
  auto dtype_it = j.find("dtype");
  if (dtype_it == j.end() || !dtype_it->is_string()) return bad("missing string field 'dtype'");
  const std::string& dtype_name = dtype_it->get_ref<const std::string&>();
  std::optional<DType> dtype = DTypeFromSafetensors(dtype_name);
  if (!dtype) {
    return bad(fmt::format("unsupported dtype '{}' (supported: F32, F16, BF16, F8_E4M3, I32, I64)",
                           dtype_name));
  }
  auto shape_it = j.find("shape");
  if (shape_it == j.end() || !shape_it->is_array()) return bad("missing array field 'shape'");
  Entry e;
  e.view.name = name;
  e.view.dtype = *dtype;
  uint64_t numel = 1;
  // Messages avoid dumping the untrusted JSON: a deeply nested value would recurse.
  for (size_t i = 0; i < shape_it->size(); ++i) {
    const Json& d = (*shape_it)[i];
    if (!d.is_number_unsigned()) {
      return bad(fmt::format("shape entry {} is not a non-negative integer", i));
    }
    uint64_t dim = d.get<uint64_t>();
    std::optional<uint64_t> n = CheckedMul(numel, dim);
    if (!n) return bad(fmt::format("shape entry {} ({}) makes the element count overflow", i, dim));
    numel = *n;
    e.view.shape.push_back(static_cast<int64_t>(dim));
  }
  auto off_it = j.find("data_offsets");
  if (off_it == j.end() || !off_it->is_array() || off_it->size() != 2 ||
      !(*off_it)[0].is_number_unsigned() || !(*off_it)[1].is_number_unsigned()) {
    return bad("'data_offsets' must be [begin, end] with non-negative integers");
  }
  e.begin = (*off_it)[0].get<uint64_t>();
  e.end = (*off_it)[1].get<uint64_t>();
  if (e.end < e.begin) {
    return bad(fmt::format("data_offsets [{}, {}) end before begin", e.begin, e.end));
  }
  if (e.end > data_size) {
    return bad(fmt::format("data_offsets [{}, {}) past end of data ({} bytes)", e.begin, e.end,
                           data_size));
  }
  std::optional<uint64_t> nbytes = CheckedMul(numel, BlockBytes(*dtype));
  if (!nbytes || *nbytes != e.end - e.begin) {
    return bad(fmt::format("data_offsets [{}, {}) hold {} bytes but shape [{}] of {} needs {}",
                           e.begin, e.end, e.end - e.begin, fmt::join(e.view.shape, ", "),
                           dtype_name, nbytes ? fmt::format("{}", *nbytes) : "more than 2^63"));
  }
  e.view.nbytes = *nbytes;
  return e;
}

}  // namespace

absl::StatusOr<std::vector<TensorView>> ParseSafetensors(const std::string& source,
                                                         std::span<const std::byte> bytes) {
  if (bytes.size() < 8) {
    return absl::InvalidArgumentError(fmt::format(
        "{}: offset 0: truncated header: expected 8-byte header length, file is {} bytes",
        source, bytes.size()));
  }
  uint64_t header_len;
  std::memcpy(&header_len, bytes.data(), 8);  // little-endian, as is every host we run on
  if (header_len > kMaxSafetensorsHeaderBytes || header_len > bytes.size() - 8) {
    return absl::InvalidArgumentError(fmt::format(
        "{}: offset 0: header length {} past end of file ({} bytes) or over the {} byte limit",
        source, header_len, bytes.size(), kMaxSafetensorsHeaderBytes));
  }
  const char* header = reinterpret_cast<const char*>(bytes.data() + 8);
  Json j = Json::parse(header, header + header_len, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    // Re-parse with exceptions only to learn where it broke; the message is worth it.
    std::string where;
    try {
      Json unused = Json::parse(header, header + header_len);
      (void)unused;
    } catch (const Json::parse_error& e) {
      where = fmt::format(" (offset {}: {})", 8 + e.byte, e.what());
    } catch (const std::exception& e) {
      where = fmt::format(" ({})", e.what());
    }
    return absl::InvalidArgumentError(
        fmt::format("{}: header is not valid JSON{}", source, where));
  }
  if (!j.is_object()) {
    return absl::InvalidArgumentError(fmt::format("{}: header is not a JSON object", source));
  }

  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = bytes.size() - data_start;
  std::vector<Entry> entries;
  entries.reserve(j.size());
  for (const auto& [name, value] : j.items()) {
    if (name == "__metadata__") continue;
    absl::StatusOr<Entry> e = ParseEntry(source, name, value, data_size);
    if (!e.ok()) return e.status();
    e->view.data = bytes.data() + data_start + e->begin;
    entries.push_back(std::move(*e));
  }

  // No two tensors may share bytes (empty tensors take none).
  std::vector<const Entry*> order;
  for (const Entry& e : entries) {
    if (e.end > e.begin) order.push_back(&e);
  }
  std::sort(order.begin(), order.end(),
            [](const Entry* a, const Entry* b) { return a->begin < b->begin; });
  for (size_t k = 1; k < order.size(); ++k) {
    if (order[k - 1]->end > order[k]->begin) {
      return absl::InvalidArgumentError(fmt::format(
          "{}: tensors '{}' [{}, {}) and '{}' [{}, {}) overlap", source, order[k - 1]->view.name,
          order[k - 1]->begin, order[k - 1]->end, order[k]->view.name, order[k]->begin,
          order[k]->end));
    }
  }

  std::vector<TensorView> out;
  out.reserve(entries.size());
  for (Entry& e : entries) out.push_back(std::move(e.view));
  return out;
}

}  // namespace shoal::worker
