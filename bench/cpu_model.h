// The host CPU's name ("model name" in /proc/cpuinfo), for the device field of the C++ benchmarks' results.
#pragma once

#include <fstream>
#include <string>

namespace ff::bench {

inline std::string cpu_model() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown CPU";
}

}  // namespace ff::bench
