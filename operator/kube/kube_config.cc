#include "operator/kube/kube_config.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include "absl/strings/escaping.h"
#include "worker/common/status_macros.h"

namespace shoal::kube {
namespace {

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(fmt::format("cannot read {}", path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

std::string Resolve(const std::filesystem::path& base_dir, const std::string& file) {
  std::filesystem::path p(file);
  return p.is_absolute() ? file : (base_dir / p).string();
}

// A kubeconfig field comes either inline as base64 (`<name>-data`) or as a file path.
absl::StatusOr<std::string> InlineOrFile(const YAML::Node& node, const std::string& name,
                                         const std::filesystem::path& base_dir, const std::string& where) {
  if (node[name + "-data"]) {
    std::string decoded;
    if (!absl::Base64Unescape(node[name + "-data"].as<std::string>(), &decoded)) {
      return absl::InvalidArgumentError(fmt::format("{}: {}-data is not valid base64", where, name));
    }
    return decoded;
  }
  if (node[name]) return ReadFile(Resolve(base_dir, node[name].as<std::string>()));
  return std::string();
}

const YAML::Node FindNamed(const YAML::Node& list, const std::string& name) {
  if (list && list.IsSequence()) {
    for (const auto& item : list) {
      if (item["name"] && item["name"].as<std::string>() == name) return item;
    }
  }
  return YAML::Node();
}

absl::StatusOr<KubeConfig> ParseKubeconfig(const std::string& path, const std::string& context_name) {
  YAML::Node root = YAML::LoadFile(path);
  std::string ctx_name = context_name;
  if (ctx_name.empty()) {
    if (!root["current-context"]) {
      return absl::InvalidArgumentError(fmt::format("{}: no current-context and no --context given", path));
    }
    ctx_name = root["current-context"].as<std::string>();
  }
  YAML::Node ctx = FindNamed(root["contexts"], ctx_name);
  if (!ctx.IsMap() || !ctx["context"]) {
    return absl::NotFoundError(fmt::format("{}: context \"{}\" not found", path, ctx_name));
  }
  const YAML::Node& c = ctx["context"];
  if (!c["cluster"]) return absl::InvalidArgumentError(fmt::format("{}: context \"{}\" has no cluster", path, ctx_name));
  std::string cluster_name = c["cluster"].as<std::string>();
  YAML::Node cluster = FindNamed(root["clusters"], cluster_name);
  if (!cluster.IsMap() || !cluster["cluster"] || !cluster["cluster"]["server"]) {
    return absl::NotFoundError(fmt::format("{}: cluster \"{}\" not found or has no server", path, cluster_name));
  }
  const std::filesystem::path base_dir = std::filesystem::path(path).parent_path();
  KubeConfig config;
  const YAML::Node& cl = cluster["cluster"];
  config.server = cl["server"].as<std::string>();
  while (!config.server.empty() && config.server.back() == '/') config.server.pop_back();
  if (cl["insecure-skip-tls-verify"]) config.insecure_skip_tls_verify = cl["insecure-skip-tls-verify"].as<bool>();
  ASSIGN_OR_RETURN(config.ca_pem, InlineOrFile(cl, "certificate-authority", base_dir,
                                               fmt::format("{}: cluster \"{}\"", path, cluster_name)));
  if (c["namespace"]) config.default_namespace = c["namespace"].as<std::string>();
  if (c["user"]) {
    std::string user_name = c["user"].as<std::string>();
    YAML::Node user = FindNamed(root["users"], user_name);
    if (!user.IsMap()) return absl::NotFoundError(fmt::format("{}: user \"{}\" not found", path, user_name));
    const YAML::Node& u = user["user"];
    if (u) {
      const std::string where = fmt::format("{}: user \"{}\"", path, user_name);
      if (u["token"]) config.bearer_token = u["token"].as<std::string>();
      if (u["tokenFile"]) config.token_file = Resolve(base_dir, u["tokenFile"].as<std::string>());
      ASSIGN_OR_RETURN(config.client_cert_pem, InlineOrFile(u, "client-certificate", base_dir, where));
      ASSIGN_OR_RETURN(config.client_key_pem, InlineOrFile(u, "client-key", base_dir, where));
      if (u["exec"] || u["auth-provider"]) {
        return absl::UnimplementedError(fmt::format("{}: exec and auth-provider credentials are not supported", where));
      }
    }
  }
  return config;
}

}  // namespace

absl::StatusOr<KubeConfig> LoadKubeconfig(const std::string& path, const std::string& context) {
  try {
    return ParseKubeconfig(path, context);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(fmt::format("{}: {}", path, e.what()));
  }
}

absl::StatusOr<KubeConfig> InClusterConfig(const std::string& sa_dir) {
  const char* host = std::getenv("KUBERNETES_SERVICE_HOST");
  const char* port = std::getenv("KUBERNETES_SERVICE_PORT");
  if (host == nullptr || port == nullptr) {
    return absl::FailedPreconditionError("not in a cluster: KUBERNETES_SERVICE_HOST/PORT unset");
  }
  KubeConfig config;
  std::string h = host;
  if (h.find(':') != std::string::npos) h = "[" + h + "]";  // IPv6
  config.server = fmt::format("https://{}:{}", h, port);
  config.token_file = sa_dir + "/token";
  ASSIGN_OR_RETURN(config.ca_pem, ReadFile(sa_dir + "/ca.crt"));
  auto ns = ReadFile(sa_dir + "/namespace");
  if (ns.ok() && !ns->empty()) config.default_namespace = *ns;
  return config;
}

absl::StatusOr<KubeConfig> ResolveKubeConfig(const std::string& kubeconfig_flag, const std::string& context) {
  if (!kubeconfig_flag.empty()) return LoadKubeconfig(kubeconfig_flag, context);
  if (const char* env = std::getenv("KUBECONFIG"); env != nullptr && *env != '\0') {
    std::string first = env;
    first = first.substr(0, first.find(':'));  // a list: the first file wins
    return LoadKubeconfig(first, context);
  }
  if (std::getenv("KUBERNETES_SERVICE_HOST") != nullptr) return InClusterConfig();
  const char* home = std::getenv("HOME");
  return LoadKubeconfig(fmt::format("{}/.kube/config", home ? home : ""), context);
}

}  // namespace shoal::kube
