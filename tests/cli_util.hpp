// Runs the nibble-quant binary from a test. Every test process gets its own file
// prefix: ctest runs each test in its own process, in parallel, and one process
// rewriting an input another has memory-mapped would pull it from under it.
#pragma once

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

namespace nibble::test {

inline const std::string& cli_dir() {
  static const std::string dir = ::testing::TempDir() + "nibble_cli_" + std::to_string(::getpid()) + "_";
  return dir;
}

// Runs `program` with `args` and returns its exit code; stdout and stderr go to `log`.
inline int run_program(const std::string& program, const std::string& args, std::string* log = nullptr) {
  const std::string log_path = cli_dir() + "run.log";
  const std::string cmd = program + " " + args + " >" + log_path + " 2>&1";
  const int status = std::system(cmd.c_str());
  if (log) {
    std::ifstream in(log_path);
    std::stringstream ss;
    ss << in.rdbuf();
    *log = ss.str();
  }
  std::remove(log_path.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

#if defined(NIBBLE_QUANT_PATH)
// Runs nibble-quant with `args` (see run_program).
inline int run_cli(const std::string& args, std::string* log = nullptr) {
  return run_program(NIBBLE_QUANT_PATH, args, log);
}
#endif

}  // namespace nibble::test
