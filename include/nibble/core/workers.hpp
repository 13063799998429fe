// run_workers: the one way nibble's algorithms run fixed work on short-lived threads
// (Hessian panels, AWQ's objective blocks, GPTQ's row chunks, model evaluation).
// Results stay independent of the thread count because callers deal work that does not
// depend on which worker runs it; this only starts, joins and reports.
#pragma once

#include <cstddef>
#include <exception>
#include <thread>
#include <vector>

namespace nibble::detail {

// Runs work(0) … work(workers − 1), work(0) on the calling thread; after all have
// finished, rethrows the first exception by worker index.
template <class Work>
void run_workers(int workers, Work& work) {
  std::vector<std::thread> pool;
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(workers));
  for (int w = 1; w < workers; ++w)
    pool.emplace_back([&, w] {
      try {
        work(w);
      } catch (...) {
        errors[static_cast<std::size_t>(w)] = std::current_exception();
      }
    });
  try {
    work(0);
  } catch (...) {
    errors[0] = std::current_exception();
  }
  for (auto& t : pool) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace nibble::detail
