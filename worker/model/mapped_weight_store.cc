#include "worker/model/mapped_weight_store.h"

#include <fmt/format.h>

namespace shoal::worker {

absl::StatusOr<std::unique_ptr<MappedWeightStore>> MappedWeightStore::Create(
    std::string source, std::vector<TensorView> tensors, std::vector<MappedFile> files) {
  std::unique_ptr<MappedWeightStore> store(
      new MappedWeightStore(std::move(source), std::move(files)));
  for (TensorView& t : tensors) {
    std::string name = t.name;
    if (!store->tensors_.emplace(name, std::move(t)).second) {
      return absl::InvalidArgumentError(
          fmt::format("{}: tensor '{}' appears more than once", store->source_, name));
    }
  }
  return store;
}

const TensorView* MappedWeightStore::Find(std::string_view name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

std::vector<std::string> MappedWeightStore::Names() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, t] : tensors_) names.push_back(name);
  return names;
}

}  // namespace shoal::worker
