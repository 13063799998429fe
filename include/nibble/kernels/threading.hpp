// A small persistent thread pool for splitting rows across threads.
//
// run(n, task) calls task(0..n-1), index 0 on the caller's thread, and returns
// when all are done. Waiting is a short bounded spin (kSpin, for back-to-back
// GEMVs) followed by sleeping on a condition variable: an unbounded spin barrier
// would steal the core the work needs when other processes share the machine.
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
      stop_ = true;
      generation_.fetch_add(1);
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
      task_ = &task;
      participants_ = n;
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
    spin_until([this] { return pending_.load() == 0; });
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return pending_.load() == 0; });
    task_ = nullptr;
    if (mine) std::rethrow_exception(mine);
    if (error_) std::rethrow_exception(error_);
  }

 private:
  static constexpr std::chrono::microseconds kSpin{50};

  ThreadPool() = default;

  template <class Ready>
  static void spin_until(Ready ready) {
    const auto until = std::chrono::steady_clock::now() + kSpin;
    while (!ready() && std::chrono::steady_clock::now() < until) std::this_thread::yield();
  }

  void worker_loop(std::size_t index) {
    std::size_t seen = 0;
    for (;;) {
      spin_until([&] { return generation_.load() != seen; });
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return generation_.load() != seen; });
      if (stop_) return;
      seen = generation_.load();
      if (index >= participants_) continue;
      const std::function<void(std::size_t)>* task = task_;
      lock.unlock();
      std::exception_ptr err;
      try {
        (*task)(index);
      } catch (...) {
        err = std::current_exception();
      }
      lock.lock();
      if (err && !error_) error_ = err;
      if (pending_.fetch_sub(1) == 1) done_.notify_one();
    }
  }

  std::mutex run_mutex_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  const std::function<void(std::size_t)>* task_ = nullptr;
  std::size_t participants_ = 0;
  std::atomic<std::size_t> pending_{0}, generation_{0};
  std::exception_ptr error_;
  bool stop_ = false;
};

}  // namespace nibble::detail
