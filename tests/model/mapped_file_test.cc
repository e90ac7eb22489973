#include "worker/model/mapped_file.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>

#include "tests/model/model_files.h"

namespace shoal::worker {
namespace {

using ::testing::HasSubstr;

TEST(MappedFile, MapsContentsAndSurvivesMoves) {
  testing::ScratchDir dir;
  std::string path = dir.Write("f.bin", "hello world");
  absl::StatusOr<MappedFile> f = MappedFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->size(), 11u);
  EXPECT_EQ(f->path(), path);
  const std::byte* data = f->bytes().data();
  EXPECT_EQ(std::memcmp(data, "hello world", 11), 0);
  MappedFile moved = std::move(*f);
  EXPECT_EQ(moved.bytes().data(), data);  // same mapping: views stay valid
  EXPECT_EQ(f->size(), 0u);
  MappedFile assigned;
  assigned = std::move(moved);
  EXPECT_EQ(assigned.bytes().data(), data);
  EXPECT_EQ(std::memcmp(assigned.bytes().data() + 6, "world", 5), 0);
}

TEST(MappedFile, EmptyFileIsAnEmptySpan) {
  testing::ScratchDir dir;
  absl::StatusOr<MappedFile> f = MappedFile::Open(dir.Write("empty", ""));
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_TRUE(f->bytes().empty());
}

TEST(MappedFile, ErrorsNameFileAndErrno) {
  testing::ScratchDir dir;
  std::string missing = (dir.path() / "missing.gguf").string();
  absl::StatusOr<MappedFile> f = MappedFile::Open(missing);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(f.status().message(), HasSubstr(missing + ": cannot open: No such file or directory"));
  f = MappedFile::Open(dir.path().string());
  ASSERT_FALSE(f.ok());
  EXPECT_THAT(f.status().message(), HasSubstr("not a regular file"));
}

}  // namespace
}  // namespace shoal::worker
