// The measurement protocol, shared by the CPU and the CUDA runner: which
// calls are made in which order, which of them are timed and during which
// one the extra memory is watched. Each device only says how to time one
// call and how to watch its memory (DeviceProbe).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "bench_config.h"

namespace bench {

struct Result {
  enum class Status { ok, skipped, failed };
  std::int64_t seqlen = 0, batch = 0;
  bool key_padding = false;  // run as a varlen batch of random lengths
  Method method = Method::flash;
  Status status = Status::ok;
  std::string message;  // why skipped / failed
  std::vector<double> fwd_ms, bwd_ms, fwd_bwd_ms;  // one sample per timed run
  // Peak memory the call needs beyond its inputs and outputs; -1 = unknown.
  double fwd_extra_bytes = -1, bwd_extra_bytes = -1;
  double fwd_flop = 0, bwd_flop = 0;
  double density = 1;  // block-sparse: fraction of candidate key blocks kept
};

double median(std::vector<double> samples);  // NaN when empty

// Text form of a Result, to pass it from a forked child to its parent.
std::string encode(const Result& r);
Result decode(const std::string& text);

class DeviceProbe {
 public:
  virtual ~DeviceProbe() = default;
  // Wall time of call() on the device, in milliseconds (waits for it).
  virtual double time_ms(const std::function<void()>& call) = 0;
  // Brackets one call: forget the peak so far (and cached free memory), then
  // return the peak extra bytes reached since, or -1 when unknown.
  virtual void start_memory_watch() = 0;
  virtual double extra_bytes_since_watch() = 0;
};

// Warm-up, one memory-watched call, then `repeats` timed calls of forward,
// of backward and of forward followed by backward. forward() must also
// produce the O and LSE that backward() reads.
void measure_calls(DeviceProbe& probe, const std::function<void()>& forward,
                   const std::function<void()>& backward, int repeats, Result& r);

}  // namespace bench
