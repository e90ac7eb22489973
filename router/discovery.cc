#include "router/discovery.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <charconv>
#include <fstream>
#include <sstream>

namespace shoal::router {

std::string HostPort::ToString() const {
  if (host.find(':') != std::string::npos) return fmt::format("[{}]:{}", host, port);
  return fmt::format("{}:{}", host, port);
}

absl::StatusOr<HostPort> ParseHostPort(std::string_view text) {
  std::string_view host, port_text;
  if (!text.empty() && text.front() == '[') {
    const size_t close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return absl::InvalidArgumentError(fmt::format("'{}' is not [ipv6]:port", text));
    }
    host = text.substr(1, close - 1);
    port_text = text.substr(close + 2);
  } else {
    const size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) {
      return absl::InvalidArgumentError(fmt::format("'{}' has no port (want host:port)", text));
    }
    host = text.substr(0, colon);
    port_text = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) {
      return absl::InvalidArgumentError(fmt::format("'{}': write IPv6 addresses as [address]:port", text));
    }
  }
  if (host.empty()) return absl::InvalidArgumentError(fmt::format("'{}' has an empty host", text));
  int port = 0;
  auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (ec != std::errc() || end != port_text.data() + port_text.size() || port < 1 || port > 65535) {
    return absl::InvalidArgumentError(fmt::format("'{}': port '{}' is not a number in 1..65535", text, port_text));
  }
  return HostPort{std::string(host), port};
}

absl::StatusOr<std::vector<HostPort>> ParseUpstreamList(std::string_view text, std::string_view source) {
  std::vector<HostPort> out;
  int line_number = 0;
  size_t begin = 0;
  while (begin <= text.size()) {
    size_t end = text.find('\n', begin);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(begin, end - begin);
    ++line_number;
    begin = end + 1;
    if (const size_t hash = line.find('#'); hash != std::string_view::npos) line = line.substr(0, hash);
    while (!line.empty() && std::isspace(static_cast<unsigned char>(line.front()))) line.remove_prefix(1);
    while (!line.empty() && std::isspace(static_cast<unsigned char>(line.back()))) line.remove_suffix(1);
    if (line.empty()) continue;
    auto parsed = ParseHostPort(line);
    if (!parsed.ok()) {
      return absl::InvalidArgumentError(fmt::format("{}:{}: {}", source, line_number, std::string(parsed.status().message())));
    }
    if (std::find(out.begin(), out.end(), *parsed) == out.end()) out.push_back(*parsed);
  }
  return out;
}

absl::StatusOr<std::vector<HostPort>> ReadUpstreamFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(fmt::format("cannot open upstream file {}", path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return ParseUpstreamList(buffer.str(), path);
}

absl::StatusOr<std::vector<HostPort>> ResolveDns(const HostPort& name) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* result = nullptr;
  const int rc = getaddrinfo(name.host.c_str(), nullptr, &hints, &result);
  if (rc != 0) {
    return absl::UnavailableError(fmt::format("cannot resolve {}: {}", name.host, gai_strerror(rc)));
  }
  std::vector<HostPort> out;
  for (addrinfo* ai = result; ai != nullptr; ai = ai->ai_next) {
    char text[INET6_ADDRSTRLEN] = {};
    if (ai->ai_family == AF_INET) {
      inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(ai->ai_addr)->sin_addr, text, sizeof(text));
    } else if (ai->ai_family == AF_INET6) {
      inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(ai->ai_addr)->sin6_addr, text, sizeof(text));
    } else {
      continue;
    }
    HostPort endpoint{text, name.port};
    if (std::find(out.begin(), out.end(), endpoint) == out.end()) out.push_back(endpoint);
  }
  freeaddrinfo(result);
  std::sort(out.begin(), out.end(), [](const HostPort& a, const HostPort& b) { return a.host < b.host; });
  if (out.empty()) return absl::UnavailableError(fmt::format("{} resolved to no address", name.host));
  return out;
}

}  // namespace shoal::router
