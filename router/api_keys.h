#pragma once
// Optional API keys: a file with one key per line ('#' comments and blank lines
// ignored). Clients send `authorization: Bearer <key>` (gRPC metadata or HTTP header).
// With no keys configured every request is allowed.
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace shoal::router {

class ApiKeys {
 public:
  ApiKeys() = default;  // no keys: authentication off
  static absl::StatusOr<ApiKeys> Parse(std::string_view text, std::string_view source);
  static absl::StatusOr<ApiKeys> ReadFile(const std::string& path);

  bool enabled() const { return !keys_.empty(); }
  // OK, or UNAUTHENTICATED saying what is wrong with `authorization` (the header value,
  // "" when absent). Never echoes the key.
  absl::Status Check(std::string_view authorization) const;

 private:
  std::vector<std::string> keys_;
};

}  // namespace shoal::router
