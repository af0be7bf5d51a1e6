#include "bench_report.h"

#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <vector>

#include "bench_build_info.h"  // generated at configure time: source dir, build type, flags
#include "bench_git_info.h"    // generated at build time: the commit that was compiled
#include "bench_proc.h"
#include "flashattn/flashattn.h"

namespace bench {
namespace {

std::string first_line_of(const char* command) {
  std::string out;
  if (FILE* p = ::popen(command, "r")) {
    char buf[256];
    if (std::fgets(buf, sizeof buf, p)) out = buf;
    ::pclose(p);
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

bool on_gpu(const Config& cfg) { return cfg.device == flashattn::Device::cuda; }
// GFLOP/s on the CPU, TFLOP/s on the GPU: keeps the table's digits readable.
double flops_unit(const Config& cfg) { return on_gpu(cfg) ? 1e12 : 1e9; }
const char* flops_unit_name(const Config& cfg) { return on_gpu(cfg) ? "TFLOPS" : "GFLOPS"; }

double rate(double flop, double ms, double unit) { return std::isfinite(ms) && ms > 0 ? flop / (ms * 1e-3) / unit : NAN; }

std::string method_label(const Result& r) {
  if (r.method != Method::flash_sparse || r.status != Result::Status::ok) return method_name(r.method);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%s(%.2f)", method_name(r.method), r.density);
  return buf;
}

const char* status_name(Result::Status s) {
  switch (s) {
    case Result::Status::ok: return "ok";
    case Result::Status::skipped: return "skipped";
    case Result::Status::failed: return "failed";
  }
  return "unknown";
}

// ---- a minimal JSON writer: objects and arrays of strings and numbers ----

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (const char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

std::string json_number(double x) {
  if (!std::isfinite(x)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.10g", x);
  return buf;
}

std::string json_numbers(const std::vector<double>& v) {
  std::string out = "[";
  for (std::size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + json_number(v[i]);
  return out + "]";
}

}  // namespace

MachineInfo describe_machine() {
  MachineInfo m;
  const std::time_t now = std::time(nullptr);
  char date[32];
  std::tm utc{};
  gmtime_r(&now, &utc);
  std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", &utc);
  m.date_utc = date;
  m.cpu_model = proc_field("/proc/cpuinfo", "model name");
  m.logical_cpus = static_cast<int>(std::thread::hardware_concurrency());
  const double mem_bytes = proc_bytes("/proc/meminfo", "MemTotal");
  if (mem_bytes > 0) m.memory_gib = mem_bytes / (1024.0 * 1024.0 * 1024.0);
  m.git_commit = FLASHATTN_BENCH_GIT_COMMIT;
  m.git_dirty = FLASHATTN_BENCH_GIT_DIRTY;
  m.git_commit_now = first_line_of("git -C '" FLASHATTN_BENCH_SOURCE_DIR "' rev-parse HEAD 2>/dev/null");
  if (m.git_commit_now.empty()) m.git_commit_now = "unknown";
#if defined(__clang__)
  m.compiler = "clang " __clang_version__;
#elif defined(__GNUC__)
  m.compiler = "g++ " __VERSION__;
#endif
  m.build_type = FLASHATTN_BENCH_BUILD_TYPE;
  m.cxx_flags = FLASHATTN_BENCH_CXX_FLAGS;
  return m;
}

namespace {

// The table's column titles and one row's cells, shared by the console table
// and the Markdown file. A row that did not run has two cells: seqlen and
// method, then its status and reason.
std::vector<std::string> column_titles(const Config& cfg) {
  return {"seqlen", "method", "fwd ms", "bwd ms", "fwd+bwd ms", std::string("fwd ") + flops_unit_name(cfg),
          std::string("bwd ") + flops_unit_name(cfg), "fwd MB", "bwd MB"};
}

std::string status_cell(const Result& r) { return std::string(status_name(r.status)) + ": " + r.message; }

std::vector<std::string> row_cells(const Config& cfg, const Result& r) {
  std::vector<std::string> cells{std::to_string(r.seqlen), method_label(r)};
  if (r.status != Result::Status::ok) return cells;
  auto fmt = [](const char* f, double x) {
    char buf[32];
    std::snprintf(buf, sizeof buf, f, x);
    return std::string(buf);
  };
  auto mb = [](double bytes) { return bytes < 0 ? NAN : bytes / 1e6; };
  const double f = median(r.fwd_ms), b = median(r.bwd_ms), fb = median(r.fwd_bwd_ms);
  for (const double ms : {f, b, fb}) cells.push_back(fmt("%.2f", ms));
  cells.push_back(fmt("%.2f", rate(r.fwd_flop, f, flops_unit(cfg))));
  cells.push_back(fmt("%.2f", rate(r.bwd_flop, b, flops_unit(cfg))));
  cells.push_back(fmt("%.1f", mb(r.fwd_extra_bytes)));
  cells.push_back(fmt("%.1f", mb(r.bwd_extra_bytes)));
  return cells;
}

constexpr int kWidths[] = {7, 18, 10, 10, 11, 11, 11, 9, 9};

void print_cells(const std::vector<std::string>& cells, const std::string& tail) {
  for (std::size_t i = 0; i < cells.size(); ++i) {
    const int w = kWidths[i];
    if (i == 1)
      std::printf("  %-*s", w, cells[i].c_str());  // method: left-aligned
    else
      std::printf("%s%*s", i == 0 ? "" : " ", w, cells[i].c_str());
  }
  if (!tail.empty()) std::printf(" %s", tail.c_str());
  std::printf("\n");
  std::fflush(stdout);
}

std::string describe_problem(const Config& cfg) {
  char batch[64];
  if (cfg.tokens > 0)
    std::snprintf(batch, sizeof batch, "%lld tokens per batch (batch = tokens / seqlen)",
                  static_cast<long long>(cfg.tokens));
  else
    std::snprintf(batch, sizeof batch, "batch %lld", static_cast<long long>(cfg.batch));
  char padding[112] = "";
  if (cfg.key_padding > 0)
    std::snprintf(padding, sizeof padding, ", key padding (lengths in [seqlen - %lld, seqlen], varlen; not sparse rows)",
                  static_cast<long long>(cfg.key_padding));
  char buf[440];
  std::snprintf(buf, sizeof buf, "%s, heads %lld, head_dim %lld, %s, %s, dropout %g%s", batch,
                static_cast<long long>(cfg.heads),
                static_cast<long long>(cfg.head_dim), flashattn::to_string(cfg.dtype),
                cfg.causal ? "causal" : "non-causal", cfg.dropout_p, padding);
  return buf;
}

std::string describe_device(const Config& cfg, const MachineInfo& m) {
  if (on_gpu(cfg)) return "cuda, " + m.gpu;
  char buf[384];
  std::snprintf(buf, sizeof buf, "cpu, %s (%d logical CPUs, %.1f GiB), %d threads", m.cpu_model.c_str(),
                m.logical_cpus, m.memory_gib, cfg.threads);
  return buf;
}

}  // namespace

void print_header(const Config& cfg, const MachineInfo& m) {
  std::printf("flashattn-bench %s, commit %.12s%s, %s build\n", flashattn::version(), m.git_commit.c_str(),
              m.git_dirty ? " (with local changes)" : "", m.build_type.c_str());
  std::printf("device: %s\n", describe_device(cfg, m).c_str());
  std::printf("problem: %s\n", describe_problem(cfg).c_str());
  std::printf("block-sparse: %s pattern, density %g requested (kept share in brackets), %lldx%lld blocks\n",
              pattern_name(cfg.pattern), cfg.density, static_cast<long long>(cfg.block_size),
              static_cast<long long>(cfg.block_size));
  std::printf("times: median of %d runs after a warm-up; MB: peak memory beyond inputs and outputs (1e6 bytes)\n\n",
              cfg.repeats);
  print_cells(column_titles(cfg), "");
}

void print_row(const Config& cfg, const Result& r) {
  print_cells(row_cells(cfg, r), r.status == Result::Status::ok ? "" : status_cell(r));
}

void write_markdown(const std::string& path, const Config& cfg, const MachineInfo& m,
                    const std::vector<Result>& results) {
  std::ostringstream md;
  md << "Device: " << describe_device(cfg, m) << ". Problem: " << describe_problem(cfg)
     << ". Block-sparse: " << pattern_name(cfg.pattern) << " pattern, density " << cfg.density << ", "
     << cfg.block_size << "x" << cfg.block_size << " blocks. Median of " << cfg.repeats
     << " runs; MB = peak memory beyond inputs and outputs. Commit " << m.git_commit.substr(0, 12)
     << (m.git_dirty ? " (with local changes)" : "") << ", " << m.date_utc << ", `" << cfg.command_line << "`.\n\n";
  const std::vector<std::string> titles = column_titles(cfg);
  md << "|";
  for (const auto& t : titles) md << " " << t << " |";
  md << "\n|";
  for (std::size_t i = 0; i < titles.size(); ++i) md << (i < 2 ? " --- |" : " ---: |");
  md << "\n";
  for (const Result& r : results) {
    std::vector<std::string> cells = row_cells(cfg, r);
    if (r.status != Result::Status::ok) {
      cells.push_back(status_cell(r));
      cells.resize(titles.size());
    }
    md << "|";
    for (const auto& c : cells) md << " " << c << " |";
    md << "\n";
  }
  std::ofstream out(path);
  out << md.str();
  if (!out) throw std::runtime_error("--markdown: cannot write '" + path + "'");
}

void write_json(const std::string& path, const Config& cfg, const MachineInfo& m, const std::vector<Result>& results) {
  std::ostringstream js;
  js << "{\n";
  js << "  \"tool\": \"flashattn-bench\",\n";
  js << "  \"version\": " << json_string(flashattn::version()) << ",\n";
  js << "  \"date\": " << json_string(m.date_utc) << ",\n";
  js << "  \"git_commit\": " << json_string(m.git_commit) << ",\n";
  js << "  \"git_dirty\": " << (m.git_dirty ? "true" : "false") << ",\n";
  js << "  \"git_commit_at_run_time\": " << json_string(m.git_commit_now) << ",\n";
  js << "  \"machine\": {\n";
  js << "    \"cpu_model\": " << json_string(m.cpu_model) << ",\n";
  js << "    \"logical_cpus\": " << m.logical_cpus << ",\n";
  js << "    \"memory_gib\": " << json_number(m.memory_gib) << ",\n";
  js << "    \"gpu\": " << json_string(m.gpu) << "\n";
  js << "  },\n";
  js << "  \"build\": {\n";
  js << "    \"compiler\": " << json_string(m.compiler) << ",\n";
  js << "    \"build_type\": " << json_string(m.build_type) << ",\n";
  js << "    \"cxx_flags\": " << json_string(m.cxx_flags) << "\n";
  js << "  },\n";
  js << "  \"config\": {\n";
  js << "    \"command_line\": " << json_string(cfg.command_line) << ",\n";
  js << "    \"device\": " << json_string(flashattn::to_string(cfg.device)) << ",\n";
  js << "    \"threads\": " << cfg.threads << ",\n";
  js << "    \"batch\": " << cfg.batch << ",\n";
  js << "    \"tokens\": " << cfg.tokens << ",\n";
  js << "    \"key_padding\": " << cfg.key_padding << ",\n";
  js << "    \"heads\": " << cfg.heads << ",\n";
  js << "    \"head_dim\": " << cfg.head_dim << ",\n";
  js << "    \"dtype\": " << json_string(flashattn::to_string(cfg.dtype)) << ",\n";
  js << "    \"causal\": " << (cfg.causal ? "true" : "false") << ",\n";
  js << "    \"dropout_p\": " << json_number(cfg.dropout_p) << ",\n";
  js << "    \"deterministic\": " << (cfg.deterministic ? "true" : "false") << ",\n";
  js << "    \"repeats\": " << cfg.repeats << ",\n";
  js << "    \"max_standard_seqlen\": " << cfg.max_standard_seqlen << ",\n";
  js << "    \"sparse_density\": " << json_number(cfg.density) << ",\n";
  js << "    \"sparse_pattern\": " << json_string(pattern_name(cfg.pattern)) << ",\n";
  js << "    \"sparse_block\": " << cfg.block_size << ",\n";
  js << "    \"seed\": " << cfg.seed << "\n";
  js << "  },\n";
  js << "  \"flops_note\": \"forward 4*b*h*d*pairs (pairs = sq*sk, halved when causal; block-sparse: the visible "
        "elements of the kept blocks), backward 2.5x forward\",\n";
  js << "  \"timing_note\": \"median of CUDA-event times after a warm-up; on a GPU each timed call is queued "
        "behind a 1 ms host function, so the events time GPU work, not launch latency\",\n";
  js << "  \"results\": [";
  for (std::size_t i = 0; i < results.size(); ++i) {
    const Result& r = results[i];
    const double f = median(r.fwd_ms), b = median(r.bwd_ms), fb = median(r.fwd_bwd_ms);
    js << (i ? "," : "") << "\n    {";
    js << "\"seqlen\": " << r.seqlen << ", \"batch\": " << r.batch
       << ", \"key_padding\": " << (r.key_padding ? "true" : "false") << ", \"method\": " << json_string(method_name(r.method))
       << ", \"status\": " << json_string(status_name(r.status)) << ", \"message\": " << json_string(r.message);
    if (r.status == Result::Status::ok) {
      js << ",\n     \"fwd_ms\": " << json_number(f) << ", \"bwd_ms\": " << json_number(b)
         << ", \"fwd_bwd_ms\": " << json_number(fb);
      js << ",\n     \"fwd_flop\": " << json_number(r.fwd_flop) << ", \"bwd_flop\": " << json_number(r.bwd_flop);
      js << ",\n     \"fwd_gflops\": " << json_number(rate(r.fwd_flop, f, 1e9))
         << ", \"bwd_gflops\": " << json_number(rate(r.bwd_flop, b, 1e9))
         << ", \"fwd_bwd_gflops\": " << json_number(rate(r.fwd_flop + r.bwd_flop, fb, 1e9));
      js << ",\n     \"fwd_extra_bytes\": " << json_number(r.fwd_extra_bytes)
         << ", \"bwd_extra_bytes\": " << json_number(r.bwd_extra_bytes);
      if (r.method == Method::flash_sparse) js << ", \"kept_block_share\": " << json_number(r.density);
      js << ",\n     \"fwd_ms_samples\": " << json_numbers(r.fwd_ms) << ", \"bwd_ms_samples\": " << json_numbers(r.bwd_ms)
         << ", \"fwd_bwd_ms_samples\": " << json_numbers(r.fwd_bwd_ms);
    }
    js << "}";
  }
  js << "\n  ]\n}\n";
  std::ofstream out(path);
  out << js.str();
  if (!out) throw std::runtime_error("--json: cannot write '" + path + "'");
}

}  // namespace bench
