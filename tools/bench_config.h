// What one flashattn-bench run measures: parsed from the command line once,
// then only read by the runners and the report.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "flashattn/flashattn.h"

namespace bench {

// The three rows of every sequence length (the paper's Figure 3 shape plus
// the block-sparse variant of Figure 2, right).
enum class Method { standard, flash, flash_sparse };
const char* method_name(Method m);
// standard -> Algorithm::standard; flash and flash_sparse -> Algorithm::flash.
flashattn::Algorithm algorithm_of(Method m);

// How the block-sparse rows pick their key blocks (see make_workload).
enum class SparsePattern { random, band };
const char* pattern_name(SparsePattern p);

struct Config {
  std::vector<std::int64_t> seqlens{256, 512, 1024, 2048, 4096};
  std::int64_t batch = 1, heads = 8, head_dim = 64;
  // > 0: batch = max(1, tokens / seqlen) at each length (a fixed token
  // budget per batch, the modern benchmark setting); overrides batch.
  std::int64_t tokens = 0;
  // > 0: key padding as in the paper's Appendix E: sequence b keeps a random
  // length in [seqlen - key_padding, seqlen], run as a variable-length batch
  // (the padding is never computed). Not applied to the block-sparse rows.
  std::int64_t key_padding = 0;
  flashattn::DType dtype = flashattn::DType::f32;  // f16 on CUDA unless --dtype says otherwise
  bool causal = false;
  float dropout_p = 0.0f;
  bool deterministic = false;
  int threads = 0;  // parse_args resolves 0 to the number of usable cores
  int repeats = 3;
  flashattn::Device device = flashattn::Device::cpu;
  std::vector<Method> methods{Method::standard, Method::flash, Method::flash_sparse};
  std::int64_t max_standard_seqlen = 4096;
  double density = 0.25;  // fraction of the candidate key blocks kept
  SparsePattern pattern = SparsePattern::random;
  std::int64_t block_size = 128;  // block_q = block_k of the BlockMask
  std::uint64_t seed = 1234;      // inputs, the random pattern and dropout
  std::string json_path;
  std::string markdown_path;
  std::string command_line;
};

// Parses argv into cfg. Throws std::invalid_argument naming the flag and
// giving the expected and the actual value. Returns false when --help was
// printed (the caller exits 0).
bool parse_args(int argc, char** argv, Config& cfg);

// The batch size at one sequence length (see Config::tokens).
std::int64_t batch_at(const Config& cfg, std::int64_t seqlen);

}  // namespace bench
