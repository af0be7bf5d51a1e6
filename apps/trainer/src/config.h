// fa-train's configuration: every flag, the model presets, and the checks
// that reject a bad configuration before any tensor is allocated. Plain C++
// (no torch), so that the CLI front end and the checks compile fast and can
// be unit-tested on their own.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace fatrain {

// A configuration error. The message starts with the flag it is about
// ("--heads: ...") so that the user knows what to change.
struct ConfigError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

struct ModelConfig {
  std::string arch = "gpt2";  // gpt2 (causal decoder) | encoder (bidirectional, BERT-style)
  std::int64_t layers = 2, heads = 4, width = 64;
  std::int64_t positions = 128;  // learned position embeddings
  std::int64_t vocab = 0;        // 0: from the data
  std::int64_t mlp_ratio = 4;
  double dropout = 0.0;          // embeddings and residual branches
  double attn_dropout = 0.0;     // on the attention probabilities
  std::int64_t num_classes = 0;  // encoder classification head (task classify)
  // 2-D positions for square images of side pos_2d (token 1 + r * pos_2d + c
  // is pixel (r, c), token 0 is [CLS]): row + column embeddings instead of
  // the 1-D table. 0 = off; -1 = the side of fa-lra's image (--pos-2d auto).
  std::int64_t pos_2d = 0;
  std::string pool = "cls";      // classification pooling: cls (position 0) | mean (over the tokens)
};

struct TrainConfig {
  std::string preset = "gpt2-tiny";
  ModelConfig model;
  std::string task;           // lm (gpt2) | mlm | classify (encoder); empty: the arch's default
  std::string attention = "flashattn";  // flashattn | flashattn-sparse | standard | sdpa-flash | sdpa-cudnn
  // flashattn-sparse: a fixed block pattern (flashattn::BlockPattern).
  std::string sparse_pattern = "local_global";  // local_global | butterfly
  std::int64_t sparse_block = 128;              // query and key block size
  std::int64_t sparse_local = 3, sparse_global = 1;   // local_global
  std::int64_t sparse_factors = 3, sparse_width = 1;  // butterfly
  std::string device = "cpu";           // cpu | cuda
  std::string precision;                // fp32 | bf16; empty: bf16 on cuda, fp32 on cpu
  std::string data;                     // folder with train.tok / val.tok (fa-data prepare)
  std::int64_t context = 0;             // tokens per sequence; 0: model.positions
  std::int64_t batch = 8;               // sequences per micro-batch per process
  std::int64_t accum = 1;               // micro-batches per optimizer step
  std::int64_t steps = 100;
  double lr = 6e-4, min_lr = 6e-5;
  std::int64_t warmup = 10;
  std::string lr_schedule = "cosine";   // after the warmup, to min_lr at steps: cosine | linear
  double weight_decay = 0.1, beta1 = 0.9, beta2 = 0.95, adam_eps = 1e-8;
  double clip = 1.0;                    // max global grad norm (0 = off)
  std::uint64_t seed = 1234;
  std::int64_t eval_every = 50, eval_batches = 8;
  std::int64_t log_every = 10;
  std::string log_json;                 // JSON lines log ("" = none)
  std::string save_dir;                 // checkpoints go here ("" = none)
  std::int64_t save_every = 0;          // 0: only at the end (when --save is given)
  std::string resume;                   // checkpoint file to continue from
  std::string init_from;                // checkpoint whose weights start a new run (2-D positions interpolated)
  std::int64_t stop_after = 0;          // stop after N steps of this run (chunked runs); 0 = run to --steps
  std::int64_t threads = 0;             // CPU threads (0 = torch's default)
  double peak_tflops = 0;               // for MFU; 0: known GPUs only
  double mask_prob = 0.15;              // MLM
  double min_seq_frac = 0.5;            // encoder: lengths drawn in [frac * context, context]
  bool deterministic = false;           // deterministic flashattn backward on CUDA
  bool quiet = false;                   // no progress lines (tests)
  bool time_attention = false;          // log the flashattn operators' share of the step

  std::string effective_task() const;
  std::string effective_precision() const;
  std::int64_t effective_context() const { return context ? context : model.positions; }
};

// The named model shapes: gpt2-tiny, gpt2-small (124M), gpt2-medium (355M),
// encoder-tiny, bert-base, bert-large. Throws ConfigError for another name.
ModelConfig preset(const std::string& name);
std::vector<std::string> preset_names();

// Parses argv (without argv[0]). --help sets *help and returns the defaults.
TrainConfig parse_args(const std::vector<std::string>& args, bool* help = nullptr);
std::string usage();

// Checks everything that does not need the data or torch; throws
// ConfigError naming the flag.
void validate(const TrainConfig& c);

// The learning rate of optimizer step `step` (0-based): a linear warmup
// over c.warmup steps to c.lr, then c.lr_schedule down to c.min_lr at
// c.steps.
double learning_rate(const TrainConfig& c, std::int64_t step);

// The configuration as one JSON object (log header, checkpoint metadata).
std::string to_json(const TrainConfig& c);

}  // namespace fatrain
