#include "tests/tokenizer/fixture_io.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <gtest/gtest.h>

namespace shoal::worker::testing {

std::string FixturePath(const std::string& name) {
  if (const char* src = std::getenv("SHOAL_SOURCE_DIR")) {
    return std::string(src) + "/tests/tokenizer/fixtures/" + name;
  }
  return std::string(SHOAL_TOKENIZER_FIXTURES) + "/" + name;
}

std::string ReadFixture(const std::string& name) {
  std::ifstream in(FixturePath(name), std::ios::binary);
  EXPECT_TRUE(in.good()) << "missing fixture " << FixturePath(name);
  std::ostringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

nlohmann::json ReadJsonFixture(const std::string& name) {
  return nlohmann::json::parse(ReadFixture(name));
}

std::vector<int32_t> Ids(const nlohmann::json& array) {
  std::vector<int32_t> ids;
  for (const auto& v : array) ids.push_back(v.get<int32_t>());
  return ids;
}

std::string ModelsDir() {
  if (const char* dir = std::getenv("SHOAL_MODELS_DIR")) return dir;
  const char* home = std::getenv("HOME");
  return std::string(home ? home : "/root") + "/.cache/shoal/models";
}

std::string Escaped(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c == '\r') out += "\\r";
    else if (c < 0x20) out += fmt::format("\\x{:02x}", c);
    else out.push_back(static_cast<char>(c));
  }
  if (out.size() > 120) out = out.substr(0, 120) + "...";
  return out;
}

}  // namespace shoal::worker::testing
