#pragma once
// `expected` ⊆ `actual`: every field of `expected` is in `actual` with an equal value
// (objects recursively; arrays element by element and of equal length). The failure
// message names the first differing JSON path.
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace shoal::op::testing {

inline bool SubsetAt(const nlohmann::json& actual, const nlohmann::json& expected, const std::string& path,
                     std::string* why) {
  if (expected.is_object()) {
    if (!actual.is_object()) {
      *why = path + ": expected an object, got " + actual.dump();
      return false;
    }
    for (auto it = expected.begin(); it != expected.end(); ++it) {
      if (!actual.contains(it.key())) {
        *why = path + "/" + it.key() + ": missing (expected " + it.value().dump() + ")";
        return false;
      }
      if (!SubsetAt(actual[it.key()], it.value(), path + "/" + it.key(), why)) return false;
    }
    return true;
  }
  if (expected.is_array()) {
    if (!actual.is_array() || actual.size() != expected.size()) {
      *why = path + ": expected " + expected.dump() + ", got " + actual.dump();
      return false;
    }
    for (size_t i = 0; i < expected.size(); ++i) {
      if (!SubsetAt(actual[i], expected[i], path + "/" + std::to_string(i), why)) return false;
    }
    return true;
  }
  if (actual != expected) {
    *why = path + ": expected " + expected.dump() + ", got " + actual.dump();
    return false;
  }
  return true;
}

inline ::testing::AssertionResult JsonContains(const nlohmann::json& actual, const nlohmann::json& expected) {
  std::string why;
  if (SubsetAt(actual, expected, "", &why)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << why;
}

}  // namespace shoal::op::testing
