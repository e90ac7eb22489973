#pragma once
// A whole file mapped read-only into memory. Model weights are served straight out of
// the mapping (zero-copy): the kernel pages them in on first touch and can drop them
// under memory pressure, so opening a 100 GB checkpoint costs nothing up front.
#include <cstddef>
#include <span>
#include <string>

#include "absl/status/statusor.h"

namespace shoal::worker {

class MappedFile {
 public:
  // Maps `path` read-only. Errors name the file and the errno text.
  static absl::StatusOr<MappedFile> Open(const std::string& path);

  MappedFile() = default;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const std::string& path() const { return path_; }
  size_t size() const { return size_; }
  // Empty for an empty file. Moving the MappedFile keeps the address: views stay valid.
  std::span<const std::byte> bytes() const {
    return {static_cast<const std::byte*>(data_), size_};
  }

 private:
  void Reset();

  std::string path_;
  void* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace shoal::worker
