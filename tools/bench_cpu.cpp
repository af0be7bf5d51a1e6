// CPU measurements: steady_clock timings, and extra memory as the rise of
// the process's peak resident set (VmHWM) over its resident set before the
// call. Each measurement runs in its own forked child process.
#include <malloc.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "bench_proc.h"
#include "bench_runners.h"
#include "bench_workload.h"

namespace bench {
namespace {

class CpuProbe final : public DeviceProbe {
 public:
  double time_ms(const std::function<void()>& call) override {
    const auto t0 = std::chrono::steady_clock::now();
    call();
    const auto t1 = std::chrono::steady_clock::now();
    return std::chrono::duration<double, std::milli>(t1 - t0).count();
  }

  void start_memory_watch() override {
    // Hand freed heap back to the kernel first, so that memory a previous
    // call left cached in malloc is not mistaken for headroom this call
    // already owns (it would then not show up as a rise of the RSS).
    malloc_trim(0);
    // Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    std::ofstream clear("/proc/self/clear_refs");
    clear << "5";
    clear.flush();
    peak_reset_ = static_cast<bool>(clear);
    rss_before_ = proc_bytes("/proc/self/status", "VmRSS");
  }

  double extra_bytes_since_watch() override {
    const double hwm = proc_bytes("/proc/self/status", "VmHWM");
    if (!peak_reset_ || hwm < 0 || rss_before_ < 0) return -1;
    return hwm > rss_before_ ? hwm - rss_before_ : 0.0;
  }

 private:
  bool peak_reset_ = false;
  double rss_before_ = -1;
};

Result measure_in_this_process(const Config& cfg, std::int64_t seqlen, Method method) {
  const Workload w = make_workload(cfg, seqlen, method);
  Result r = result_for(w);
  // Outputs are value-initialised, i.e. written: their pages are resident
  // before the first watch and so are not counted as extra memory.
  std::vector<unsigned char> o(w.tensor_bytes()), dq(w.tensor_bytes()), dk(w.tensor_bytes()), dv(w.tensor_bytes());
  std::vector<float> lse(w.lse_floats());
  // The library only reads the inputs: casting away const is safe.
  auto in = [](const std::vector<unsigned char>& v) { return const_cast<unsigned char*>(v.data()); };
  const Buffers buffers{in(w.q), in(w.k), in(w.v), o.data(), in(w.dout), dq.data(), dk.data(), dv.data(), lse.data()};

  flashattn::BlockMask mask = w.mask;
  mask.kv_count = w.kv_count.data();
  mask.kv_indices = w.kv_indices.data();
  mask.full_kv_count = w.full_kv_count.data();
  mask.full_kv_indices = w.full_kv_indices.data();
  const flashattn::BlockMask* block_mask = w.sparse ? &mask : nullptr;

  flashattn::Context ctx;
  ctx.device = flashattn::Device::cpu;
  ctx.num_threads = cfg.threads;
  ctx.algorithm = algorithm_of(method);
  flashattn::ForwardArgs fwd = forward_args(w, buffers, block_mask);
  flashattn::BackwardArgs bwd = backward_args(w, buffers, block_mask);
  const flashattn::Varlen varlen = w.varlen_over(w.cu_seqlens.data(), w.cu_seqlens.data());
  if (w.padded) fwd.options.varlen = bwd.options.varlen = &varlen;

  CpuProbe probe;
  measure_calls(
      probe, [&] { flashattn::forward(fwd, ctx); }, [&] { flashattn::backward(bwd, ctx); }, cfg.repeats, r);
  return r;
}

void write_all(int fd, const std::string& s) {
  std::size_t done = 0;
  while (done < s.size()) {
    const ssize_t n = ::write(fd, s.data() + done, s.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    done += static_cast<std::size_t>(n);
  }
}

Result failed(std::int64_t seqlen, Method method, const std::string& why) {
  Result r;
  r.seqlen = seqlen;
  r.method = method;
  r.status = Result::Status::failed;
  r.message = why;
  return r;
}

}  // namespace

std::string cpu_skip_reason(const Config& cfg, std::int64_t seqlen, Method method) {
  if (method != Method::standard) return "";
  // Standard attention's backward holds two float matrices (P and dS) of
  // seqlen^2 per (batch, head); refuse what would push the machine into
  // swap or the OOM killer (other work shares it).
  const double needed = 2.0 * 4.0 * static_cast<double>(batch_at(cfg, seqlen) * cfg.heads) * static_cast<double>(seqlen) *
                        static_cast<double>(seqlen);
  const double available = proc_bytes("/proc/meminfo", "MemAvailable");
  if (available > 0 && needed > 0.8 * available) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "needs ~%.1f GB for S/P, %.1f GB available", needed / 1e9, available / 1e9);
    return buf;
  }
  return "";
}

Result run_cpu(const Config& cfg, std::int64_t seqlen, Method method) {
  int fds[2];
  if (::pipe(fds) != 0) return failed(seqlen, method, std::string("pipe: ") + std::strerror(errno));
  std::fflush(nullptr);  // or the child would flush the parent's buffered output again
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    return failed(seqlen, method, std::string("fork: ") + std::strerror(errno));
  }
  if (pid == 0) {
    ::close(fds[0]);
    Result r;
    try {
      r = measure_in_this_process(cfg, seqlen, method);
    } catch (const std::exception& e) {
      r = failed(seqlen, method, e.what());
    }
    write_all(fds[1], encode(r));
    ::close(fds[1]);
    ::_exit(0);  // no atexit handlers or static destructors of the parent's state
  }
  ::close(fds[1]);
  std::string text;
  char buf[4096];
  while (true) {
    const ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    text.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFSIGNALED(status))
    return failed(seqlen, method,
                  std::string("measurement process killed by signal ") + std::to_string(WTERMSIG(status)) + " (" +
                      strsignal(WTERMSIG(status)) + ")");
  if (text.empty()) return failed(seqlen, method, "measurement process returned no result");
  return decode(text);
}

}  // namespace bench
