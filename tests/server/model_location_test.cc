// Model paths and served names: the default model's location and its missing-file advice.
#include "worker/server/model_location.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>

namespace shoal::worker {
namespace {

using ::testing::HasSubstr;

TEST(ServedName, DropsExtensionAndQuantizationTagAndLowerCases) {
  EXPECT_EQ(ServedNameFromPath("/m/SmolLM2-135M-Instruct.Q4_1.gguf"), "smollm2-135m-instruct");
  EXPECT_EQ(ServedNameFromPath("Llama-3.2-1B-Instruct-Q8_0.gguf"), "llama-3.2-1b-instruct");
  EXPECT_EQ(ServedNameFromPath("qwen2-0.5b.BF16.gguf"), "qwen2-0.5b");
  EXPECT_EQ(ServedNameFromPath("tiny.gguf"), "tiny");
  // A dotted version is not a quantization tag.
  EXPECT_EQ(ServedNameFromPath("model-v1.5.gguf"), "model-v1.5");
}

TEST(ServedName, UsesTheDirectoryNameForHuggingFaceDirectories) {
  const auto dir = std::filesystem::temp_directory_path() / "Served-Name-Dir";
  std::filesystem::create_directories(dir);
  EXPECT_EQ(ServedNameFromPath(dir.string()), "served-name-dir");
  EXPECT_EQ(ServedNameFromPath(dir.string() + "/"), "served-name-dir");
  std::filesystem::remove_all(dir);
}

TEST(ResolveModelPath, MissingDefaultModelSaysToRunSetup) {
  const auto dir = std::filesystem::temp_directory_path() / "shoal-empty-models";
  std::filesystem::create_directories(dir);
  const char* old = getenv(kModelsDirEnv);
  const std::string saved = old ? old : "";
  setenv(kModelsDirEnv, dir.c_str(), 1);
  auto path = ResolveModelPath("");
  if (old) setenv(kModelsDirEnv, saved.c_str(), 1); else unsetenv(kModelsDirEnv);
  ASSERT_FALSE(path.ok());
  EXPECT_EQ(path.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(path.status().message()), HasSubstr("scripts/setup.sh"));
  EXPECT_THAT(std::string(path.status().message()), HasSubstr(dir.string() + "/SmolLM2-135M-Instruct.Q4_1.gguf"));
}

TEST(ResolveModelPath, NamesAMissingExplicitPathAndAcceptsAnExistingOne) {
  auto missing = ResolveModelPath("/no/such/model.gguf");
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("/no/such/model.gguf"));

  const auto file = std::filesystem::temp_directory_path() / "shoal-present.gguf";
  std::ofstream(file) << "x";
  auto present = ResolveModelPath(file.string());
  ASSERT_TRUE(present.ok());
  EXPECT_EQ(*present, file.string());
  std::filesystem::remove(file);
}

}  // namespace
}  // namespace shoal::worker
