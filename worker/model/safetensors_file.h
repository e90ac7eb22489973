#pragma once
// The safetensors container, parsed from bytes already in memory:
//
//   u64 little-endian N | N bytes of JSON header | data
//
// The header maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]}
// with offsets relative to the start of the data; "__metadata__" (free-form strings) is
// ignored. Tensors come back as views into `bytes` (zero-copy).
#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/model/tensor_view.h"

namespace shoal::worker {

// Headers larger than this are corruption, not checkpoints (real ones are < 10 MB).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100u << 20;

// Checks every entry: known dtype (F32, F16, BF16, F8_E4M3, I32, I64), non-negative shape,
// offsets inside the data with end - begin == numel * element size, no two tensors
// sharing bytes. Errors name `source` and the tensor. The result is sorted by name.
absl::StatusOr<std::vector<TensorView>> ParseSafetensors(const std::string& source,
                                                         std::span<const std::byte> bytes);

}  // namespace shoal::worker
