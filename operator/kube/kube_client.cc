#include "operator/kube/kube_client.h"

#include <curl/curl.h>

#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "absl/strings/cord.h"

namespace shoal::kube {
namespace {

constexpr char kHttpCodePayload[] = "shoal.dev/http-code";

absl::StatusCode CodeForHttp(int http) {
  switch (http) {
    case 400: case 422: return absl::StatusCode::kInvalidArgument;
    case 401: return absl::StatusCode::kUnauthenticated;
    case 403: return absl::StatusCode::kPermissionDenied;
    case 404: return absl::StatusCode::kNotFound;
    case 409: return absl::StatusCode::kAlreadyExists;
    case 410: return absl::StatusCode::kOutOfRange;  // resourceVersion too old
    case 429: return absl::StatusCode::kResourceExhausted;
    case 504: return absl::StatusCode::kDeadlineExceeded;
    default: return http >= 500 ? absl::StatusCode::kUnavailable : absl::StatusCode::kUnknown;
  }
}

absl::Status WithHttpCode(absl::StatusCode code, std::string message, int http) {
  absl::Status status(code, message);
  status.SetPayload(kHttpCodePayload, absl::Cord(std::to_string(http)));
  return status;
}

size_t AppendBody(char* data, size_t size, size_t count, void* user) {
  static_cast<std::string*>(user)->append(data, size * count);
  return size * count;
}

struct CurlGlobal {
  CurlGlobal() { curl_global_init(CURL_GLOBAL_DEFAULT); }
};

}  // namespace

int HttpCodeOf(const absl::Status& status) {
  auto payload = status.GetPayload(kHttpCodePayload);
  if (!payload) return 0;
  return std::atoi(std::string(*payload).c_str());
}

absl::Status StatusFromResponse(int http_code, const std::string& what, const std::string& body) {
  std::string message;
  try {
    auto j = nlohmann::json::parse(body);
    if (j.is_object() && j.value("kind", "") == "Status") {
      message = fmt::format("{} ({})", j.value("message", ""), j.value("reason", ""));
      if (j.contains("code") && j["code"].is_number()) http_code = j["code"].get<int>();
    }
  } catch (const nlohmann::json::exception&) {
  }
  if (message.empty()) message = body.substr(0, 300);
  return WithHttpCode(CodeForHttp(http_code), fmt::format("{}: HTTP {}: {}", what, http_code, message), http_code);
}

std::string UrlEncode(const std::string& value) {
  std::string out;
  for (unsigned char c : value) {
    if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += fmt::format("%{:02X}", c);
    }
  }
  return out;
}

absl::StatusOr<std::unique_ptr<KubeClient>> KubeClient::Create(KubeConfig config) {
  static CurlGlobal global;
  if (config.server.rfind("http", 0) != 0) {
    return absl::InvalidArgumentError(fmt::format("API server address \"{}\" is not an http(s) URL", config.server));
  }
  return std::unique_ptr<KubeClient>(new KubeClient(std::move(config)));
}

KubeClient::~KubeClient() {
  for (void* h : idle_handles_) curl_easy_cleanup(static_cast<CURL*>(h));
}

void* KubeClient::BorrowHandle() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!idle_handles_.empty()) {
      void* h = idle_handles_.back();
      idle_handles_.pop_back();
      return h;
    }
  }
  return curl_easy_init();
}

void KubeClient::ReturnHandle(void* handle) {
  std::lock_guard<std::mutex> lock(mu_);
  if (idle_handles_.size() < 8) {
    idle_handles_.push_back(handle);
  } else {
    curl_easy_cleanup(static_cast<CURL*>(handle));
  }
}

std::string KubeClient::Token() {
  if (!config_.token_file.empty()) {
    std::ifstream in(config_.token_file);
    std::stringstream buffer;
    buffer << in.rdbuf();
    std::string token = buffer.str();
    while (!token.empty() && (token.back() == '\n' || token.back() == '\r')) token.pop_back();
    if (!token.empty()) return token;
  }
  return config_.bearer_token;
}

void KubeClient::ConfigureHandle(void* handle, curl_slist** headers, const std::string& content_type) {
  CURL* curl = static_cast<CURL*>(handle);
  curl_easy_reset(curl);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
  curl_easy_setopt(curl, CURLOPT_TCP_KEEPALIVE, 1L);
  if (!config_.ca_pem.empty()) {
    curl_blob blob{const_cast<char*>(config_.ca_pem.data()), config_.ca_pem.size(), CURL_BLOB_COPY};
    curl_easy_setopt(curl, CURLOPT_CAINFO_BLOB, &blob);
  }
  if (config_.insecure_skip_tls_verify) {
    curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, 0L);
  }
  if (!config_.client_cert_pem.empty()) {
    curl_blob cert{const_cast<char*>(config_.client_cert_pem.data()), config_.client_cert_pem.size(), CURL_BLOB_COPY};
    curl_blob key{const_cast<char*>(config_.client_key_pem.data()), config_.client_key_pem.size(), CURL_BLOB_COPY};
    curl_easy_setopt(curl, CURLOPT_SSLCERTTYPE, "PEM");
    curl_easy_setopt(curl, CURLOPT_SSLCERT_BLOB, &cert);
    curl_easy_setopt(curl, CURLOPT_SSLKEYTYPE, "PEM");
    curl_easy_setopt(curl, CURLOPT_SSLKEY_BLOB, &key);
  }
  *headers = curl_slist_append(*headers, "Accept: application/json");
  *headers = curl_slist_append(*headers, "User-Agent: shoal-operator");
  if (!content_type.empty()) *headers = curl_slist_append(*headers, ("Content-Type: " + content_type).c_str());
  std::string token = Token();
  if (!token.empty()) *headers = curl_slist_append(*headers, ("Authorization: Bearer " + token).c_str());
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, *headers);
}

absl::StatusOr<nlohmann::json> KubeClient::Call(const std::string& method, const std::string& path,
                                                const std::string* body, const std::string& content_type) {
  const std::string what = fmt::format("{} {}", method, path);
  CURL* curl = static_cast<CURL*>(BorrowHandle());
  if (curl == nullptr) return absl::InternalError("curl_easy_init failed");
  curl_slist* headers = nullptr;
  ConfigureHandle(curl, &headers, body ? content_type : "");
  const std::string url = config_.server + path;
  std::string response;
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method.c_str());
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 30000L);
  if (body != nullptr) {
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body->data());
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, static_cast<long>(body->size()));
  }
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, AppendBody);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &response);
  request_count_++;
  CURLcode rc = curl_easy_perform(curl);
  long http = 0;
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &http);
  curl_slist_free_all(headers);
  ReturnHandle(curl);
  if (rc != CURLE_OK) {
    return absl::UnavailableError(fmt::format("{}: {}", what, curl_easy_strerror(rc)));
  }
  if (http < 200 || http >= 300) return StatusFromResponse(static_cast<int>(http), what, response);
  if (response.empty()) return nlohmann::json::object();
  try {
    return nlohmann::json::parse(response);
  } catch (const nlohmann::json::exception& e) {
    return absl::InternalError(fmt::format("{}: response is not JSON: {}", what, e.what()));
  }
}

absl::StatusOr<nlohmann::json> KubeClient::Get(const std::string& path) { return Call("GET", path, nullptr, ""); }

absl::StatusOr<nlohmann::json> KubeClient::Post(const std::string& path, const nlohmann::json& body) {
  std::string text = body.dump();
  return Call("POST", path, &text, "application/json");
}

absl::StatusOr<nlohmann::json> KubeClient::Put(const std::string& path, const nlohmann::json& body) {
  std::string text = body.dump();
  return Call("PUT", path, &text, "application/json");
}

absl::StatusOr<nlohmann::json> KubeClient::Patch(const std::string& path, const nlohmann::json& body,
                                                 const std::string& content_type) {
  std::string text = body.dump();
  return Call("PATCH", path, &text, content_type);
}

absl::StatusOr<nlohmann::json> KubeClient::Apply(const std::string& path, const nlohmann::json& object,
                                                 const std::string& field_manager) {
  std::string text = object.dump();
  const char sep = path.find('?') == std::string::npos ? '?' : '&';
  return Call("PATCH", fmt::format("{}{}fieldManager={}&force=true", path, sep, UrlEncode(field_manager)), &text,
              "application/apply-patch+yaml");
}

absl::Status KubeClient::Delete(const std::string& path, const std::string& propagation) {
  std::string text = nlohmann::json{{"kind", "DeleteOptions"}, {"apiVersion", "v1"},
                                    {"propagationPolicy", propagation}}.dump();
  auto result = Call("DELETE", path, &text, "application/json");
  if (!result.ok() && !IsHttpNotFound(result.status())) return result.status();
  return absl::OkStatus();
}

namespace {

struct WatchState {
  std::string buffer;
  const std::function<bool(const nlohmann::json&)>* on_event;
  const std::atomic<bool>* stop;
  bool ended_by_handler = false;
  absl::Status parse_error;
  long http_code = 0;
  std::string error_body;
  CURL* curl;
};

size_t WatchWrite(char* data, size_t size, size_t count, void* user) {
  auto* state = static_cast<WatchState*>(user);
  const size_t n = size * count;
  if (state->http_code == 0) curl_easy_getinfo(state->curl, CURLINFO_RESPONSE_CODE, &state->http_code);
  if (state->http_code != 200) {
    state->error_body.append(data, n);
    return n;
  }
  state->buffer.append(data, n);
  size_t start = 0;
  for (size_t nl; (nl = state->buffer.find('\n', start)) != std::string::npos; start = nl + 1) {
    if (nl == start) continue;
    nlohmann::json event;
    try {
      event = nlohmann::json::parse(state->buffer.begin() + start, state->buffer.begin() + nl);
    } catch (const nlohmann::json::exception& e) {
      state->parse_error = absl::InternalError(fmt::format("watch event is not JSON: {}", e.what()));
      return 0;
    }
    if (!(*state->on_event)(event)) {
      state->ended_by_handler = true;
      return 0;
    }
  }
  state->buffer.erase(0, start);
  return n;
}

int WatchProgress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  auto* state = static_cast<WatchState*>(user);
  return state->stop != nullptr && state->stop->load() ? 1 : 0;
}

}  // namespace

absl::Status KubeClient::Watch(const std::string& path, const std::function<bool(const nlohmann::json&)>& on_event,
                               const std::atomic<bool>* stop) {
  const std::string what = fmt::format("WATCH {}", path);
  CURL* curl = curl_easy_init();  // a watch holds its connection for minutes: its own handle
  if (curl == nullptr) return absl::InternalError("curl_easy_init failed");
  curl_slist* headers = nullptr;
  ConfigureHandle(curl, &headers, "");
  const std::string url = config_.server + path;
  WatchState state;
  state.on_event = &on_event;
  state.stop = stop;
  state.curl = curl;
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, WatchWrite);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &state);
  curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, WatchProgress);
  curl_easy_setopt(curl, CURLOPT_XFERINFODATA, &state);
  // A silent connection (apiserver gone without a FIN) is dropped after 90 s; bookmarks
  // and the server-side timeoutSeconds keep a healthy watch from looking silent.
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, 90L);
  request_count_++;
  CURLcode rc = curl_easy_perform(curl);
  long http = state.http_code;
  if (http == 0) curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &http);
  curl_slist_free_all(headers);
  curl_easy_cleanup(curl);
  if (!state.parse_error.ok()) return state.parse_error;
  if (state.ended_by_handler) return absl::OkStatus();
  if (rc == CURLE_ABORTED_BY_CALLBACK) return absl::OkStatus();  // stop requested
  if (http != 0 && http != 200) return StatusFromResponse(static_cast<int>(http), what, state.error_body);
  if (rc != CURLE_OK) return absl::UnavailableError(fmt::format("{}: {}", what, curl_easy_strerror(rc)));
  return absl::OkStatus();
}

}  // namespace shoal::kube
