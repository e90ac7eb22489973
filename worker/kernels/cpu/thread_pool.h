#pragma once
// A fixed set of worker threads that split loops. The calling thread takes part, so a
// pool of N uses N threads in all (N-1 helpers). ParallelFor blocks until every chunk is
// done; it is not re-entrant (kernels never nest it).
#include <cstdint>
#include <functional>
#include <memory>

namespace shoal::worker {

class ThreadPool {
 public:
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const;
  // Calls fn(begin, end) over disjoint ranges covering [0, n), one range per thread
  // (fewer when n is small).
  void ParallelFor(int64_t n, const std::function<void(int64_t begin, int64_t end)>& fn);

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace shoal::worker
