#include "worker/parallel/nccl_library.h"

#include <dlfcn.h>

#include <type_traits>

namespace shoal::worker {
namespace {

struct Loaded {
  NcclLibrary api;
  std::string error;  // empty when loaded
};

const Loaded& Library() {
  static const Loaded* loaded = [] {
    auto* l = new Loaded();  // never freed: NCCL stays loaded for the process
    void* h = nullptr;
    std::string tried;
    for (const char* name : {"libnccl.so.2", "libnccl.so"}) {
      h = dlopen(name, RTLD_NOW | RTLD_LOCAL);
      if (h != nullptr) break;
      const char* e = dlerror();
      tried += std::string(tried.empty() ? "" : "; ") + (e != nullptr ? e : name);
    }
    if (h == nullptr) {
      l->error = "no NCCL: " + tried;
      return l;
    }
    auto resolve = [&](auto* fn, const char* symbol) {
      *fn = reinterpret_cast<std::remove_pointer_t<decltype(fn)>>(dlsym(h, symbol));
      if (*fn == nullptr && l->error.empty()) l->error = std::string("no NCCL: libnccl lacks ") + symbol;
    };
    NcclLibrary& a = l->api;
    resolve(&a.get_unique_id, "ncclGetUniqueId");
    resolve(&a.comm_init_rank_config, "ncclCommInitRankConfig");
    resolve(&a.comm_get_async_error, "ncclCommGetAsyncError");
    resolve(&a.comm_abort, "ncclCommAbort");
    resolve(&a.comm_destroy, "ncclCommDestroy");
    resolve(&a.get_error_string, "ncclGetErrorString");
    resolve(&a.all_reduce, "ncclAllReduce");
    resolve(&a.all_gather, "ncclAllGather");
    resolve(&a.broadcast, "ncclBroadcast");
    resolve(&a.send, "ncclSend");
    resolve(&a.recv, "ncclRecv");
    return l;
  }();
  return *loaded;
}

}  // namespace

const NcclLibrary* LoadNccl(std::string* why_not) {
  const Loaded& l = Library();
  if (l.error.empty()) return &l.api;
  *why_not = l.error;
  return nullptr;
}

}  // namespace shoal::worker
