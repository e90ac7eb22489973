#pragma once
// Opening a CUDA library at run time (cuBLAS, cuBLASLt): gemm.h says why they are not
// linked. Host code only.
#include <dlfcn.h>

#include <initializer_list>
#include <string>
#include <type_traits>

namespace shoal::worker::cuda {

// The first of `names` that dlopen loads, else nullptr with *error = "no <what>: " and
// each name's dlerror.
inline void* OpenLibrary(std::initializer_list<const char*> names, const char* what, std::string* error) {
  std::string tried;
  for (const char* name : names) {
    if (void* h = dlopen(name, RTLD_NOW | RTLD_LOCAL)) return h;
    const char* e = dlerror();
    tried += std::string(tried.empty() ? "" : "; ") + (e != nullptr ? e : name);
  }
  *error = std::string("no ") + what + ": " + tried;
  return nullptr;
}

// *fn = the library's `symbol`; when it is missing and *error is still empty, *error says
// so ("no <what>: <library> lacks <symbol>").
template <typename Fn>
void ResolveSymbol(void* library, const char* symbol, const char* what, Fn* fn, std::string* error) {
  *fn = reinterpret_cast<Fn>(dlsym(library, symbol));
  if (*fn == nullptr && error->empty()) *error = std::string("no ") + what + ": the library lacks " + symbol;
}

}  // namespace shoal::worker::cuda
