#pragma once
// Where the API server is and how to authenticate to it: from a kubeconfig file (the
// current or a named context) or from the pod's service account (in-cluster).
#include <string>

#include "absl/status/statusor.h"

namespace shoal::kube {

struct KubeConfig {
  std::string server;            // https://host:port, no trailing slash
  std::string bearer_token;      // static token (kubeconfig `token`)
  std::string token_file;        // re-read on use: service-account tokens rotate
  std::string ca_pem;            // CA bundle; empty = system roots
  std::string client_cert_pem;   // client certificate authentication
  std::string client_key_pem;
  bool insecure_skip_tls_verify = false;
  std::string default_namespace = "default";
};

// Parses a kubeconfig; `context` empty = the file's current-context. Relative file
// references (certificate-authority, client-certificate, ...) resolve against the file.
absl::StatusOr<KubeConfig> LoadKubeconfig(const std::string& path, const std::string& context = "");

// The pod's service account: KUBERNETES_SERVICE_HOST/PORT, the token and CA under
// /var/run/secrets/kubernetes.io/serviceaccount (or `sa_dir`).
absl::StatusOr<KubeConfig> InClusterConfig(
    const std::string& sa_dir = "/var/run/secrets/kubernetes.io/serviceaccount");

// The usual order: `--kubeconfig` when given, else $KUBECONFIG, else in-cluster when
// KUBERNETES_SERVICE_HOST is set, else ~/.kube/config.
absl::StatusOr<KubeConfig> ResolveKubeConfig(const std::string& kubeconfig_flag, const std::string& context);

}  // namespace shoal::kube
