#include "worker/kernels/cpu/thread_pool.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace shoal::worker {

// A decode step calls ParallelFor a few hundred times, each for tens of microseconds of
// work, so waking helpers through a condition variable every time would cost more than
// the work. Helpers spin on a generation counter for a short while after each job and
// only then sleep.
//
// Chunks are claimed, not assigned: the caller and the helpers take chunk indices from
// one atomic ticket, and the caller runs every chunk no helper has taken. On a machine
// whose cores are shared with other processes a helper may not run for milliseconds; with
// claiming, the step never waits for a helper that has not started, only for chunks
// already running.
namespace {
constexpr int kSpinIterations = 1 << 13;

// ticket = job id (32 bits) | number of chunks (16 bits) | next unclaimed chunk (16 bits).
// Claiming is a CAS on the whole word, so a helper that read a ticket of a finished job
// can never claim a chunk of the next one.
constexpr uint64_t Ticket(uint64_t job, uint64_t chunks, uint64_t next) {
  return job << 32 | chunks << 16 | next;
}
constexpr uint64_t TicketChunks(uint64_t t) { return (t >> 16) & 0xFFFF; }
constexpr uint64_t TicketNext(uint64_t t) { return t & 0xFFFF; }
}  // namespace

struct ThreadPool::State {
  int num_threads = 1;
  std::vector<std::thread> helpers;

  std::atomic<uint64_t> generation{0};
  std::atomic<uint64_t> ticket{0};
  std::atomic<int> done{0};
  std::atomic<int> sleepers{0};
  std::atomic<bool> stop{false};
  std::mutex mu;
  std::condition_variable cv;

  // The current job; written by the caller before the ticket is published and read only
  // by whoever has claimed one of its chunks.
  const std::function<void(int64_t, int64_t)>* fn = nullptr;
  int64_t n = 0;

  // Claims and runs chunks of the current job until none is left.
  void RunClaimedChunks() {
    uint64_t t = ticket.load(std::memory_order_acquire);
    while (TicketNext(t) < TicketChunks(t)) {
      if (!ticket.compare_exchange_weak(t, t + 1, std::memory_order_acq_rel)) continue;
      const int64_t chunks = static_cast<int64_t>(TicketChunks(t));
      const int64_t c = static_cast<int64_t>(TicketNext(t));
      const int64_t begin = n * c / chunks, end = n * (c + 1) / chunks;
      if (begin < end) (*fn)(begin, end);
      done.fetch_add(1, std::memory_order_acq_rel);
      t = ticket.load(std::memory_order_acquire);
    }
  }

  void HelperLoop() {
    uint64_t seen = 0;
    while (true) {
      uint64_t g = generation.load(std::memory_order_acquire);
      for (int i = 0; g == seen && i < kSpinIterations; ++i) {
        _mm_pause();
        g = generation.load(std::memory_order_acquire);
      }
      if (g == seen) {
        std::unique_lock<std::mutex> lock(mu);
        sleepers.fetch_add(1);
        cv.wait(lock, [&] { return generation.load() != seen || stop.load(); });
        sleepers.fetch_sub(1);
        g = generation.load(std::memory_order_acquire);
      }
      if (stop.load()) return;
      seen = g;
      RunClaimedChunks();
    }
  }
};

ThreadPool::ThreadPool(int num_threads) : state_(std::make_unique<State>()) {
  state_->num_threads = std::clamp(num_threads, 1, 1024);
  for (int i = 1; i < state_->num_threads; ++i) {
    state_->helpers.emplace_back([s = state_.get()] { s->HelperLoop(); });
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->stop.store(true);
    state_->generation.fetch_add(1);
  }
  state_->cv.notify_all();
  for (auto& t : state_->helpers) t.join();
}

int ThreadPool::size() const { return state_->num_threads; }

void ThreadPool::ParallelFor(int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  State& s = *state_;
  const int chunks = static_cast<int>(std::min<int64_t>(n, s.num_threads));
  if (chunks == 1) {
    fn(0, n);
    return;
  }
  s.fn = &fn;
  s.n = n;
  s.done.store(0, std::memory_order_relaxed);
  const uint64_t job = (s.ticket.load(std::memory_order_relaxed) >> 32) + 1;
  s.ticket.store(Ticket(job, chunks, 0), std::memory_order_release);
  s.generation.fetch_add(1);  // seq_cst: pairs with the helpers' sleepers/generation check
  if (s.sleepers.load() > 0) {
    { std::lock_guard<std::mutex> lock(s.mu); }
    s.cv.notify_all();
  }
  s.RunClaimedChunks();
  // Only chunks a helper has claimed can still be running.
  for (int i = 0; s.done.load(std::memory_order_acquire) != chunks; ++i) {
    if (i < kSpinIterations) {
      _mm_pause();
    } else {
      std::this_thread::yield();
    }
  }
}

}  // namespace shoal::worker
