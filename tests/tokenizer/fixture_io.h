#pragma once
// Reading the committed fixtures of tests/tokenizer/fixtures (made by gen_fixtures.py).
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace shoal::worker::testing {

std::string FixturePath(const std::string& name);
std::string ReadFixture(const std::string& name);
nlohmann::json ReadJsonFixture(const std::string& name);
std::vector<int32_t> Ids(const nlohmann::json& array);
// Where the real models live ($SHOAL_MODELS_DIR, default ~/.cache/shoal/models).
std::string ModelsDir();
// Printable form of a string for failure messages.
std::string Escaped(const std::string& s);

}  // namespace shoal::worker::testing
