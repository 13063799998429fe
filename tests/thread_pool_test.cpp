// The kernels' thread pool (kernels/threading.hpp): every index of every run exactly
// once, with thread counts changing from call to call (workers that sit a run out read
// the pool's state while the next run is set up), across the spinning and the
// sleeping hand-off, with exceptions, and with concurrent callers.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <functional>
#include <stdexcept>
#include <thread>
#include <vector>

#include <nibble/kernels/threading.hpp>

namespace thread_pool_test {  // one per file: a test group compiles as one unit (tests/CMakeLists.txt)

namespace {

using nibble::detail::ThreadPool;

// Runs `n` tasks and checks each index ran exactly once, on return.
void run_and_check(std::size_t n, std::size_t work) {
  std::vector<std::atomic<int>> hits(n);
  std::vector<double> sink(n);
  const std::function<void(std::size_t)> task = [&](std::size_t i) {
    double acc = 0;
    for (std::size_t k = 0; k < work; ++k) acc += static_cast<double>(k ^ i);
    sink[i] = acc;
    hits[i].fetch_add(1);
  };
  ThreadPool::instance().run(n, task);
  for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "index " << i << " of " << n;
}

TEST(ThreadPool, EveryIndexOnceWhileThreadCountsChange) {
  // Back to back (the spinning hand-off), thread counts up and down so that some
  // workers sit runs out; little and more work per task.
  const std::size_t counts[] = {2, 4, 3, 1, 2, 4, 4, 2, 3, 3, 1, 4};
  for (int round = 0; round < 3000; ++round)
    for (std::size_t n : counts) run_and_check(n, round % 7 == 0 ? 2000 : 10);
}

TEST(ThreadPool, AfterTheWorkersWentToSleep) {
  for (int round = 0; round < 5; ++round) {
    std::this_thread::sleep_for(std::chrono::milliseconds(3));  // well past the spin
    run_and_check(round % 2 ? 4 : 2, 100);
  }
}

TEST(ThreadPool, ExceptionsReachTheCallerAndThePoolStaysUsable) {
  for (std::size_t thrower : {std::size_t{0}, std::size_t{1}, std::size_t{2}}) {
    const std::function<void(std::size_t)> task = [&](std::size_t i) {
      if (i == thrower) throw std::runtime_error("task failed");
    };
    EXPECT_THROW(ThreadPool::instance().run(3, task), std::runtime_error);
    run_and_check(3, 10);
  }
}

TEST(ThreadPool, ConcurrentCallersAllFinish) {
  // One caller gets the pool, the others run their tasks themselves: every run must
  // still cover its indices exactly once.
  std::vector<std::thread> callers;
  std::atomic<int> failures{0};
  for (int c = 0; c < 3; ++c)
    callers.emplace_back([&, c] {
      for (int round = 0; round < 500; ++round) {
        const std::size_t n = static_cast<std::size_t>(1 + (round + c) % 4);
        std::vector<std::atomic<int>> hits(n);
        ThreadPool::instance().run(n, [&](std::size_t i) { hits[i].fetch_add(1); });
        for (std::size_t i = 0; i < n; ++i)
          if (hits[i].load() != 1) failures.fetch_add(1);
      }
    });
  for (std::thread& t : callers) t.join();
  EXPECT_EQ(failures.load(), 0);
}

}  // namespace

}  // namespace thread_pool_test
