// Resident memory of the running tool, for the figures the tools print (Linux; 0 elsewhere).
#pragma once

#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>

namespace nibble_tools {

// Resident memory now, MiB (/proc/self/statm).
inline double current_rss_mib() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return 0.0;
  unsigned long pages = 0, resident = 0;
  const int n = std::fscanf(f, "%lu %lu", &pages, &resident);
  std::fclose(f);
  return n == 2 ? static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE)) / (1 << 20) : 0.0;
}

// Peak resident memory of this process so far, MiB.
inline double peak_rss_mib() {
  struct rusage u {};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;
}

}  // namespace nibble_tools
