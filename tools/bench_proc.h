// Reading Linux /proc files (/proc/cpuinfo, /proc/meminfo, /proc/self/status).
#pragma once

#include <fstream>
#include <string>

namespace bench {

// The value of the first "key: value" line of file (leading blanks removed),
// or "" when there is none.
inline std::string proc_field(const char* file, const std::string& key) {
  std::ifstream in(file);
  std::string line;
  while (std::getline(in, line)) {
    if (line.compare(0, key.size(), key) != 0) continue;
    const std::size_t colon = line.find(':');
    if (colon == std::string::npos || line.find_first_not_of(" \t", key.size()) != colon) continue;
    const std::size_t start = line.find_first_not_of(" \t", colon + 1);
    return start == std::string::npos ? "" : line.substr(start);
  }
  return "";
}

// A "key: N kB" field in bytes, or -1 when absent.
inline double proc_bytes(const char* file, const std::string& key) {
  const std::string v = proc_field(file, key);
  return v.empty() ? -1.0 : 1024.0 * std::stod(v);
}

}  // namespace bench
