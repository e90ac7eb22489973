#include "router/api_keys.h"

#include <fmt/format.h>

#include <cctype>
#include <fstream>
#include <sstream>

namespace shoal::router {
namespace {

std::string_view Trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

// Compares without an early exit, so response time does not leak how much of a key matched.
bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

}  // namespace

absl::StatusOr<ApiKeys> ApiKeys::Parse(std::string_view text, std::string_view source) {
  ApiKeys keys;
  int line_number = 0;
  size_t begin = 0;
  while (begin <= text.size()) {
    size_t end = text.find('\n', begin);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = Trim(text.substr(begin, end - begin));
    ++line_number;
    begin = end + 1;
    if (line.empty() || line.front() == '#') continue;
    for (char c : line) {
      if (std::isspace(static_cast<unsigned char>(c)) || !std::isprint(static_cast<unsigned char>(c))) {
        return absl::InvalidArgumentError(
            fmt::format("{}:{}: an API key must be printable ASCII without spaces", source, line_number));
      }
    }
    keys.keys_.emplace_back(line);
  }
  if (keys.keys_.empty()) {
    return absl::InvalidArgumentError(fmt::format("{}: no API keys in the file", source));
  }
  return keys;
}

absl::StatusOr<ApiKeys> ApiKeys::ReadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(fmt::format("cannot open API key file {}", path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return Parse(buffer.str(), path);
}

absl::Status ApiKeys::Check(std::string_view authorization) const {
  if (keys_.empty()) return absl::OkStatus();
  if (authorization.empty()) {
    return absl::UnauthenticatedError("missing API key: send the header 'authorization: Bearer <key>'");
  }
  constexpr std::string_view kBearer = "Bearer ";
  if (authorization.size() <= kBearer.size() ||
      !std::equal(kBearer.begin(), kBearer.end(), authorization.begin(),
                  [](char a, char b) { return std::tolower(a) == std::tolower(b); })) {
    return absl::UnauthenticatedError("malformed authorization header: expected 'Bearer <key>'");
  }
  const std::string_view key = Trim(authorization.substr(kBearer.size()));
  bool match = false;
  for (const auto& candidate : keys_) match |= ConstantTimeEquals(candidate, key);
  if (!match) return absl::UnauthenticatedError("invalid API key");
  return absl::OkStatus();
}

}  // namespace shoal::router
