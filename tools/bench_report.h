// What flashattn-bench prints (a table shaped like the paper's Figure 3:
// runtime and memory against sequence length) and writes (JSON, and the
// same table in Markdown for the README).
#pragma once

#include <string>
#include <vector>

#include "bench_config.h"
#include "bench_measure.h"

namespace bench {

// Where and from what the numbers come: enough to compare two JSON files.
struct MachineInfo {
  std::string date_utc;       // ISO 8601
  std::string cpu_model;      // /proc/cpuinfo "model name"
  int logical_cpus = 0;
  double memory_gib = 0;      // MemTotal
  std::string gpu;            // CUDA runs only
  std::string git_commit;     // of the sources the tool was built from
  bool git_dirty = false;     // ...with uncommitted changes to tracked files
  std::string git_commit_now; // the source tree's HEAD at run time
  std::string compiler, build_type, cxx_flags;
};

MachineInfo describe_machine();

void print_header(const Config& cfg, const MachineInfo& m);
void print_row(const Config& cfg, const Result& r);
// Both throw std::runtime_error when the file cannot be written.
void write_markdown(const std::string& path, const Config& cfg, const MachineInfo& m,
                    const std::vector<Result>& results);
void write_json(const std::string& path, const Config& cfg, const MachineInfo& m, const std::vector<Result>& results);

}  // namespace bench
