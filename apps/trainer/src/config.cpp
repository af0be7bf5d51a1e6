#include "config.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <map>
#include <sstream>

namespace fatrain {
namespace {

std::int64_t to_int(const std::string& flag, const std::string& v) {
  char* end = nullptr;
  errno = 0;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || errno) throw ConfigError(flag + ": expected an integer, got '" + v + "'");
  return x;
}
double to_double(const std::string& flag, const std::string& v) {
  char* end = nullptr;
  const double x = std::strtod(v.c_str(), &end);
  if (v.empty() || *end != '\0' || !std::isfinite(x)) throw ConfigError(flag + ": expected a number, got '" + v + "'");
  return x;
}
std::string one_of(const std::string& flag, const std::string& v, std::initializer_list<const char*> allowed) {
  std::string list;
  for (const char* a : allowed) {
    if (v == a) return v;
    list += (list.empty() ? "" : ", ") + std::string(a);
  }
  throw ConfigError(flag + ": expected one of " + list + ", got '" + v + "'");
}

struct Flag {
  const char* name;
  const char* help;
  std::function<void(TrainConfig&, const std::string&)> set;
  bool is_switch = false;  // takes no value
};

const std::vector<Flag>& flags() {
  static const std::vector<Flag> f = {
      {"--model", "preset: gpt2-tiny, gpt2-small (124M), gpt2-medium (355M), encoder-tiny, bert-base, bert-large",
       [](TrainConfig&, const std::string&) {}},
      {"--task", "lm (gpt2), mlm or classify (encoder); default lm / mlm",
       [](TrainConfig& c, const std::string& v) { c.task = one_of("--task", v, {"lm", "mlm", "classify"}); }},
      {"--attention", "flashattn | flashattn-sparse | standard | sdpa-flash | sdpa-cudnn (default flashattn)",
       [](TrainConfig& c, const std::string& v) {
         c.attention = one_of("--attention", v, {"flashattn", "flashattn-sparse", "standard", "sdpa-flash", "sdpa-cudnn"});
       }},
      {"--sparse-pattern", "flashattn-sparse: local_global (default) | butterfly",
       [](TrainConfig& c, const std::string& v) { c.sparse_pattern = one_of("--sparse-pattern", v, {"local_global", "butterfly"}); }},
      {"--sparse-block", "flashattn-sparse: block size, queries and keys (default 128)",
       [](TrainConfig& c, const std::string& v) { c.sparse_block = to_int("--sparse-block", v); }},
      {"--sparse-local", "local_global: key blocks up to the diagonal, counting it (default 3)",
       [](TrainConfig& c, const std::string& v) { c.sparse_local = to_int("--sparse-local", v); }},
      {"--sparse-global", "local_global: leading key blocks every query sees (default 1)",
       [](TrainConfig& c, const std::string& v) { c.sparse_global = to_int("--sparse-global", v); }},
      {"--sparse-factors", "butterfly: factors; key super-blocks at XOR distance 2^i, i < factors (default 3)",
       [](TrainConfig& c, const std::string& v) { c.sparse_factors = to_int("--sparse-factors", v); }},
      {"--sparse-width", "butterfly: blocks per super-block (default 1)",
       [](TrainConfig& c, const std::string& v) { c.sparse_width = to_int("--sparse-width", v); }},
      {"--device", "cpu | cuda (default cpu)",
       [](TrainConfig& c, const std::string& v) { c.device = one_of("--device", v, {"cpu", "cuda"}); }},
      {"--precision", "fp32 | bf16 (autocast, fp32 master weights); default bf16 on cuda, fp32 on cpu",
       [](TrainConfig& c, const std::string& v) { c.precision = one_of("--precision", v, {"fp32", "bf16"}); }},
      {"--data", "folder with train.tok / val.tok from fa-data prepare (scripts/setup-data), or lra:DIR with train.bin / val.bin from fa-lra gen (--task classify)",
       [](TrainConfig& c, const std::string& v) { c.data = v; }},
      {"--layers", "transformer blocks (overrides the preset)",
       [](TrainConfig& c, const std::string& v) { c.model.layers = to_int("--layers", v); }},
      {"--vocab", "model vocabulary (default: the shards'; >= theirs; 50257 = GPT-2's, for speed comparisons)",
       [](TrainConfig& c, const std::string& v) { c.model.vocab = to_int("--vocab", v); }},
      {"--heads", "attention heads (must divide --width)",
       [](TrainConfig& c, const std::string& v) { c.model.heads = to_int("--heads", v); }},
      {"--width", "model width d_model",
       [](TrainConfig& c, const std::string& v) { c.model.width = to_int("--width", v); }},
      {"--mlp-ratio", "hidden width of each block's MLP over --width (default 4)",
       [](TrainConfig& c, const std::string& v) { c.model.mlp_ratio = to_int("--mlp-ratio", v); }},
      {"--positions", "learned position embeddings (max context)",
       [](TrainConfig& c, const std::string& v) { c.model.positions = to_int("--positions", v); }},
      {"--context", "tokens per sequence (default: --positions)",
       [](TrainConfig& c, const std::string& v) { c.context = to_int("--context", v); }},
      {"--dropout", "dropout on embeddings and residual branches",
       [](TrainConfig& c, const std::string& v) { c.model.dropout = to_double("--dropout", v); }},
      {"--attn-dropout", "dropout on the attention probabilities",
       [](TrainConfig& c, const std::string& v) { c.model.attn_dropout = to_double("--attn-dropout", v); }},
      {"--num-classes", "classes of the classification head (default: from the labels)",
       [](TrainConfig& c, const std::string& v) { c.model.num_classes = to_int("--num-classes", v); }},
      {"--pos-2d", "2-D positions for square images: H (side) or auto (fa-lra's image size); learned row + column embeddings, [CLS] its own; sets --positions to H*H+1",
       [](TrainConfig& c, const std::string& v) {
         c.model.pos_2d = v == "auto" ? -1 : to_int("--pos-2d", v);
         if (c.model.pos_2d == 0 || c.model.pos_2d < -1)
           throw ConfigError("--pos-2d: expected an image side >= 1 or auto, got '" + v + "'");
       }},
      {"--pool", "classification pooling: cls (the [CLS] position, default) | mean (over non-padding positions)",
       [](TrainConfig& c, const std::string& v) { c.model.pool = one_of("--pool", v, {"cls", "mean"}); }},
      {"--batch", "sequences per micro-batch per process",
       [](TrainConfig& c, const std::string& v) { c.batch = to_int("--batch", v); }},
      {"--accum", "micro-batches per optimizer step (gradient accumulation)",
       [](TrainConfig& c, const std::string& v) { c.accum = to_int("--accum", v); }},
      {"--steps", "optimizer steps (total, counting resumed ones)",
       [](TrainConfig& c, const std::string& v) { c.steps = to_int("--steps", v); }},
      {"--lr", "peak learning rate", [](TrainConfig& c, const std::string& v) { c.lr = to_double("--lr", v); }},
      {"--lr-schedule", "decay after the warmup, to --min-lr at --steps: cosine (default) | linear",
       [](TrainConfig& c, const std::string& v) { c.lr_schedule = one_of("--lr-schedule", v, {"cosine", "linear"}); }},
      {"--min-lr", "learning rate at the end of the decay (--lr-schedule)",
       [](TrainConfig& c, const std::string& v) { c.min_lr = to_double("--min-lr", v); }},
      {"--warmup", "linear warmup steps", [](TrainConfig& c, const std::string& v) { c.warmup = to_int("--warmup", v); }},
      {"--weight-decay", "AdamW weight decay (matrices only)",
       [](TrainConfig& c, const std::string& v) { c.weight_decay = to_double("--weight-decay", v); }},
      {"--beta1", "AdamW beta1", [](TrainConfig& c, const std::string& v) { c.beta1 = to_double("--beta1", v); }},
      {"--beta2", "AdamW beta2", [](TrainConfig& c, const std::string& v) { c.beta2 = to_double("--beta2", v); }},
      {"--clip", "max global gradient norm (0 = no clipping)",
       [](TrainConfig& c, const std::string& v) { c.clip = to_double("--clip", v); }},
      {"--seed", "seed of parameters, data order, dropout",
       [](TrainConfig& c, const std::string& v) { c.seed = static_cast<std::uint64_t>(to_int("--seed", v)); }},
      {"--eval-every", "evaluate every N steps (0 = only at the end)",
       [](TrainConfig& c, const std::string& v) { c.eval_every = to_int("--eval-every", v); }},
      {"--eval-batches", "held-out batches per evaluation",
       [](TrainConfig& c, const std::string& v) { c.eval_batches = to_int("--eval-batches", v); }},
      {"--log-every", "progress line every N steps",
       [](TrainConfig& c, const std::string& v) { c.log_every = to_int("--log-every", v); }},
      {"--log-json", "write a JSON-lines log to FILE",
       [](TrainConfig& c, const std::string& v) { c.log_json = v; }},
      {"--save", "checkpoint folder (step-N.safetensors and last.safetensors)",
       [](TrainConfig& c, const std::string& v) { c.save_dir = v; }},
      {"--save-every", "checkpoint every N steps (0 = at the end only)",
       [](TrainConfig& c, const std::string& v) { c.save_every = to_int("--save-every", v); }},
      {"--resume", "continue from a checkpoint file",
       [](TrainConfig& c, const std::string& v) { c.resume = v; }},
      {"--init-from", "start from a checkpoint's weights (step 0, fresh optimizer); 2-D position grids are interpolated to --pos-2d",
       [](TrainConfig& c, const std::string& v) { c.init_from = v; }},
      {"--stop-after", "stop after N steps of this invocation (the schedule still spans --steps; resume later)",
       [](TrainConfig& c, const std::string& v) { c.stop_after = to_int("--stop-after", v); }},
      {"--threads", "CPU threads (0 = torch's default)",
       [](TrainConfig& c, const std::string& v) { c.threads = to_int("--threads", v); }},
      {"--peak-tflops", "peak FLOP rate for MFU (default: known GPUs; none on the CPU)",
       [](TrainConfig& c, const std::string& v) { c.peak_tflops = to_double("--peak-tflops", v); }},
      {"--mask-prob", "MLM: fraction of tokens to predict",
       [](TrainConfig& c, const std::string& v) { c.mask_prob = to_double("--mask-prob", v); }},
      {"--min-seq-frac", "encoder: sequence lengths drawn in [frac * context, context] (key padding)",
       [](TrainConfig& c, const std::string& v) { c.min_seq_frac = to_double("--min-seq-frac", v); }},
      {"--deterministic", "deterministic flashattn backward on CUDA (always on the CPU)",
       [](TrainConfig& c, const std::string&) { c.deterministic = true; }, true},
      {"--quiet", "no progress lines", [](TrainConfig& c, const std::string&) { c.quiet = true; }, true},
      {"--time-attention", "log the time in the flashattn operators and its share of the step (flashattn only)",
       [](TrainConfig& c, const std::string&) { c.time_attention = true; }, true},
  };
  return f;
}

std::string esc(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    o += c;
  }
  return o;
}

}  // namespace

std::string TrainConfig::effective_task() const {
  if (!task.empty()) return task;
  return model.arch == "gpt2" ? "lm" : "mlm";
}
std::string TrainConfig::effective_precision() const {
  if (!precision.empty()) return precision;
  return device == "cuda" ? "bf16" : "fp32";
}

std::vector<std::string> preset_names() {
  return {"gpt2-tiny", "gpt2-small", "gpt2-medium", "encoder-tiny", "bert-base", "bert-large"};
}

ModelConfig preset(const std::string& name) {
  ModelConfig m;
  auto set = [&](const char* arch, std::int64_t l, std::int64_t h, std::int64_t w, std::int64_t p, double drop) {
    m.arch = arch;
    m.layers = l, m.heads = h, m.width = w, m.positions = p;
    m.dropout = drop, m.attn_dropout = drop;
  };
  // GPT-2 shapes from Radford et al. (2019) / HuggingFace's configs; the
  // BERT ones from Devlin et al. (2019). Tiny ones are for tests and the CPU.
  if (name == "gpt2-tiny") set("gpt2", 2, 4, 64, 128, 0.0);
  else if (name == "gpt2-small") set("gpt2", 12, 12, 768, 1024, 0.1);
  else if (name == "gpt2-medium") set("gpt2", 24, 16, 1024, 1024, 0.1);
  else if (name == "encoder-tiny") set("encoder", 2, 4, 64, 128, 0.0);
  else if (name == "bert-base") set("encoder", 12, 12, 768, 512, 0.1);
  else if (name == "bert-large") set("encoder", 24, 16, 1024, 512, 0.1);
  else {
    std::string list;
    for (const auto& n : preset_names()) list += (list.empty() ? "" : ", ") + n;
    throw ConfigError("--model: expected one of " + list + ", got '" + name + "'");
  }
  return m;
}

std::string usage() {
  std::ostringstream o;
  o << "usage: fa-train --data DIR [--model PRESET] [--attention flashattn|flashattn-sparse|standard|sdpa-flash|sdpa-cudnn] [flags]\n";
  for (const auto& f : flags()) {
    std::string n = std::string(f.name) + (f.is_switch ? "" : " V");
    o << "  " << n << std::string(n.size() < 20 ? 20 - n.size() : 1, ' ') << f.help << "\n";
  }
  return o.str();
}

TrainConfig parse_args(const std::vector<std::string>& args, bool* help) {
  if (help) *help = false;
  // Split into (flag, value) pairs first, so that --model (the preset) is
  // applied before the flags that override parts of it, wherever it is.
  std::vector<std::pair<std::string, std::string>> kv;
  for (std::size_t i = 0; i < args.size(); ++i) {
    std::string a = args[i], v;
    if (a == "--help" || a == "-h") {
      if (help) *help = true;
      return TrainConfig{};
    }
    if (a.rfind("--", 0) != 0) throw ConfigError(a + ": expected a flag (--name value)");
    const auto eq = a.find('=');
    bool inline_value = eq != std::string::npos;
    if (inline_value) v = a.substr(eq + 1), a = a.substr(0, eq);
    const Flag* f = nullptr;
    for (const auto& x : flags())
      if (a == x.name) f = &x;
    if (!f) throw ConfigError(a + ": unknown flag (see --help)");
    if (!f->is_switch && !inline_value) {
      if (i + 1 >= args.size()) throw ConfigError(a + ": expected a value");
      v = args[++i];
    }
    kv.emplace_back(a, v);
  }
  TrainConfig c;
  for (const auto& [k, v] : kv)
    if (k == "--model") c.preset = v;
  c.model = preset(c.preset);
  for (const auto& [k, v] : kv)
    for (const auto& f : flags())
      if (k == f.name) f.set(c, v);
  if (c.model.pos_2d > 0) c.model.positions = c.model.pos_2d * c.model.pos_2d + 1;
  return c;
}

void validate(const TrainConfig& c) {
  const auto& m = c.model;
  auto positive = [](const char* flag, std::int64_t v) {
    if (v < 1) throw ConfigError(std::string(flag) + ": expected >= 1, got " + std::to_string(v));
  };
  positive("--layers", m.layers);
  positive("--heads", m.heads);
  positive("--width", m.width);
  positive("--mlp-ratio", m.mlp_ratio);
  positive("--positions", m.positions);
  positive("--batch", c.batch);
  positive("--accum", c.accum);
  positive("--steps", c.steps);
  positive("--eval-batches", c.eval_batches);
  positive("--log-every", c.log_every);
  if (m.vocab < 0) throw ConfigError("--vocab: expected >= 1 (or unset: the shards'), got " + std::to_string(m.vocab));
  if (m.width % m.heads != 0)
    throw ConfigError("--heads: " + std::to_string(m.heads) + " heads do not divide --width " +
                      std::to_string(m.width) + " (head_dim = width / heads must be an integer)");
  if (c.context < 0) throw ConfigError("--context: expected >= 1, got " + std::to_string(c.context));
  if (m.pos_2d != 0 && m.arch != "encoder")
    throw ConfigError("--pos-2d: 2-D positions are for the encoder (image classification), not " + m.arch);
  if (m.pos_2d > 0 && m.positions != m.pos_2d * m.pos_2d + 1)
    throw ConfigError("--pos-2d: " + std::to_string(m.pos_2d) + " means " + std::to_string(m.pos_2d * m.pos_2d + 1) +
                      " positions ([CLS] + the image), not " + std::to_string(m.positions));
  if (!c.init_from.empty() && !c.resume.empty())
    throw ConfigError("--init-from: starts a new run from weights; --resume continues one; give one of them");
  if (m.pos_2d >= 0 && c.effective_context() > m.positions)
    throw ConfigError("--context: " + std::to_string(c.effective_context()) + " is longer than --positions " +
                      std::to_string(m.positions) + " (the model has one learned position embedding per position)");
  if (c.effective_context() < 2) throw ConfigError("--context: expected >= 2, got " + std::to_string(c.effective_context()));
  for (auto [flag, p] : {std::pair{"--dropout", m.dropout}, {"--attn-dropout", m.attn_dropout}})
    if (p < 0 || p >= 1) throw ConfigError(std::string(flag) + ": expected a probability in [0, 1), got " + std::to_string(p));
  const std::string task = c.effective_task();
  if (m.arch == "gpt2" && task != "lm")
    throw ConfigError("--task: " + task + " needs an encoder preset (--model encoder-tiny / bert-*); GPT-2 trains lm");
  if (m.arch == "encoder" && task == "lm")
    throw ConfigError("--task: lm needs a GPT-2 preset; the encoder trains mlm or classify");
  if (c.data.empty()) throw ConfigError("--data: required (a folder from fa-data prepare, e.g. scripts/setup-data)");
  if (c.lr <= 0) throw ConfigError("--lr: expected > 0, got " + std::to_string(c.lr));
  if (c.min_lr < 0 || c.min_lr > c.lr) throw ConfigError("--min-lr: expected in [0, --lr], got " + std::to_string(c.min_lr));
  if (c.warmup < 0) throw ConfigError("--warmup: expected >= 0, got " + std::to_string(c.warmup));
  if (c.clip < 0) throw ConfigError("--clip: expected >= 0, got " + std::to_string(c.clip));
  if (c.eval_every < 0) throw ConfigError("--eval-every: expected >= 0, got " + std::to_string(c.eval_every));
  if (c.save_every < 0) throw ConfigError("--save-every: expected >= 0, got " + std::to_string(c.save_every));
  if (c.save_every > 0 && c.save_dir.empty()) throw ConfigError("--save-every: needs --save DIR");
  if (c.stop_after < 0) throw ConfigError("--stop-after: expected >= 0, got " + std::to_string(c.stop_after));
  if (c.threads < 0) throw ConfigError("--threads: expected >= 0, got " + std::to_string(c.threads));
  if (c.sparse_block < 1) throw ConfigError("--sparse-block: expected >= 1, got " + std::to_string(c.sparse_block));
  if (c.sparse_local < 0) throw ConfigError("--sparse-local: expected >= 0, got " + std::to_string(c.sparse_local));
  if (c.sparse_global < 0) throw ConfigError("--sparse-global: expected >= 0, got " + std::to_string(c.sparse_global));
  if (c.sparse_factors < 0 || c.sparse_factors > 30)
    throw ConfigError("--sparse-factors: expected 0 to 30, got " + std::to_string(c.sparse_factors));
  if (c.sparse_width < 1) throw ConfigError("--sparse-width: expected >= 1, got " + std::to_string(c.sparse_width));
  if (c.sparse_pattern == "local_global" && c.sparse_local + c.sparse_global == 0)
    throw ConfigError("--sparse-local: with --sparse-global 0 too, no query would see any key");
  if (c.time_attention && c.attention != "flashattn" && c.attention != "flashattn-sparse")
    throw ConfigError("--time-attention: times the flashattn operators only; got --attention " + c.attention);
  if (c.mask_prob <= 0 || c.mask_prob >= 1)
    throw ConfigError("--mask-prob: expected in (0, 1), got " + std::to_string(c.mask_prob));
  if (c.min_seq_frac <= 0 || c.min_seq_frac > 1)
    throw ConfigError("--min-seq-frac: expected in (0, 1], got " + std::to_string(c.min_seq_frac));
  if (m.pool != "cls" && task != "classify")
    throw ConfigError("--pool: pools for the classification head; needs --task classify, got " + task);
  if (task == "classify" && m.num_classes == 1)
    throw ConfigError("--num-classes: expected >= 2, got 1");
}

double learning_rate(const TrainConfig& c, std::int64_t step) {
  if (step < c.warmup) return c.lr * static_cast<double>(step + 1) / static_cast<double>(c.warmup);
  const double span = static_cast<double>(std::max<std::int64_t>(1, c.steps - c.warmup));
  const double progress = std::min(1.0, static_cast<double>(step - c.warmup) / span);
  const double left = c.lr_schedule == "linear" ? 1.0 - progress : 0.5 * (1.0 + std::cos(M_PI * progress));
  return c.min_lr + left * (c.lr - c.min_lr);
}

std::string to_json(const TrainConfig& c) {
  std::ostringstream o;
  const auto& m = c.model;
  o << "{\"preset\":\"" << esc(c.preset) << "\",\"arch\":\"" << m.arch << "\",\"layers\":" << m.layers
    << ",\"heads\":" << m.heads << ",\"width\":" << m.width << ",\"positions\":" << m.positions
    << ",\"vocab\":" << m.vocab << ",\"mlp_ratio\":" << m.mlp_ratio << ",\"dropout\":" << m.dropout
    << ",\"attn_dropout\":" << m.attn_dropout << ",\"num_classes\":" << m.num_classes << ",\"pos_2d\":" << m.pos_2d << ",\"pool\":\"" << m.pool << "\",\"task\":\""
    << c.effective_task() << "\",\"attention\":\"" << c.attention << "\",\"sparse_pattern\":\"" << c.sparse_pattern
    << "\",\"sparse_block\":" << c.sparse_block << ",\"sparse_local\":" << c.sparse_local
    << ",\"sparse_global\":" << c.sparse_global << ",\"sparse_factors\":" << c.sparse_factors
    << ",\"sparse_width\":" << c.sparse_width << ",\"device\":\"" << c.device
    << "\",\"precision\":\"" << c.effective_precision() << "\",\"data\":\"" << esc(c.data)
    << "\",\"context\":" << c.effective_context() << ",\"batch\":" << c.batch << ",\"accum\":" << c.accum
    << ",\"steps\":" << c.steps << ",\"lr\":" << c.lr << ",\"min_lr\":" << c.min_lr << ",\"warmup\":" << c.warmup
    << ",\"lr_schedule\":\"" << c.lr_schedule << "\""
    << ",\"weight_decay\":" << c.weight_decay << ",\"beta1\":" << c.beta1 << ",\"beta2\":" << c.beta2
    << ",\"clip\":" << c.clip << ",\"seed\":" << c.seed << ",\"mask_prob\":" << c.mask_prob
    << ",\"min_seq_frac\":" << c.min_seq_frac << ",\"deterministic\":" << (c.deterministic ? "true" : "false")
    << ",\"init_from\":\"" << esc(c.init_from) << "\""
    << ",\"time_attention\":" << (c.time_attention ? "true" : "false")
    << "}";
  return o.str();
}

}  // namespace fatrain
