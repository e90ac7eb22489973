// The SIMT emulator's scheduler (simt.h) and the part of the CUDA runtime API the engine
// calls, over host memory: one emulated device whose "device memory" is the process's
// heap, streams that run work when it is issued (or record it while a stream captures a
// graph), and graphs that replay what was recorded. Linked instead of libcudart into the
// `simt` tests.
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "tests/simt/simt.h"

// The runtime's opaque handles, defined here.
struct CUstream_st {
  unsigned flags = 0;                                     // cudaStreamNonBlocking or not
  std::vector<std::function<void()>>* capture = nullptr;  // non-null while capturing
  bool capture_invalidated = false;
  std::mutex mutex;                                       // guards pending; held while it runs
  std::deque<std::function<void()>> pending;              // issued, not yet run
};
struct CUevent_st {
  std::chrono::steady_clock::time_point at;
  cudaStream_t stream = nullptr;  // where it was last recorded
};
struct CUgraph_st {
  std::vector<std::function<void()>> work;
};
struct CUgraphExec_st {
  std::vector<std::function<void()>> work;
};

#if !defined(__x86_64__)
#error "the SIMT emulator switches fibers with x86-64 code"
#endif

// Saves the callee-saved registers on the current stack, stores its pointer in *save_sp,
// and continues on load_sp's stack (which was saved the same way, or set up by
// StartFrame). A plain function call to the compiler, so nothing else needs saving; and no
// signal mask, which ucontext's swapcontext saves and restores with a system call.
extern "C" void shoal_simt_switch(void** save_sp, void* load_sp);
asm(R"(
  .text
  .globl shoal_simt_switch
  .type shoal_simt_switch, @function
shoal_simt_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size shoal_simt_switch, .-shoal_simt_switch
)");

// AddressSanitizer must be told when the stack changes under it (its fake stacks and
// shadow follow the running stack); without ASan these are no-ops.
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define SHOAL_SIMT_ASAN 1
#else
#define SHOAL_SIMT_ASAN 0
#endif

namespace shoal::simt {
namespace {

[[noreturn]] void Fail(const std::string& message) {
  std::fprintf(stderr, "simt: %s\n", message.c_str());
  std::abort();
}

struct Barrier {
  int arrived = 0;
  uint64_t generation = 0;
};

// A cp.async copy the thread issued and has not yet waited for (async_copy.cuh).
struct PendingCopy {
  void* dst;
  const void* src;
  int bytes, src_bytes;
  bool performed;  // already in shared memory (blocks that copy at once)
};

// Performs a copy: src_bytes from src, zeros for the rest.
void Perform(PendingCopy& c) {
  if (c.performed) return;
  std::memcpy(c.dst, c.src, static_cast<size_t>(c.src_bytes));
  std::memset(static_cast<char*>(c.dst) + c.src_bytes, 0, static_cast<size_t>(c.bytes - c.src_bytes));
  c.performed = true;
}

struct Fiber {
  void* sp = nullptr;  // saved stack pointer while switched out
  void* asan_fake_stack = nullptr;
  std::unique_ptr<char[]> stack;
  uint3 thread_idx;
  int warp = 0, lane = 0;
  bool done = false;
  bool waited_for_prior_grid = false;
  // cp.async: copies since the last commit, and the committed groups still in flight
  // (performed when the thread waits for them, oldest first).
  std::vector<PendingCopy> uncommitted;
  std::deque<std::vector<PendingCopy>> in_flight;
  Barrier* waiting_on = nullptr;
  uint64_t waiting_generation = 0;
};

struct Warp {
  int live = 0, size = 0;
  Barrier barrier;
  unsigned char slots[2][32][16];  // double-buffered by barrier generation
};

// The block being run: its fibers, barriers and the kernel body they share.
struct Block {
  explicit Block(std::vector<Fiber>& f) : fibers(f) {}
  std::vector<Fiber>& fibers;
  std::vector<Warp> warps;
  Barrier barrier;
  int live = 0;
  const std::function<void()>* body = nullptr;
  const char* kernel = "";
  bool overlapped = false;  // launched to overlap the previous grid (launch.cuh)
  void* scheduler_sp = nullptr;
  void* scheduler_fake_stack = nullptr;
  const void* scheduler_stack_bottom = nullptr;  // the host thread's stack, for ASan
  size_t scheduler_stack_size = 0;
  Fiber* current = nullptr;
  // cp.async copies land at once (true) or only when their thread waits for them: the two
  // ends of what the hardware may do, so an overwrite of a tile still being read (no
  // barrier before the copies) and a read before the wait both show in some blocks.
  bool eager_copies = false;
  void* dynamic_shared = nullptr;  // the launch's shared_bytes, refilled for each block
  size_t dynamic_shared_bytes = 0;
};

// Per host thread: tensor ranks run as threads, each launching its own kernels.
thread_local std::vector<Fiber> g_fibers;  // reused launch to launch (their stacks are the cost)
thread_local Block* g_block = nullptr;
thread_local uint3 g_block_idx;
thread_local dim3 g_block_dim, g_grid_dim;

Fiber& Current() {
  if (g_block == nullptr || g_block->current == nullptr) Fail("a device function was called outside a kernel");
  return *g_block->current;
}

constexpr size_t kFiberStackBytes = 256 * 1024;

// Fiber side of a switch back to the scheduler (exiting: its fake stack is dropped).
void ToScheduler(Fiber& f, bool exiting) {
#if SHOAL_SIMT_ASAN
  __sanitizer_start_switch_fiber(exiting ? nullptr : &f.asan_fake_stack, g_block->scheduler_stack_bottom,
                                 g_block->scheduler_stack_size);
#else
  (void)exiting;
#endif
  shoal_simt_switch(&f.sp, g_block->scheduler_sp);
#if SHOAL_SIMT_ASAN
  __sanitizer_finish_switch_fiber(f.asan_fake_stack, &g_block->scheduler_stack_bottom, &g_block->scheduler_stack_size);
#endif
}

void Yield() { ToScheduler(Current(), false); }

// Arrive at `b` among `live` threads; the last one releases the others.
void Arrive(Barrier& b, int live) {
  Fiber& f = Current();
  if (++b.arrived >= live) {
    b.arrived = 0;
    ++b.generation;
    return;
  }
  f.waiting_on = &b;
  f.waiting_generation = b.generation;
  Yield();
}

[[noreturn]] void FiberEntry() {
  Block* block = g_block;
#if SHOAL_SIMT_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &block->scheduler_stack_bottom, &block->scheduler_stack_size);
#endif
  (*block->body)();
  Fiber& f = *block->current;
  f.done = true;
  if (block->overlapped && !f.waited_for_prior_grid) {
    Fail(std::string(block->kernel) +
         ": a thread exited without WaitForPriorKernel(), though its launch may overlap the kernel before it");
  }
  // (An empty group left in flight is fine: a pipeline commits one per tile.)
  const bool copies_in_flight =
      !f.uncommitted.empty() ||
      std::any_of(f.in_flight.begin(), f.in_flight.end(), [](const auto& group) { return !group.empty(); });
  if (copies_in_flight) Fail(std::string(block->kernel) + ": a thread exited with cp.async copies it never waited for");
  if (block->warps[f.warp].barrier.arrived > 0) {
    Fail(std::string(block->kernel) + ": a lane returned while others of its warp wait at a shuffle or __syncwarp");
  }
  --block->live;
  --block->warps[f.warp].live;
  // A thread that exits no longer holds up the block's barrier (as on the hardware).
  if (block->barrier.arrived > 0 && block->barrier.arrived >= block->live) {
    block->barrier.arrived = 0;
    ++block->barrier.generation;
  }
  ToScheduler(f, true);
  __builtin_unreachable();  // a finished fiber is never resumed
}

// A new fiber's stack as shoal_simt_switch leaves one: six zeroed registers, then
// FiberEntry as the return address, with the alignment a call would give it.
void* StartFrame(char* stack, size_t size) {
  auto top = reinterpret_cast<uintptr_t>(stack + size) & ~uintptr_t{15};
  auto* slots = reinterpret_cast<void**>(top);
  slots[-1] = nullptr;  // FiberEntry's own (never used) return address
  slots[-2] = reinterpret_cast<void*>(&FiberEntry);
  for (int i = 3; i <= 8; ++i) slots[-i] = nullptr;
  return &slots[-8];
}

bool Runnable(const Fiber& f) {
  return !f.done && (f.waiting_on == nullptr || f.waiting_on->generation != f.waiting_generation);
}

void RunBlock(Block& block) {
  const int n = static_cast<int>(g_block_dim.x * g_block_dim.y * g_block_dim.z);
  block.fibers.resize(n);
  block.warps.assign((n + 31) / 32, Warp{});
  block.live = n;
  block.barrier = Barrier{};
  for (int i = 0; i < n; ++i) {
    Fiber& f = block.fibers[i];
    if (!f.stack) f.stack.reset(new char[kFiberStackBytes]);
    f.thread_idx = uint3{static_cast<unsigned>(i % g_block_dim.x), static_cast<unsigned>(i / g_block_dim.x % g_block_dim.y),
                         static_cast<unsigned>(i / (g_block_dim.x * g_block_dim.y))};
    f.warp = i / 32;
    f.lane = i % 32;
    f.done = false;
    f.waited_for_prior_grid = false;
    f.uncommitted.clear();
    f.in_flight.clear();
    f.waiting_on = nullptr;
    ++block.warps[f.warp].live;
    ++block.warps[f.warp].size;
    f.sp = StartFrame(f.stack.get(), kFiberStackBytes);
  }
  // Odd blocks run their threads last to first: a read of another thread's shared-memory
  // write without a barrier between them then sees the write in one order and not in the
  // other, so blocks that should agree do not (a race the real GPU may or may not show).
  const unsigned parity = g_block_idx.x + g_block_idx.y + g_block_idx.z;
  const bool reverse = (parity & 1u) != 0;
  block.eager_copies = (parity & 2u) != 0;
  while (block.live > 0) {
    bool progressed = false;
    for (int k = 0; k < n; ++k) {
      Fiber& f = block.fibers[reverse ? n - 1 - k : k];
      if (!Runnable(f)) continue;
      f.waiting_on = nullptr;
      block.current = &f;
#if SHOAL_SIMT_ASAN
      __sanitizer_start_switch_fiber(&block.scheduler_fake_stack, f.stack.get(), kFiberStackBytes);
#endif
      shoal_simt_switch(&block.scheduler_sp, f.sp);
#if SHOAL_SIMT_ASAN
      __sanitizer_finish_switch_fiber(block.scheduler_fake_stack, nullptr, nullptr);
#endif
      block.current = nullptr;
      progressed = true;
    }
    if (!progressed) {
      Fail(std::string(block.kernel) + ": every live thread of block (" + std::to_string(g_block_idx.x) + ", " +
           std::to_string(g_block_idx.y) + ", " + std::to_string(g_block_idx.z) +
           ") waits at a barrier another thread never reaches");
    }
  }
}

// The device's state: allocations, the sticky launch error.
std::mutex g_mutex;
std::map<uintptr_t, size_t> g_allocations;  // device allocations, by address
size_t g_allocated = 0;
thread_local cudaError_t g_last_error = cudaSuccess;  // per host thread, as CUDA's

size_t DeviceBytes() {
  const char* env = std::getenv("SHOAL_SIMT_DEVICE_MIB");
  return static_cast<size_t>(env != nullptr ? std::atoll(env) : 4096) << 20;
}

// Work on a created stream waits until something synchronizes with it (a stream, event
// or device synchronization, a query, a free, the legacy stream for a blocking stream), so
// a host read or a host-buffer rewrite that the code did not order after the work sees the
// old data, as it could on the hardware. SHOAL_SIMT_DEFER=0 runs work when it is issued.
bool Deferred() {
  static const bool deferred = [] {
    const char* env = std::getenv("SHOAL_SIMT_DEFER");
    return env == nullptr || std::strcmp(env, "0") != 0;
  }();
  return deferred;
}

std::mutex g_streams_mutex;
std::set<cudaStream_t> g_streams;

void Flush(cudaStream_t stream) {
  std::lock_guard lock(stream->mutex);
  while (!stream->pending.empty()) {
    std::function<void()> work = std::move(stream->pending.front());
    stream->pending.pop_front();
    work();
  }
}

// Every stream whose flags match (all of them for a device-wide synchronization). The set
// stays locked throughout: a stream another thread destroys meanwhile (tensor ranks as
// threads) is then deleted only after this is done with it.
void FlushStreams(bool blocking_only) {
  std::lock_guard lock(g_streams_mutex);
  for (cudaStream_t s : g_streams) {
    if (!blocking_only || (s->flags & cudaStreamNonBlocking) == 0) Flush(s);
  }
}

// Runs `work` on `stream`: recorded while the stream captures, queued on a created stream,
// at once on the legacy stream (after the blocking streams, which it waits for).
void Issue(cudaStream_t stream, std::function<void()> work) {
  if (stream != nullptr && stream->capture != nullptr) {
    stream->capture->push_back(std::move(work));
    return;
  }
  if (stream != nullptr && Deferred()) {
    std::lock_guard lock(stream->mutex);
    stream->pending.push_back(std::move(work));
    return;
  }
  if (stream == nullptr) FlushStreams(/*blocking_only=*/true);
  work();
}

bool Capturing(cudaStream_t stream) { return stream != nullptr && stream->capture != nullptr; }

}  // namespace

const uint3& ThreadIdx() { return Current().thread_idx; }
const uint3& BlockIdx() { return g_block_idx; }
const dim3& BlockDim() { return g_block_dim; }
const dim3& GridDim() { return g_grid_dim; }
int LaneId() { return Current().lane; }

void SyncThreads() { Arrive(g_block->barrier, g_block->live); }

namespace {
Warp& FullWarp(unsigned mask, const char* what) {
  Warp& w = g_block->warps[Current().warp];
  if (mask != 0xffffffffu) Fail(std::string(g_block->kernel) + ": " + what + " with a partial mask");
  if (w.live != w.size) Fail(std::string(g_block->kernel) + ": " + what + " after lanes of the warp exited");
  return w;
}
}  // namespace

void SyncWarp(unsigned mask) {
  Warp& w = FullWarp(mask, "__syncwarp");
  Arrive(w.barrier, w.live);
}

void WarpExchange(unsigned mask, const void* value, size_t size, int src_lane, void* out) {
  Fiber& f = Current();
  Warp& w = FullWarp(mask, "a warp shuffle");
  if (size > sizeof(w.slots[0][0])) Fail("a shuffled value wider than 16 bytes");
  if (src_lane < 0 || src_lane >= w.size) Fail(std::string(g_block->kernel) + ": shuffle from a lane the warp lacks");
  const int parity = static_cast<int>(w.barrier.generation % 2);
  std::memcpy(w.slots[parity][f.lane], value, size);
  Arrive(w.barrier, w.live);
  std::memcpy(out, w.slots[parity][src_lane], size);
}

void WaitForPriorGrid() { Current().waited_for_prior_grid = true; }

void* DynamicShared() {
  Current();  // inside a kernel
  return g_block->dynamic_shared;
}

namespace {
// cudaFuncAttributeMaxDynamicSharedMemorySize per kernel; 48 KB for one never set, and at
// most what a compute capability 8.0 block may opt in to (163 KB).
constexpr size_t kDefaultDynamicShared = 48 * 1024, kMostDynamicShared = 163 * 1024;
std::mutex g_function_mutex;
std::map<const void*, size_t> g_dynamic_shared_limit;

size_t DynamicSharedLimit(const void* function) {
  std::lock_guard lock(g_function_mutex);
  const auto it = g_dynamic_shared_limit.find(function);
  return it == g_dynamic_shared_limit.end() ? kDefaultDynamicShared : it->second;
}

cudaError_t SetDynamicSharedLimit(const void* function, int bytes) {
  if (bytes < 0 || static_cast<size_t>(bytes) > kMostDynamicShared) return cudaErrorInvalidValue;
  std::lock_guard lock(g_function_mutex);
  g_dynamic_shared_limit[function] = static_cast<size_t>(bytes);
  return cudaSuccess;
}
}  // namespace

void CopyAsync(void* dst, const void* src, int bytes, int src_bytes) {
  const auto misaligned = [bytes](const void* p) { return reinterpret_cast<uintptr_t>(p) % bytes != 0; };
  if (misaligned(dst) || (src_bytes > 0 && misaligned(src))) {
    Fail(std::string(g_block->kernel) + ": a cp.async of " + std::to_string(bytes) + " bytes off its alignment");
  }
  PendingCopy c{dst, src, bytes, src_bytes, false};
  if (g_block->eager_copies) Perform(c);
  Current().uncommitted.push_back(c);
}

void CommitAsyncCopies() {
  Fiber& f = Current();
  f.in_flight.push_back(std::move(f.uncommitted));
  f.uncommitted.clear();
}

void WaitAsyncCopies(int outstanding_groups) {
  Fiber& f = Current();
  while (static_cast<int>(f.in_flight.size()) > outstanding_groups) {
    for (PendingCopy& c : f.in_flight.front()) Perform(c);
    f.in_flight.pop_front();
  }
}

void Launch(dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream, std::function<void()> body,
            const char* kernel, const void* function, bool overlapped) {
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || threads == 0 || threads > 1024 || block.z > 64 ||
      grid.y > 65535 || grid.z > 65535 || shared_bytes > DynamicSharedLimit(function)) {
    g_last_error = cudaErrorInvalidConfiguration;
    return;
  }
  if (stream != nullptr && stream->capture_invalidated) return;
  std::string name = kernel;
  Issue(stream, [grid, block, shared_bytes, body = std::move(body), name, overlapped] {
    // __shared__ variables are function statics, so one grid runs at a time in the
    // process (tensor ranks as threads take turns). Not thread_local: static TLS that
    // large would come out of every thread's stack.
    static std::mutex kernel_mutex;
    std::lock_guard lock(kernel_mutex);
    Block b(g_fibers);
    b.body = &body;
    b.kernel = name.c_str();
    b.overlapped = overlapped;
    std::unique_ptr<uint4[]> dynamic_shared(shared_bytes > 0 ? new uint4[(shared_bytes + 15) / 16] : nullptr);
    b.dynamic_shared = dynamic_shared.get();
    b.dynamic_shared_bytes = shared_bytes;
    Block* outer = g_block;
    const uint3 outer_idx = g_block_idx;
    const dim3 outer_dim = g_block_dim, outer_grid = g_grid_dim;
    g_block = &b;
    g_block_dim = block;
    g_grid_dim = grid;
    // Every other grid runs its blocks last to first: on a GPU the blocks of a grid run in
    // no order (and at once), so a block that reads what another block of the same grid
    // writes gets it in one of the two orders and not in the other.
    static uint64_t grids = 0;
    const bool backwards = (grids++ & 1u) != 0;
    const uint64_t blocks = uint64_t{grid.x} * grid.y * grid.z;
    for (uint64_t k = 0; k < blocks; ++k) {
      const uint64_t i = backwards ? blocks - 1 - k : k;
      g_block_idx = uint3{static_cast<unsigned>(i % grid.x), static_cast<unsigned>(i / grid.x % grid.y),
                          static_cast<unsigned>(i / (uint64_t{grid.x} * grid.y))};
      if (b.dynamic_shared != nullptr) std::memset(b.dynamic_shared, 0xff, b.dynamic_shared_bytes);
      RunBlock(b);
    }
    g_block = outer;
    g_block_idx = outer_idx;
    g_block_dim = outer_dim;
    g_grid_dim = outer_grid;
  });
}

namespace {
// Loads the emulated libcublas.so.13 from this library's own directory, so the engine's
// dlopen("libcublas.so.13") finds it already loaded whatever the caller's search path
// (under ASan, dlopen is called from the sanitizer's runtime, not from the test binary
// whose RUNPATH names this directory).
__attribute__((constructor)) void LoadEmulatedCublas() {
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&LoadEmulatedCublas), &info) == 0 || info.dli_fname == nullptr) return;
  std::string path(info.dli_fname);
  path = path.substr(0, path.rfind('/') + 1) + "libcublas.so.13";
  dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL);
}
}  // namespace

// For the emulated cuBLAS: work on a stream, run now or captured.
void IssueOnStream(cudaStream_t stream, std::function<void()> work) { Issue(stream, std::move(work)); }

}  // namespace shoal::simt

using shoal::simt::Capturing;
using shoal::simt::g_allocated;
using shoal::simt::g_allocations;
using shoal::simt::g_last_error;
using shoal::simt::g_mutex;
using shoal::simt::Flush;
using shoal::simt::FlushStreams;
using shoal::simt::Issue;
using shoal::simt::SetDynamicSharedLimit;

extern "C" {

cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : cudaErrorInvalidDevice; }

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device != 0) return cudaErrorInvalidDevice;
  std::memset(prop, 0, sizeof(*prop));
  std::snprintf(prop->name, sizeof(prop->name), "SIMT emulator on the CPU");
  prop->major = 8;
  prop->minor = 0;
  prop->totalGlobalMem = shoal::simt::DeviceBytes();
  prop->multiProcessorCount = 4;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = 1024;
  prop->sharedMemPerBlock = 48 * 1024;
  prop->sharedMemPerBlockOptin = 163 * 1024;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return cudaErrorInvalidDevice;
  switch (attr) {
    case cudaDevAttrComputeCapabilityMajor: *value = 8; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; return cudaSuccess;
    case cudaDevAttrMultiProcessorCount: *value = 4; return cudaSuccess;
    default: *value = 0; return cudaSuccess;
  }
}

cudaError_t cudaDeviceGetPCIBusId(char* pci_bus_id, int len, int device) {
  if (device != 0) return cudaErrorInvalidDevice;
  std::snprintf(pci_bus_id, static_cast<size_t>(len), "0000:00:00.0");
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  std::lock_guard lock(g_mutex);
  *total_bytes = shoal::simt::DeviceBytes();
  *free_bytes = *total_bytes > g_allocated ? *total_bytes - g_allocated : 0;
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** ptr, size_t size) {
  std::lock_guard lock(g_mutex);
  if (g_allocated + size > shoal::simt::DeviceBytes()) {
    *ptr = nullptr;
    return cudaErrorMemoryAllocation;
  }
  // 256-byte aligned, as cudaMalloc's pointers are (vector loads rely on it), and exactly
  // `size` long: under AddressSanitizer a read past the end stops the test, as
  // compute-sanitizer's memcheck reports one on a GPU.
  void* p = nullptr;
  if (posix_memalign(&p, 256, std::max<size_t>(size, 1)) != 0) return cudaErrorMemoryAllocation;
  g_allocations[reinterpret_cast<uintptr_t>(p)] = size;
  g_allocated += size;
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  if (ptr == nullptr) return cudaSuccess;
  FlushStreams(/*blocking_only=*/false);  // cudaFree synchronizes the device
  std::lock_guard lock(g_mutex);
  auto it = g_allocations.find(reinterpret_cast<uintptr_t>(ptr));
  if (it == g_allocations.end()) return cudaErrorInvalidValue;
  g_allocated -= it->second;
  g_allocations.erase(it);
  std::free(ptr);
  return cudaSuccess;
}

cudaError_t cudaMallocHost(void** ptr, size_t size) {
  *ptr = std::aligned_alloc(256, (std::max<size_t>(size, 1) + 255) / 256 * 256);
  return *ptr != nullptr ? cudaSuccess : cudaErrorMemoryAllocation;
}

cudaError_t cudaFreeHost(void* ptr) {
  FlushStreams(/*blocking_only=*/false);
  std::free(ptr);
  return cudaSuccess;
}

// The legacy stream's: after the blocking streams' work.
cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind) {
  FlushStreams(/*blocking_only=*/true);
  if (count > 0) std::memmove(dst, src, count);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind, cudaStream_t stream) {
  if (count > 0) Issue(stream, [dst, src, count] { std::memmove(dst, src, count); });
  return cudaSuccess;
}

cudaError_t cudaMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height,
                              cudaMemcpyKind, cudaStream_t stream) {
  if (width > dpitch || width > spitch) return cudaErrorInvalidPitchValue;
  Issue(stream, [=] {
    for (size_t r = 0; r < height; ++r) {
      std::memmove(static_cast<char*>(dst) + r * dpitch, static_cast<const char*>(src) + r * spitch, width);
    }
  });
  return cudaSuccess;
}

// One emulated device: no peers.
cudaError_t cudaMemcpyPeer(void* dst, int dst_device, const void* src, int src_device, size_t count) {
  if (dst_device != 0 || src_device != 0) return cudaErrorInvalidDevice;
  return cudaMemcpy(dst, src, count, cudaMemcpyDeviceToDevice);
}

cudaError_t cudaDeviceEnablePeerAccess(int peer_device, unsigned int) {
  (void)peer_device;
  return cudaErrorInvalidDevice;
}

// An event's time is when the work issued before it ran.
cudaError_t cudaStreamQuery(cudaStream_t stream) {
  if (stream != nullptr) Flush(stream);  // a poll loop must make progress
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* event) {
  *event = new CUevent_st;
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete event;
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  if (Capturing(stream)) return cudaErrorStreamCaptureUnsupported;
  event->stream = stream;
  Issue(stream, [event] { event->at = std::chrono::steady_clock::now(); });
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  if (event->stream != nullptr) Flush(event->stream);
  return cudaSuccess;
}

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  *ms = std::chrono::duration<float, std::milli>(end->at - start->at).count();
  return cudaSuccess;
}

cudaError_t cudaMemset(void* dst, int value, size_t count) {
  FlushStreams(/*blocking_only=*/true);
  std::memset(dst, value, count);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* dst, int value, size_t count, cudaStream_t stream) {
  Issue(stream, [dst, value, count] { std::memset(dst, value, count); });
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int flags) {
  *stream = new CUstream_st;
  (*stream)->flags = flags;
  std::lock_guard lock(shoal::simt::g_streams_mutex);
  shoal::simt::g_streams.insert(*stream);
  return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t* stream) { return cudaStreamCreateWithFlags(stream, 0); }

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  Flush(stream);  // its work completes first, as on the hardware
  {
    std::lock_guard lock(shoal::simt::g_streams_mutex);
    shoal::simt::g_streams.erase(stream);
  }
  delete stream;
  return cudaSuccess;
}

// Synchronizing a capturing stream is illegal on the hardware; it invalidates the capture.
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  if (Capturing(stream)) {
    stream->capture_invalidated = true;
    return cudaErrorStreamCaptureUnsupported;
  }
  if (stream != nullptr) Flush(stream);
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) {
  FlushStreams(/*blocking_only=*/false);
  return cudaSuccess;
}

// Captures this host thread has begun and not ended: a kernel's shared-memory opt-in is
// refused meanwhile, so the engine's opt-ins are shown to happen before any capture
// (nothing of ours should depend on whether a GPU takes cudaFuncSetAttribute inside one).
static thread_local int g_open_captures = 0;

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode) {
  if (stream == nullptr) return cudaErrorStreamCaptureUnsupported;
  if (stream->capture != nullptr) return cudaErrorIllegalState;
  ++g_open_captures;
  stream->capture = new std::vector<std::function<void()>>;
  stream->capture_invalidated = false;
  return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
  if (stream == nullptr || stream->capture == nullptr) return cudaErrorIllegalState;
  std::unique_ptr<std::vector<std::function<void()>>> work(stream->capture);
  stream->capture = nullptr;
  --g_open_captures;
  if (stream->capture_invalidated) {
    stream->capture_invalidated = false;
    *graph = nullptr;
    return cudaErrorStreamCaptureInvalidated;
  }
  *graph = new CUgraph_st{std::move(*work)};
  return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
  if (graph == nullptr) return cudaErrorInvalidValue;
  *exec = new CUgraphExec_st{graph->work};
  return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
  if (exec == nullptr) return cudaErrorInvalidValue;
  for (const auto& work : exec->work) Issue(stream, work);
  return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  delete graph;
  return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  delete exec;
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (g_open_captures > 0) return cudaErrorStreamCaptureUnsupported;
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) return SetDynamicSharedLimit(func, value);
  return cudaSuccess;
}

cudaError_t cudaGetLastError(void) {
  const cudaError_t e = g_last_error;
  g_last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError(void) { return g_last_error; }

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorIllegalState: return "cudaErrorIllegalState";
    case cudaErrorInvalidPitchValue: return "cudaErrorInvalidPitchValue";
    default: return "cudaErrorUnknown";
  }
}

const char* cudaGetErrorString(cudaError_t error) { return cudaGetErrorName(error); }

}  // extern "C"
