#include "bench_config.h"

#include <algorithm>

#include <sched.h>

#include <cstdio>
#include <stdexcept>
#include <thread>

namespace bench {

const char* method_name(Method m) {
  switch (m) {
    case Method::standard: return "standard";
    case Method::flash: return "flash";
    case Method::flash_sparse: return "flash-sparse";
  }
  return "unknown";
}

flashattn::Algorithm algorithm_of(Method m) {
  return m == Method::standard ? flashattn::Algorithm::standard : flashattn::Algorithm::flash;
}

const char* pattern_name(SparsePattern p) { return p == SparsePattern::band ? "band" : "random"; }

namespace {

constexpr const char* kUsage = R"(flashattn-bench: time standard attention, FlashAttention and block-sparse
FlashAttention (forward, backward, forward+backward) across sequence lengths.

Usage: flashattn-bench [options]
  --seqlens LIST          comma-separated sequence lengths (default 256,512,1024,2048,4096)
  --batch N               batch size (default 1)
  --tokens N              tokens per batch: batch = max(1, N / seqlen) at each length (overrides --batch)
  --key-padding N         random lengths in [seqlen - N, seqlen], run as a varlen batch (not for sparse rows)
  --heads N               query = key/value heads (default 8)
  --head-dim N            head dimension (default 64)
  --dtype f32|f16|bf16    storage type of Q, K, V, O and the gradients (default f32 on cpu, f16 on cuda)
  --causal                causal mask (bottom-right aligned)
  --dropout P             dropout probability in [0, 1) (default 0)
  --deterministic         deterministic backward
  --methods LIST          subset of standard,flash,sparse (default all three)
  --density D             block-sparse: fraction of key blocks kept, in (0, 1] (default 0.25)
  --pattern random|band   block-sparse: which key blocks (default random; the diagonal is always kept)
  --block N               block-sparse: block_q = block_k (default 128)
  --threads N             CPU threads (default: all usable cores)
  --repeats N             timed runs per measurement; the median is reported (default 3)
  --device cpu|cuda       where to run (default cpu; cuda needs a CUDA build)
  --max-standard-seqlen N skip standard attention above N ("skipped") (default 4096)
  --seed N                seed of the inputs, the random pattern and dropout (default 1234)
  --json FILE             also write the results and the machine description as JSON
  --markdown FILE         also write the table as Markdown
  --help                  this text
)";

[[noreturn]] void bad(const std::string& flag, const std::string& expected, const std::string& got) {
  throw std::invalid_argument(flag + ": expected " + expected + ", got '" + got + "'");
}

std::int64_t to_int(const std::string& flag, const std::string& s, std::int64_t lo) {
  std::size_t used = 0;
  long long v = 0;
  try {
    v = std::stoll(s, &used);
  } catch (const std::exception&) {
    bad(flag, "an integer >= " + std::to_string(lo), s);
  }
  if (used != s.size() || v < lo) bad(flag, "an integer >= " + std::to_string(lo), s);
  return v;
}

double to_double(const std::string& flag, const std::string& s, double lo, double hi, bool hi_open) {
  std::size_t used = 0;
  double v = 0;
  const std::string range = "a number in [" + std::to_string(lo) + ", " + std::to_string(hi) + (hi_open ? ")" : "]");
  try {
    v = std::stod(s, &used);
  } catch (const std::exception&) {
    bad(flag, range, s);
  }
  if (used != s.size() || !(v >= lo) || (hi_open ? !(v < hi) : !(v <= hi))) bad(flag, range, s);
  return v;
}

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (true) {
    const std::size_t comma = s.find(',', start);
    out.push_back(s.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

// Cores this process may run on (respects taskset / cgroup cpusets).
int usable_cores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
  const unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? static_cast<int>(n) : 1;
}

}  // namespace

std::int64_t batch_at(const Config& cfg, std::int64_t seqlen) {
  return cfg.tokens > 0 ? std::max<std::int64_t>(1, cfg.tokens / seqlen) : cfg.batch;
}

bool parse_args(int argc, char** argv, Config& cfg) {
  cfg.command_line.clear();
  for (int i = 0; i < argc; ++i) {
    if (i) cfg.command_line += ' ';
    cfg.command_line += argv[i];
  }

  bool dtype_given = false;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) bad(flag, "a value after the flag", "end of arguments");
      return argv[++i];
    };
    if (flag == "--help" || flag == "-h") {
      std::fputs(kUsage, stdout);
      return false;
    } else if (flag == "--seqlens") {
      cfg.seqlens.clear();
      for (const std::string& s : split_commas(value())) cfg.seqlens.push_back(to_int(flag, s, 1));
    } else if (flag == "--batch") {
      cfg.batch = to_int(flag, value(), 1);
    } else if (flag == "--tokens") {
      cfg.tokens = to_int(flag, value(), 1);
    } else if (flag == "--key-padding") {
      cfg.key_padding = to_int(flag, value(), 0);
    } else if (flag == "--heads") {
      cfg.heads = to_int(flag, value(), 1);
    } else if (flag == "--head-dim") {
      cfg.head_dim = to_int(flag, value(), 1);
    } else if (flag == "--dtype") {
      const std::string v = value();
      dtype_given = true;
      if (v == "f32") cfg.dtype = flashattn::DType::f32;
      else if (v == "f16") cfg.dtype = flashattn::DType::f16;
      else if (v == "bf16") cfg.dtype = flashattn::DType::bf16;
      else bad(flag, "one of f32, f16, bf16", v);
    } else if (flag == "--causal") {
      cfg.causal = true;
    } else if (flag == "--dropout") {
      cfg.dropout_p = static_cast<float>(to_double(flag, value(), 0.0, 1.0, /*hi_open=*/true));
    } else if (flag == "--deterministic") {
      cfg.deterministic = true;
    } else if (flag == "--methods") {
      cfg.methods.clear();
      for (const std::string& s : split_commas(value())) {
        if (s == "standard") cfg.methods.push_back(Method::standard);
        else if (s == "flash") cfg.methods.push_back(Method::flash);
        else if (s == "sparse" || s == "flash-sparse") cfg.methods.push_back(Method::flash_sparse);
        else bad(flag, "a list of standard, flash, sparse", s);
      }
    } else if (flag == "--density") {
      cfg.density = to_double(flag, value(), 0.0, 1.0, /*hi_open=*/false);
      if (cfg.density <= 0.0) bad(flag, "a number in (0, 1]", std::to_string(cfg.density));
    } else if (flag == "--pattern") {
      const std::string v = value();
      if (v == "random") cfg.pattern = SparsePattern::random;
      else if (v == "band") cfg.pattern = SparsePattern::band;
      else bad(flag, "random or band", v);
    } else if (flag == "--block") {
      cfg.block_size = to_int(flag, value(), 1);
    } else if (flag == "--threads") {
      cfg.threads = static_cast<int>(to_int(flag, value(), 0));
    } else if (flag == "--repeats") {
      cfg.repeats = static_cast<int>(to_int(flag, value(), 1));
    } else if (flag == "--device") {
      const std::string v = value();
      if (v == "cpu") cfg.device = flashattn::Device::cpu;
      else if (v == "cuda") cfg.device = flashattn::Device::cuda;
      else bad(flag, "cpu or cuda", v);
    } else if (flag == "--max-standard-seqlen") {
      cfg.max_standard_seqlen = to_int(flag, value(), 0);
    } else if (flag == "--seed") {
      cfg.seed = static_cast<std::uint64_t>(to_int(flag, value(), 0));
    } else if (flag == "--json") {
      cfg.json_path = value();
    } else if (flag == "--markdown") {
      cfg.markdown_path = value();
    } else {
      bad("argument", "one of the flags listed by --help", flag);
    }
  }
  if (cfg.threads == 0) cfg.threads = usable_cores();
  // The GPU kernels are half-precision tensor-core kernels (as in the paper).
  if (cfg.device == flashattn::Device::cuda && !dtype_given) cfg.dtype = flashattn::DType::f16;
  return true;
}

}  // namespace bench
