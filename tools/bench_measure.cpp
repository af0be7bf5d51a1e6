#include "bench_measure.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

namespace bench {

double median(std::vector<double> s) {
  if (s.empty()) return std::numeric_limits<double>::quiet_NaN();
  std::sort(s.begin(), s.end());
  const std::size_t n = s.size();
  return n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
}

void measure_calls(DeviceProbe& probe, const std::function<void()>& forward,
                   const std::function<void()>& backward, int repeats, Result& r) {
  // The warm-up creates the thread pool / CUDA context and faults in the
  // outputs, none of which belongs to one call's cost.
  forward();
  // Memory is watched on its own call, after the warm-up and before any
  // timed call: a watched call starts with cached memory released (and so
  // pays for faulting it in again), which must not leak into the timings.
  probe.start_memory_watch();
  forward();
  r.fwd_extra_bytes = probe.extra_bytes_since_watch();
  for (int i = 0; i < repeats; ++i) r.fwd_ms.push_back(probe.time_ms(forward));

  probe.start_memory_watch();
  backward();  // also the backward's warm-up
  r.bwd_extra_bytes = probe.extra_bytes_since_watch();
  for (int i = 0; i < repeats; ++i) r.bwd_ms.push_back(probe.time_ms(backward));

  const auto both = [&] { forward(); backward(); };
  for (int i = 0; i < repeats; ++i) r.fwd_bwd_ms.push_back(probe.time_ms(both));
}

// ---- text transport: one "key value..." line per field, message last ----

namespace {
void put_samples(std::ostringstream& os, const char* key, const std::vector<double>& v) {
  os << key;
  for (const double x : v) os << ' ' << x;
  os << '\n';
}
std::vector<double> get_samples(std::istringstream& is) {
  std::vector<double> v;
  double x;
  while (is >> x) v.push_back(x);
  return v;
}
}  // namespace

std::string encode(const Result& r) {
  std::ostringstream os;
  os.precision(17);
  os << "seqlen " << r.seqlen << '\n'
     << "batch " << r.batch << '\n'
     << "key_padding " << (r.key_padding ? 1 : 0) << '\n'
     << "method " << static_cast<int>(r.method) << '\n'
     << "status " << static_cast<int>(r.status) << '\n'
     << "memory " << r.fwd_extra_bytes << ' ' << r.bwd_extra_bytes << '\n'
     << "flop " << r.fwd_flop << ' ' << r.bwd_flop << '\n'
     << "density " << r.density << '\n';
  put_samples(os, "fwd", r.fwd_ms);
  put_samples(os, "bwd", r.bwd_ms);
  put_samples(os, "fwd_bwd", r.fwd_bwd_ms);
  std::string msg = r.message;
  std::replace(msg.begin(), msg.end(), '\n', ' ');
  os << "message " << msg << '\n';
  return os.str();
}

Result decode(const std::string& text) {
  Result r;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    const std::size_t sp = line.find(' ');
    const std::string key = line.substr(0, sp);
    const std::string rest = sp == std::string::npos ? "" : line.substr(sp + 1);
    std::istringstream is(rest);
    int e = 0;
    if (key == "seqlen") is >> r.seqlen;
    else if (key == "batch") is >> r.batch;
    else if (key == "key_padding" && (is >> e)) r.key_padding = e != 0;
    else if (key == "method" && (is >> e)) r.method = static_cast<Method>(e);
    else if (key == "status" && (is >> e)) r.status = static_cast<Result::Status>(e);
    else if (key == "memory") is >> r.fwd_extra_bytes >> r.bwd_extra_bytes;
    else if (key == "flop") is >> r.fwd_flop >> r.bwd_flop;
    else if (key == "density") is >> r.density;
    else if (key == "fwd") r.fwd_ms = get_samples(is);
    else if (key == "bwd") r.bwd_ms = get_samples(is);
    else if (key == "fwd_bwd") r.fwd_bwd_ms = get_samples(is);
    else if (key == "message") r.message = rest;
  }
  return r;
}

}  // namespace bench
