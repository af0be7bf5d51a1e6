// fa-lra: generates the Long Range Arena's ListOps and Pathfinder data in
// the format fa-train reads (docs/lra.md).
//
//   fa-lra gen listops    --split S --seed N [--count N] [--threads T] --out FILE
//   fa-lra gen pathfinder --size 32|64|128|256 --split S --seed N [--count N]
//                         [--threads T] --out FILE [--png DIR --png-count K]
//   fa-lra info FILE
//   fa-lra audit --size N [--count N] [--split S] [--seed N] [--threads T] [--json FILE]
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "listops.h"
#include "lra_format.h"
#include "pathfinder.h"
#include "pathfinder_audit.h"
#include "png.h"

namespace {

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

const char* kUsage =
    "usage: fa-lra gen listops|pathfinder [--size N] [--count N] [--split train|val|test] [--seed S]\n"
    "                  [--threads T] --out FILE [--png DIR] [--png-count K] [--quiet]\n"
    "       fa-lra info FILE\n"
    "       fa-lra audit --size N [--count N] [--split S] [--seed S] [--threads T] [--json FILE]\n"
    "  --size       pathfinder image side: 32, 64, 128 (Path-X) or 256 (Path-256)\n"
    "  --count      examples (default: LRA's split sizes; listops 96000/2000/2000,\n"
    "               pathfinder 160000/20000/20000)\n"
    "  --threads    worker threads (default: all cores); the output does not depend on it\n"
    "  --png DIR    also write the first --png-count (default 16) images as PNG (pathfinder)\n"
    "  audit        how well cues that need no contour tracing (the markers' distance,\n"
    "               ink on the straight line between them and in a band around it)\n"
    "               guess pathfinder labels:\n"
    "               each cue's binned majority rule, fitted on the first half of --count\n"
    "               (default 20000) images and scored on the second; --json also writes them\n";

// A progress bar on stderr, redrawn at most 10 times a second.
class ProgressBar {
 public:
  explicit ProgressBar(bool enabled, std::string what) : enabled_(enabled), what_(std::move(what)) {}
  void update(uint64_t done, uint64_t total) {
    if (!enabled_) return;
    const auto now = std::chrono::steady_clock::now();
    if (done < total && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    const double s = std::chrono::duration<double>(now - start_).count();
    const double rate = s > 0 ? done / s : 0;
    const int width = 30;
    const int filled = total ? static_cast<int>(width * double(done) / total) : width;
    std::string bar(filled, '#');
    bar.resize(width, ' ');
    std::fprintf(stderr, "\r%s [%s] %3d%% %llu/%llu %.0f/s", what_.c_str(), bar.c_str(),
                 total ? static_cast<int>(100.0 * done / total) : 100, static_cast<unsigned long long>(done),
                 static_cast<unsigned long long>(total), rate);
    if (done >= total) std::fprintf(stderr, " %.1fs      \n", s);
    else if (rate > 0) std::fprintf(stderr, " eta %.0fs   ", (total - done) / rate);
    std::fflush(stderr);
  }

 private:
  bool enabled_;
  std::string what_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point last_{};
};

uint64_t parse_u64(const std::string& flag, const std::string& v) {
  try {
    size_t end = 0;
    if (!v.empty() && v[0] == '-') throw std::invalid_argument("negative");
    const unsigned long long x = std::stoull(v, &end, 0);
    if (end != v.size()) throw std::invalid_argument("trailing");
    return x;
  } catch (const std::exception&) {
    throw UsageError(flag + ": expected a non-negative integer, got '" + v + "'");
  }
}

// The value after flag argv[k]: advances k past it, or a usage error.
std::string flag_value(int argc, char** argv, int& k, const std::string& flag) {
  if (k + 1 >= argc) throw UsageError(flag + ": missing value");
  return argv[++k];
}

lra::Split parse_split_flag(const std::string& v) {
  try {
    return lra::parse_split(v);
  } catch (const std::invalid_argument& e) {
    throw UsageError("--split: " + std::string(e.what()));
  }
}

int parse_threads(const std::string& v) {
  const uint64_t t = parse_u64("--threads", v);
  if (t < 1 || t > 1024) throw UsageError("--threads: expected 1 to 1024");
  return static_cast<int>(t);
}

lra::PathfinderParams pathfinder_params_flag(int size) {
  try {
    return lra::pathfinder_params(size);
  } catch (const std::invalid_argument& e) {
    throw UsageError(std::string("--size: ") + e.what());
  }
}

int gen(int argc, char** argv) {
  if (argc < 3) throw UsageError("gen: expected listops or pathfinder");
  lra::Task task;
  try {
    task = lra::parse_task(argv[2]);
  } catch (const std::invalid_argument& e) {
    throw UsageError(std::string("gen: ") + e.what());
  }
  int size = 0;
  int64_t count = -1;
  lra::Split split = lra::Split::train;
  uint64_t seed = 0;
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::string out, png_dir;
  uint64_t png_count = 16;
  bool quiet = false;
  for (int k = 3; k < argc; ++k) {
    const std::string flag = argv[k];
    auto value = [&] { return flag_value(argc, argv, k, flag); };
    if (flag == "--size") size = static_cast<int>(parse_u64(flag, value()));
    else if (flag == "--count") count = static_cast<int64_t>(parse_u64(flag, value()));
    else if (flag == "--split") split = parse_split_flag(value());
    else if (flag == "--seed") seed = parse_u64(flag, value());
    else if (flag == "--threads") threads = parse_threads(value());
    else if (flag == "--out") out = value();
    else if (flag == "--png") png_dir = value();
    else if (flag == "--png-count") png_count = parse_u64(flag, value());
    else if (flag == "--quiet") quiet = true;
    else throw UsageError(flag + ": unknown flag");
  }
  if (out.empty()) throw UsageError("--out: required");
  if (count < 0) {
    const bool train = split == lra::Split::train;
    count = task == lra::Task::listops ? (train ? 96000 : 2000) : (train ? 160000 : 20000);
  }

  lra::Header h;
  h.task = task;
  h.seed = seed;
  h.split = split;
  h.bytes_per_token = 1;
  ProgressBar bar(!quiet, std::string(lra::task_name(task)) + " " + lra::split_name(split));
  auto progress = [&](uint64_t done, uint64_t total) { bar.update(done, total); };

  if (task == lra::Task::listops) {
    if (size != 0) throw UsageError("--size: pathfinder only (listops sequences are padded to 2000)");
    if (!png_dir.empty()) throw UsageError("--png: pathfinder only");
    const lra::ListOpsConfig cfg;
    h.seq_len = cfg.seq_len;
    h.vocab_size = lra::kListOpsVocab;
    h.num_classes = lra::kListOpsClasses;
    h.pad_id = lra::kListOpsPad;
    lra::Writer w(out, h);
    lra::generate_listops(cfg, seed, split, static_cast<uint64_t>(count), threads,
                          [&](int32_t label, uint32_t len, const uint8_t* t) { w.add(label, len, t); }, progress);
    w.close();
  } else {
    const lra::PathfinderParams p = pathfinder_params_flag(size);
    h.seq_len = static_cast<uint32_t>(size * size);
    h.image_size = static_cast<uint32_t>(size);
    h.vocab_size = 256;
    h.num_classes = 2;
    h.pad_id = lra::kNoPad;
    if (!png_dir.empty()) std::filesystem::create_directories(png_dir);
    lra::Writer w(out, h);
    lra::generate_pathfinder(
        p, seed, split, static_cast<uint64_t>(count), threads,
        [&](uint64_t i, const lra::PathfinderImage& img) {
          w.add(img.label, h.seq_len, img.pixels.data());
          if (!png_dir.empty() && i < png_count) {
            const std::string name = std::string("pathfinder") + std::to_string(size) + "-" +
                                     lra::split_name(split) + "-" + std::to_string(i) + "-label" +
                                     std::to_string(img.label) + ".png";
            lra::png_write_gray((std::filesystem::path(png_dir) / name).string(), img.pixels.data(), size, size);
          }
        },
        progress);
    w.close();
  }
  if (!quiet) std::fprintf(stderr, "wrote %s: %lld examples\n", out.c_str(), static_cast<long long>(count));
  return 0;
}

int info(int argc, char** argv) {
  if (argc != 3) throw UsageError("info: expected one FILE");
  lra::Reader r(argv[2]);
  const lra::Header& h = r.header();
  std::printf("task %s split %s seed %llu examples %llu seq_len %u image_size %u vocab %u classes %u "
              "bytes_per_token %u pad %d\n",
              lra::task_name(h.task), lra::split_name(h.split), static_cast<unsigned long long>(h.seed),
              static_cast<unsigned long long>(h.count), h.seq_len, h.image_size, h.vocab_size, h.num_classes,
              h.bytes_per_token, h.pad_id == lra::kNoPad ? -1 : static_cast<int>(h.pad_id));
  std::vector<uint64_t> per_class(h.num_classes, 0);
  std::vector<uint16_t> tokens;
  int32_t label;
  uint32_t length;
  for (uint64_t i = 0; i < h.count; ++i) {
    r.read(i, tokens, label, length);
    ++per_class[label];
  }
  std::printf("labels");
  for (uint32_t c = 0; c < h.num_classes; ++c) std::printf(" %u:%llu", c, static_cast<unsigned long long>(per_class[c]));
  std::printf("\n");
  return 0;
}

int audit(int argc, char** argv) {
  int size = 0;
  uint64_t count = 20000, seed = 0;
  lra::Split split = lra::Split::val;
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::string json;
  for (int k = 2; k < argc; ++k) {
    const std::string flag = argv[k];
    auto value = [&] { return flag_value(argc, argv, k, flag); };
    if (flag == "--size") size = static_cast<int>(parse_u64(flag, value()));
    else if (flag == "--count") count = parse_u64(flag, value());
    else if (flag == "--seed") seed = parse_u64(flag, value());
    else if (flag == "--split") split = parse_split_flag(value());
    else if (flag == "--threads") threads = parse_threads(value());
    else if (flag == "--json") json = value();
    else throw UsageError(flag + ": unknown flag");
  }
  if (count < 2) throw UsageError("--count: expected at least 2 (half fits the rules, half scores them)");
  const lra::PathfinderParams p = pathfinder_params_flag(size);
  const lra::PathfinderAudit a = lra::audit_pathfinder(p, seed, split, count, threads);
  const auto& scores = a.cues;
  std::printf("pathfinder %d %s seed %llu: rules fitted on %llu images, scored on %llu (chance 0.5, one standard "
              "error %.4f)\n",
              size, lra::split_name(split), static_cast<unsigned long long>(seed),
              static_cast<unsigned long long>(count / 2), static_cast<unsigned long long>(scores[0].scored),
              0.5 / std::sqrt(double(scores[0].scored)));
  for (const auto& s : scores) std::printf("  %-26s %.4f\n", s.name.c_str(), s.accuracy);
  std::printf("  contours an image %.2f (targets included), ink %.1f%% of the pixels\n", a.contours, 100 * a.ink);
  if (!json.empty()) {
    // For benchmarks/lra_table.py: the rules' scores beside a model's.
    std::FILE* f = std::fopen(json.c_str(), "w");
    if (f == nullptr) throw UsageError("--json: cannot write " + json);
    std::fprintf(f, "{\"task\": \"pathfinder\", \"size\": %d, \"split\": \"%s\", \"seed\": %llu, \"count\": %llu, "
                 "\"scored\": %llu, \"cues\": {",
                 size, lra::split_name(split), static_cast<unsigned long long>(seed),
                 static_cast<unsigned long long>(count), static_cast<unsigned long long>(scores[0].scored));
    for (size_t c = 0; c < scores.size(); ++c)
      std::fprintf(f, "%s\"%s\": %.4f", c ? ", " : "", scores[c].name.c_str(), scores[c].accuracy);
    std::fprintf(f, "}, \"contours\": %.3f, \"ink\": %.4f}\n", a.contours, a.ink);
    if (std::fclose(f) != 0) throw UsageError("--json: cannot write " + json);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc < 2) throw UsageError("expected a command: gen, info or audit");
    const std::string cmd = argv[1];
    if (cmd == "gen") return gen(argc, argv);
    if (cmd == "info") return info(argc, argv);
    if (cmd == "audit") return audit(argc, argv);
    if (cmd == "-h" || cmd == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    throw UsageError("unknown command '" + cmd + "'");
  } catch (const UsageError& e) {
    std::fprintf(stderr, "fa-lra: %s\n%s", e.what(), kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fa-lra: %s\n", e.what());
    return 1;
  }
}
