#pragma once
// The WeightStore of both file formats: tensor views by name, plus the mapped files the
// views point into (none when the bytes belong to the caller, as in the fuzzers).
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/model/mapped_file.h"
#include "worker/model/weight_store.h"

namespace shoal::worker {

class MappedWeightStore : public WeightStore {
 public:
  // Fails on a duplicate tensor name (naming both sources when the views' names collide).
  static absl::StatusOr<std::unique_ptr<MappedWeightStore>> Create(
      std::string source, std::vector<TensorView> tensors, std::vector<MappedFile> files);

  const TensorView* Find(std::string_view name) const override;
  std::vector<std::string> Names() const override;
  std::string Source() const override { return source_; }

 private:
  MappedWeightStore(std::string source, std::vector<MappedFile> files)
      : source_(std::move(source)), files_(std::move(files)) {}

  std::string source_;
  std::vector<MappedFile> files_;
  std::map<std::string, TensorView, std::less<>> tensors_;
};

}  // namespace shoal::worker
