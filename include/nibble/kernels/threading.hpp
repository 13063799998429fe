// A small persistent thread pool for splitting rows across threads.
//
// run(n, task) calls task(0..n-1), index 0 on the caller's thread, and returns
// when all are done. Waiting is a short bounded spin (kSpin, for back-to-back
// GEMVs) followed by sleeping on a condition variable: an unbounded spin barrier
// would steal the core the work needs when other processes share the machine.
// While calls come back to back the hand-off takes no lock on the workers' side:
// a worker that is still spinning sees the new generation (published with release
// order after the task) and reports completion on an atomic counter; the mutex and
// condition variables are only for threads that went to sleep. Decode-sized
// products (576 x 576: ~7 us on one thread) depend on this.
// Only one run uses the pool at a time; a concurrent caller does not wait for the
// pool but runs its tasks itself, one after the other: same results, no deadlock.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace nibble::detail {

class ThreadPool {
 public:
  static ThreadPool& instance() {
    static ThreadPool pool;
    return pool;
  }

  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_.store(true);
      generation_.fetch_add(2);  // stays even: "published"
    }
    wake_.notify_all();
    for (std::thread& t : workers_) t.join();
  }

  void run(std::size_t n, const std::function<void(std::size_t)>& task) {
    std::unique_lock<std::mutex> busy(run_mutex_, std::try_to_lock);
    if (n <= 1 || !busy.owns_lock()) {
      for (std::size_t i = 0; i < n; ++i) task(i);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      while (workers_.size() < n - 1) {
        const std::size_t index = workers_.size() + 1;
        workers_.emplace_back([this, index] { worker_loop(index); });
      }
      // Odd generation while the run is set up, even once it is published: a worker
      // that does not take part (index >= n) may still be reading the previous run's
      // fields, and rereads them if the generation moved (a sequence lock).
      generation_.fetch_add(1);
      // Release stores: a reader that sees one of these values also sees the odd count.
      task_.store(&task, std::memory_order_release);
      participants_.store(n, std::memory_order_release);
      pending_.store(n - 1);
      error_ = nullptr;
      generation_.fetch_add(1);
    }
    wake_.notify_all();
    std::exception_ptr mine;
    try {
      task(0);
    } catch (...) {
      mine = std::current_exception();
    }
    spin_until([this] { return pending_.load(std::memory_order_acquire) == 0; });
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return pending_.load() == 0; });
    if (mine) std::rethrow_exception(mine);
    if (error_) std::rethrow_exception(error_);
  }

 private:
  static constexpr std::chrono::microseconds kSpin{50};

  ThreadPool() = default;

  // Spins until ready() or kSpin has passed; returns ready(). The pause hint (not a
  // yield system call) keeps the wake-up within a few hundred nanoseconds.
  template <class Ready>
  static bool spin_until(Ready ready) {
    const auto until = std::chrono::steady_clock::now() + kSpin;
    for (unsigned i = 0;; ++i) {
      if (ready()) return true;
      if (i % 64 == 63 && std::chrono::steady_clock::now() >= until) return ready();
      cpu_relax();
    }
  }

  static void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#else
    std::this_thread::yield();
#endif
  }

  void worker_loop(std::size_t index) {
    std::size_t seen = 0;
    for (;;) {
      const auto published = [&] {
        const std::size_t g = generation_.load(std::memory_order_acquire);
        return g != seen && g % 2 == 0;
      };
      if (!spin_until(published)) {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, published);
      }
      if (stop_.load()) return;
      // One consistent view of the run (generation_'s acquire makes its fields visible).
      const std::size_t g = generation_.load(std::memory_order_acquire);
      // Acquire loads: the check of the generation below comes after these two reads,
      // and sees the odd count if either read the next run's value.
      const std::size_t participants = participants_.load(std::memory_order_acquire);
      const std::function<void(std::size_t)>* task = task_.load(std::memory_order_acquire);
      if (g % 2 != 0 || generation_.load(std::memory_order_relaxed) != g) continue;  // being replaced: look again
      seen = g;
      if (index >= participants) continue;
      std::exception_ptr err;
      try {
        (*task)(index);
      } catch (...) {
        err = std::current_exception();
      }
      if (err) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) error_ = err;
      }
      // The last one wakes a caller that stopped spinning (under the mutex, so the
      // caller cannot miss it between checking the count and going to sleep).
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lock(mutex_);
        done_.notify_one();
      }
    }
  }

  std::mutex run_mutex_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  std::atomic<const std::function<void(std::size_t)>*> task_{nullptr};
  std::atomic<std::size_t> participants_{0}, pending_{0}, generation_{0};
  std::exception_ptr error_;
  std::atomic<bool> stop_{false};
};

}  // namespace nibble::detail
