#include "worker/model/weight_store.h"

#include <fmt/format.h>

namespace shoal::worker {

absl::StatusOr<const TensorView*> WeightStore::Get(std::string_view name) const {
  const TensorView* t = Find(name);
  if (t == nullptr) {
    return absl::NotFoundError(fmt::format("{}: tensor '{}' is missing", Source(), name));
  }
  return t;
}

}  // namespace shoal::worker
