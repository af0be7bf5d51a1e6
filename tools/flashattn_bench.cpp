// flashattn-bench: standard attention vs FlashAttention vs block-sparse
// FlashAttention, forward / backward / forward+backward, across sequence
// lengths; runtime, FLOP rate and extra memory (the seed paper's Figure 3).
// Usage: flashattn-bench --help.
#include <cstdio>
#include <exception>
#include <stdexcept>
#include <vector>

#include "bench_config.h"
#include "bench_measure.h"
#include "bench_report.h"
#include "bench_runners.h"
#include "flashattn/flashattn.h"

namespace {

// One row of the table: skipped (with the reason), or measured on the device.
bench::Result run_row(const bench::Config& cfg, std::int64_t seqlen, bench::Method method) {
  using namespace bench;
  Result r;
  r.seqlen = seqlen;
  r.method = method;
  r.status = Result::Status::skipped;
  if (method == Method::standard && seqlen > cfg.max_standard_seqlen) {
    r.message = "seqlen > --max-standard-seqlen " + std::to_string(cfg.max_standard_seqlen);
    return r;
  }
  if (!flashattn::supports(cfg.device, algorithm_of(method), cfg.dtype, cfg.head_dim)) {
    r.message = std::string("not supported by this backend (") + flashattn::to_string(cfg.device) + ", " +
                (method == Method::standard ? "standard" : "flash") + ", " + flashattn::to_string(cfg.dtype) +
                ", head_dim " + std::to_string(cfg.head_dim) + ")";
    return r;
  }
  if (cfg.device == flashattn::Device::cpu) {
    r.message = cpu_skip_reason(cfg, seqlen, method);
    return r.message.empty() ? run_cpu(cfg, seqlen, method) : r;
  }
#ifdef FLASHATTN_HAS_CUDA
  return run_cuda(cfg, seqlen, method);
#else
  r.status = Result::Status::failed;
  r.message = "this build has no CUDA backend";
  return r;
#endif
}

}  // namespace

int main(int argc, char** argv) {
  using namespace bench;
  Config cfg;
  try {
    if (!parse_args(argc, argv, cfg)) return 0;
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "flashattn-bench: %s (see --help)\n", e.what());
    return 2;
  }

  MachineInfo machine = describe_machine();
  if (cfg.device == flashattn::Device::cuda) {
#ifdef FLASHATTN_HAS_CUDA
    try {
      machine.gpu = cuda_device_description();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "flashattn-bench: --device cuda: no usable CUDA device (%s)\n", e.what());
      return 2;
    }
#else
    std::fprintf(stderr, "flashattn-bench: --device: expected cpu (this build has no CUDA backend), got cuda\n");
    return 2;
#endif
  }
  print_header(cfg, machine);

  std::vector<Result> results;
  bool any_failed = false;
  for (const std::int64_t seqlen : cfg.seqlens) {
    for (const Method method : cfg.methods) {
      const Result r = run_row(cfg, seqlen, method);
      any_failed = any_failed || r.status == Result::Status::failed;
      print_row(cfg, r);
      results.push_back(r);
    }
  }

  try {
    if (!cfg.json_path.empty()) {
      write_json(cfg.json_path, cfg, machine, results);
      std::printf("\nwrote %s\n", cfg.json_path.c_str());
    }
    if (!cfg.markdown_path.empty()) {
      write_markdown(cfg.markdown_path, cfg, machine, results);
      std::printf("wrote %s\n", cfg.markdown_path.c_str());
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "flashattn-bench: %s\n", e.what());
    return 1;
  }
  return any_failed ? 1 : 0;
}
