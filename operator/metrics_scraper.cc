#include "operator/metrics_scraper.h"

#include <curl/curl.h>

#include <cstdlib>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "operator/kube/kube_client.h"

namespace shoal::op {

std::optional<double> SumMetric(const std::string& text, const std::string& name) {
  std::optional<double> sum;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    if (line.compare(0, name.size(), name) != 0) continue;
    size_t pos = name.size();
    if (pos < line.size() && line[pos] != '{' && line[pos] != ' ') continue;  // a longer name
    if (pos < line.size() && line[pos] == '{') {
      // Skip the label set; label values may hold '}' inside quotes.
      bool quoted = false;
      for (; pos < line.size(); ++pos) {
        if (line[pos] == '"' && line[pos - 1] != '\\') quoted = !quoted;
        if (!quoted && line[pos] == '}') break;
      }
      ++pos;
    }
    const char* start = line.c_str() + pos;
    char* end = nullptr;
    double v = std::strtod(start, &end);
    if (end == start) continue;
    sum = sum.value_or(0) + v;
  }
  return sum;
}

namespace {
size_t Append(char* data, size_t size, size_t count, void* user) {
  static_cast<std::string*>(user)->append(data, size * count);
  return size * count;
}
}  // namespace

absl::StatusOr<std::string> HttpGet(const std::string& url, int timeout_ms) {
  CURL* curl = curl_easy_init();
  if (curl == nullptr) return absl::InternalError("curl_easy_init failed");
  std::string body;
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, static_cast<long>(timeout_ms));
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, Append);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &body);
  CURLcode rc = curl_easy_perform(curl);
  long http = 0;
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &http);
  curl_easy_cleanup(curl);
  if (rc != CURLE_OK) return absl::UnavailableError(fmt::format("GET {}: {}", url, curl_easy_strerror(rc)));
  if (http != 200) return absl::UnavailableError(fmt::format("GET {}: HTTP {}", url, http));
  return body;
}

absl::StatusOr<double> QueryPrometheus(const std::string& base_url, const std::string& query) {
  auto body = HttpGet(fmt::format("{}/api/v1/query?query={}", base_url, kube::UrlEncode(query)), 5000);
  if (!body.ok()) return body.status();
  try {
    auto j = nlohmann::json::parse(*body);
    if (j.value("status", "") != "success") {
      return absl::UnavailableError(fmt::format("Prometheus query \"{}\": {}", query, j.value("error", "failed")));
    }
    const auto& result = j["data"]["result"];
    if (!result.is_array() || result.empty()) return 0.0;  // no series: no traffic
    double sum = 0;
    for (const auto& r : result) sum += std::stod(r["value"][1].get<std::string>());
    return sum;
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(fmt::format("Prometheus query \"{}\": bad answer: {}", query, e.what()));
  }
}

std::optional<double> CounterRate::Observe(const std::string& endpoint, double value, double now_s) {
  auto it = last_.find(endpoint);
  std::optional<double> rate;
  if (it != last_.end() && now_s > it->second.time) {
    const double delta = value >= it->second.value ? value - it->second.value : value;
    rate = delta / (now_s - it->second.time);
  }
  last_[endpoint] = {value, now_s};
  return rate;
}

void CounterRate::Retain(const std::vector<std::string>& endpoints) {
  std::set<std::string> keep(endpoints.begin(), endpoints.end());
  for (auto it = last_.begin(); it != last_.end();) {
    it = keep.count(it->first) ? std::next(it) : last_.erase(it);
  }
}

}  // namespace shoal::op
