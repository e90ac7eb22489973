#pragma once
// Where the groups' leaders are: a static list (`--upstream host:port`, repeatable), a
// file with one host:port per line (re-read on every discovery round, so a mounted
// ConfigMap can change it), and DNS names (`--upstream-dns name:port`, e.g. a headless
// Service) whose every address is one group, re-resolved on every round.
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace shoal::router {

struct HostPort {
  std::string host;  // name, IPv4, or IPv6 without brackets
  int port = 0;
  // "host:port", "[v6]:port"; what gRPC dials and metrics label groups with.
  std::string ToString() const;
  bool operator==(const HostPort&) const = default;
};

// "host:port" or "[ipv6]:port"; the port must be 1..65535.
absl::StatusOr<HostPort> ParseHostPort(std::string_view text);

// The upstream file format: one host:port per line; blank lines and '#' comments are
// ignored; errors name `source` and the line number.
absl::StatusOr<std::vector<HostPort>> ParseUpstreamList(std::string_view text, std::string_view source);
absl::StatusOr<std::vector<HostPort>> ReadUpstreamFile(const std::string& path);

// Every address `name` resolves to (IPv4 and IPv6, deduplicated, sorted), with its port.
absl::StatusOr<std::vector<HostPort>> ResolveDns(const HostPort& name);

struct DiscoverySources {
  std::vector<HostPort> static_upstreams;
  std::vector<std::string> upstream_files;
  std::vector<HostPort> dns_names;
  bool empty() const { return static_upstreams.empty() && upstream_files.empty() && dns_names.empty(); }
};

}  // namespace shoal::router
