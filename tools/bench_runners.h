// One measurement (a sequence length and a method) on one device.
#pragma once

#include <cstdint>
#include <string>

#include "bench_config.h"
#include "bench_measure.h"

namespace bench {

// Runs the measurement in a forked child process, so that its peak resident
// memory is its own and a crash or an out-of-memory kill becomes a failed
// row instead of the end of the run. The parent must not have started
// OpenMP threads (a forked child inherits no thread pool but libgomp's
// state about it).
Result run_cpu(const Config& cfg, std::int64_t seqlen, Method method);

// Empty when the method fits in this machine's memory; otherwise why the
// row is skipped (the --max-standard-seqlen limit is the caller's).
std::string cpu_skip_reason(const Config& cfg, std::int64_t seqlen, Method method);

#ifdef FLASHATTN_HAS_CUDA
// Runs in this process on the current CUDA device (no fork: a CUDA context
// does not survive one).
Result run_cuda(const Config& cfg, std::int64_t seqlen, Method method);
// "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.1 GiB)"; throws
// std::runtime_error saying why when there is no usable device.
std::string cuda_device_description();
#endif

}  // namespace bench
