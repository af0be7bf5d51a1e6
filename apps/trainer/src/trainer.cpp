#include "trainer.h"

#include <ATen/autocast_mode.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <random>
#include <sstream>

#include "lra_data.h"
#include "model.h"
#include "safetensors.h"
#include "shards.h"

#ifdef FATRAIN_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#endif
#ifdef FATRAIN_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif

namespace fatrain {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// ------------------------------------------------------------------ data ---

struct Data {
  Shard train, val;
};

Data load_data(const TrainConfig& c) {
  if (is_lra_data(c.data)) {
    // fa-lra's files: classification data only (no MLM or LM stream).
    const std::string dir = c.data.substr(std::string(kLraPrefix).size());
    if (c.effective_task() != "classify")
      throw ConfigError("--data: " + c.data + " is fa-lra classification data; it trains --task classify, not " +
                        c.effective_task());
    for (const char* f : {"train.bin", "val.bin"})
      if (!fs::exists(fs::path(dir) / f))
        throw ConfigError("--data: '" + dir + "' has no " + f + " (make it with fa-lra gen, docs/lra.md)");
    Data d;
    try {
      d.train = lra_shard((fs::path(dir) / "train.bin").string());
      d.val = lra_shard((fs::path(dir) / "val.bin").string());
    } catch (const std::runtime_error& e) {
      throw ConfigError(std::string("--data: ") + e.what());
    }
    return d;
  }
  if (!fs::is_directory(c.data))
    throw ConfigError("--data: '" + c.data + "' is not a folder (make one with fa-data prepare or scripts/setup-data)");
  for (const char* f : {"train.tok", "val.tok"})
    if (!fs::exists(fs::path(c.data) / f))
      throw ConfigError("--data: '" + c.data + "' has no " + f + " (make it with fa-data prepare or scripts/setup-data)");
  Data d;
  try {
    d.train = read_shard((fs::path(c.data) / "train.tok").string());
    d.val = read_shard((fs::path(c.data) / "val.tok").string());
  } catch (const std::runtime_error& e) {
    throw ConfigError(std::string("--data: ") + e.what());
  }
  return d;
}

// A micro-batch. For lm: input/target [B, S]. For mlm: input [B, S] with
// padding, labels [B, S] (-100 = not predicted), lengths. For classify:
// input [B, S] with padding, labels [B], lengths.
struct Batch {
  torch::Tensor input, labels;
  std::vector<std::int32_t> lengths;  // empty for lm
  std::int64_t tokens = 0;            // real tokens (tokens/s counts these)
};

// splitmix64: independent streams from (seed, step, micro, rank) without
// any state to save, so the data order after a resume is that of an
// uninterrupted run.
std::uint64_t mix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
std::uint64_t stream_seed(std::uint64_t seed, std::uint64_t a, std::uint64_t b, std::uint64_t c) {
  return mix(mix(mix(mix(seed) ^ a) ^ b) ^ c);
}

class Batcher {
 public:
  Batcher(const TrainConfig& c, const Shard& s, std::string task) : c_(c), s_(s), task_(std::move(task)) {
    S_ = c.effective_context();
  }

  // Training micro-batch `micro` of optimizer step `step` on `rank`.
  Batch train(std::int64_t step, std::int64_t micro, std::int64_t rank) const {
    std::mt19937_64 rng(stream_seed(c_.seed, step, micro, rank));
    return make(rng, -1);
  }
  // Held-out batch j: a fixed function of j (not of the seed), so that
  // evaluations are comparable across runs and attention switches.
  Batch eval(std::int64_t j) const {
    std::mt19937_64 rng(stream_seed(0x5eed, j, 0, 0));
    return make(rng, j);
  }

 private:
  Batch make(std::mt19937_64& rng, std::int64_t eval_index) const {
    const std::int64_t B = c_.batch;
    Batch b;
    std::vector<std::int64_t> in(B * S_), lab;
    const auto& tok = s_.tokens;
    if (task_ == "lm") {
      lab.resize(B * S_);
      const std::uint64_t span = tok.size() - S_ - 1;
      for (std::int64_t i = 0; i < B; ++i) {
        // Eval: consecutive windows through the held-out stream.
        const std::uint64_t start =
            eval_index >= 0 ? static_cast<std::uint64_t>((eval_index * B + i) * S_) % span : rng() % span;
        for (std::int64_t t = 0; t < S_; ++t) {
          in[i * S_ + t] = tok[start + t];
          lab[i * S_ + t] = tok[start + t + 1];
        }
      }
      b.input = torch::tensor(in, torch::kLong).view({B, S_});
      b.labels = torch::tensor(lab, torch::kLong).view({B, S_});
      b.tokens = B * S_;
      return b;
    }
    const auto pad = s_.ids.pad, bos = s_.ids.bos;
    std::fill(in.begin(), in.end(), pad);
    if (task_ == "mlm") {
      lab.assign(B * S_, -100);
      const std::int64_t min_len = std::max<std::int64_t>(2, static_cast<std::int64_t>(std::ceil(c_.min_seq_frac * S_)));
      const std::uint64_t span = tok.size() - S_;
      std::uniform_real_distribution<double> u(0.0, 1.0);
      for (std::int64_t i = 0; i < B; ++i) {
        const std::int64_t len = min_len + static_cast<std::int64_t>(rng() % (S_ - min_len + 1));
        const std::uint64_t start = rng() % span;
        in[i * S_] = bos;  // [CLS]
        for (std::int64_t t = 1; t < len; ++t) in[i * S_ + t] = tok[start + t - 1];
        // BERT's recipe: mask_prob of the tokens are predicted; of those 80%
        // become [MASK], 10% a random token, 10% stay. At least one per row.
        bool any = false;
        for (std::int64_t t = 1; t < len; ++t) {
          if (u(rng) >= c_.mask_prob && !(t == len - 1 && !any)) continue;
          any = true;
          lab[i * S_ + t] = in[i * S_ + t];
          const double r = u(rng);
          if (r < 0.8) in[i * S_ + t] = s_.ids.mask;
          else if (r < 0.9) in[i * S_ + t] = 5 + static_cast<std::int64_t>(rng() % (s_.vocab_size - 5));
        }
        b.lengths.push_back(static_cast<std::int32_t>(len));
        b.tokens += len;
      }
      b.input = torch::tensor(in, torch::kLong).view({B, S_});
      b.labels = torch::tensor(lab, torch::kLong).view({B, S_});
      return b;
    }
    // classify: one document per row, [CLS] + its tokens, truncated.
    for (std::int64_t i = 0; i < B; ++i) {
      const std::size_t d = eval_index >= 0 ? static_cast<std::size_t>(eval_index * B + i) % s_.num_docs()
                                            : rng() % s_.num_docs();
      auto [db, de] = s_.doc(d);
      const std::int64_t len = std::min<std::int64_t>(S_, 1 + static_cast<std::int64_t>(de - db));
      in[i * S_] = bos;
      for (std::int64_t t = 1; t < len; ++t) in[i * S_ + t] = tok[db + t - 1];
      lab.push_back(s_.labels[d]);
      b.lengths.push_back(static_cast<std::int32_t>(len));
      b.tokens += len;
    }
    b.input = torch::tensor(in, torch::kLong).view({B, S_});
    b.labels = torch::tensor(lab, torch::kLong);
    return b;
  }

  const TrainConfig& c_;
  const Shard& s_;
  std::string task_;
  std::int64_t S_;
};

// --------------------------------------------------------------- autocast ---

// bf16 autocast for the forward and the loss; parameters (and so the
// optimizer) stay float32: the "fp32 master weights" of mixed precision.
struct AutocastScope {
  AutocastScope(bool on, c10::DeviceType dev) : on_(on), dev_(dev) {
    if (!on_) return;
    prev_ = at::autocast::is_autocast_enabled(dev_);
    prev_dtype_ = at::autocast::get_autocast_dtype(dev_);
    at::autocast::set_autocast_enabled(dev_, true);
    at::autocast::set_autocast_dtype(dev_, at::kBFloat16);
    at::autocast::increment_nesting();
  }
  ~AutocastScope() {
    if (!on_) return;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(dev_, prev_);
    at::autocast::set_autocast_dtype(dev_, prev_dtype_);
  }
  bool on_, prev_ = false;
  c10::DeviceType dev_;
  at::ScalarType prev_dtype_ = at::kBFloat16;
};

// ------------------------------------------------------------ model glue ---

// The loss of one micro-batch (mean over its predicted tokens / rows), and
// for classify the number of correct rows.
std::pair<torch::Tensor, torch::Tensor> loss_of(Transformer& model, const Batch& b, const std::string& task,
                                                const torch::Device& dev) {
  auto input = b.input.to(dev);
  auto labels = b.labels.to(dev);
  Padding pad;
  const Padding* padp = nullptr;
  if (!b.lengths.empty()) {
    pad = make_padding(b.lengths, input.size(1), dev);
    padp = &pad;
  }
  auto h = model->hidden(input, padp);
  if (task == "lm") {
    auto logits = model->lm_logits(h);
    return {torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}).to(torch::kFloat),
                                                  labels.reshape({-1})),
            torch::Tensor()};
  }
  if (task == "mlm") {
    // The head runs on the predicted positions only (BERT's trick): the
    // vocabulary projection of every position would dominate the step.
    auto flat = labels.reshape({-1});
    auto sel = (flat != -100).nonzero().squeeze(1);
    auto logits = model->mlm_logits(h.reshape({-1, h.size(-1)}).index_select(0, sel));
    return {torch::nn::functional::cross_entropy(logits.to(torch::kFloat), flat.index_select(0, sel)),
            torch::Tensor()};
  }
  auto logits = model->cls_logits(h, padp).to(torch::kFloat);
  auto correct = (logits.argmax(-1) == labels).sum();
  return {torch::nn::functional::cross_entropy(logits, labels), correct};
}

// 6 N per token for the matmuls of forward + backward (N: parameters except
// the position embeddings; wte counts once, as the tied output projection),
// plus 12 L W S for the attention scores and PV (PaLM, Chowdhery et al.
// 2022, appendix B; counted non-causal, like nanoGPT's estimate), times the
// share of blocks a block-sparse pattern keeps (attention_density).
double flops_per_token(Transformer& m, std::int64_t S, double attention_share) {
  const double n = static_cast<double>(m->num_params(false) - m->num_position_params());
  return 6.0 * n + 12.0 * m->cfg.layers * m->cfg.width * S * attention_share;
}

double peak_flops(const TrainConfig& c, const torch::Device& dev, std::string* name) {
  if (c.peak_tflops > 0) return c.peak_tflops * 1e12;
#ifdef FATRAIN_CUDA
  if (dev.is_cuda()) {
    const std::string n = at::cuda::getDeviceProperties(dev.index())->name;
    *name = n;
    const bool bf16 = c.effective_precision() == "bf16";
    // Dense tensor-core peaks from NVIDIA's data sheets (SXM parts); fp32
    // runs are measured against TF32 (PyTorch's default matmul precision
    // may not use it: MFU is then a lower bound).
    if (n.find("H100") != std::string::npos || n.find("H200") != std::string::npos) return bf16 ? 989e12 : 494e12;
    if (n.find("A100") != std::string::npos) return bf16 ? 312e12 : 156e12;
  }
#endif
  (void)dev;
  (void)name;
  return 0;  // unknown: MFU is not reported
}

std::int64_t peak_memory_bytes(const torch::Device& dev) {
#ifdef FATRAIN_CUDA
  if (dev.is_cuda()) {
    auto st = c10::cuda::CUDACachingAllocator::getDeviceStats(dev.index());
    return st.allocated_bytes[static_cast<std::size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak;
  }
#endif
  (void)dev;
  // CPU: the process's peak resident set (VmHWM), which includes the data
  // and libtorch itself: an upper bound on what training needs.
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  return -1;
}

// ------------------------------------------------------------ checkpoint ---

std::string st_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "F32";
    case at::kDouble: return "F64";
    case at::kBFloat16: return "BF16";
    case at::kHalf: return "F16";
    case at::kLong: return "I64";
    case at::kInt: return "I32";
    case at::kByte: return "U8";
    default: throw std::runtime_error("checkpoint: no safetensors dtype for " + std::string(c10::toString(t)));
  }
}

std::string model_signature(const ModelConfig& m) {
  std::ostringstream o;
  o << "arch=" << m.arch << " layers=" << m.layers << " heads=" << m.heads << " width=" << m.width
    << " positions=" << m.positions << " vocab=" << m.vocab << " mlp_ratio=" << m.mlp_ratio
    << " num_classes=" << m.num_classes;
  // Only what differs from the defaults, so that older checkpoints still resume.
  if (m.pos_2d != 0) o << " pos_2d=" << m.pos_2d;
  if (m.pool != "cls") o << " pool=" << m.pool;
  return o.str();
}

using AdamWState = torch::optim::AdamWParamState;

// Everything a resumed run needs to continue bit-identically: parameters,
// AdamW moments and step counts, the step, and the generators' states (the
// data order is a function of the step, see Batcher).
void save_checkpoint(const std::string& path, Transformer& model, torch::optim::AdamW& opt, std::int64_t step,
                     const TrainConfig& cfg, const torch::Device& dev) {
  std::vector<torch::Tensor> keep;  // CPU copies that back the views
  std::vector<safetensors::TensorView> views;
  auto add = [&](const std::string& name, torch::Tensor t) {
    t = t.detach().to(torch::kCPU).contiguous();
    keep.push_back(t);
    safetensors::TensorView v;
    v.name = name;
    v.dtype = st_dtype(t.scalar_type());
    v.shape.assign(t.sizes().begin(), t.sizes().end());
    v.data = t.data_ptr();
    v.nbytes = t.numel() * t.element_size();
    views.push_back(v);
  };
  auto& state = opt.state();
  for (const auto& p : model->named_parameters()) {
    add("model." + p.key(), p.value());
    auto it = state.find(p.value().unsafeGetTensorImpl());
    if (it != state.end()) {
      auto& s = static_cast<AdamWState&>(*it->second);
      add("optim." + p.key() + ".exp_avg", s.exp_avg());
      add("optim." + p.key() + ".exp_avg_sq", s.exp_avg_sq());
      add("optim." + p.key() + ".step", torch::tensor({s.step()}, torch::kLong));
    }
  }
  add("rng.cpu", at::detail::getDefaultCPUGenerator().get_state());
#ifdef FATRAIN_CUDA
  if (dev.is_cuda()) add("rng.cuda", at::cuda::detail::getDefaultCUDAGenerator(dev.index()).get_state());
#endif
  (void)dev;
  safetensors::write(path, views,
                     {{"format", "fa-train-checkpoint-1"},
                      {"step", std::to_string(step)},
                      {"model", model_signature(model->cfg)},
                      {"config", to_json(cfg)}});
}

std::int64_t load_checkpoint(const std::string& path, Transformer& model, torch::optim::AdamW& opt,
                             const torch::Device& dev) {
  safetensors::File f;
  try {
    f = safetensors::read(path);
  } catch (const std::runtime_error& e) {
    throw ConfigError(std::string("--resume: ") + e.what());
  }
  auto meta = [&](const char* k) {
    auto it = f.metadata.find(k);
    if (it == f.metadata.end()) throw ConfigError("--resume: " + path + " is not an fa-train checkpoint (no " + k + ")");
    return it->second;
  };
  if (meta("format") != "fa-train-checkpoint-1") throw ConfigError("--resume: unknown format " + meta("format"));
  if (meta("model") != model_signature(model->cfg))
    throw ConfigError("--resume: the checkpoint's model (" + meta("model") + ") differs from the flags' (" +
                      model_signature(model->cfg) + ")");
  auto tensor = [&](const std::string& name, const torch::Tensor& like) {
    const auto& e = f.at(name);
    if (e.dtype != st_dtype(like.scalar_type()) || e.shape != like.sizes().vec())
      throw ConfigError("--resume: tensor " + name + " has the wrong dtype or shape");
    auto t = torch::empty(like.sizes(), like.options().device(torch::kCPU));
    std::memcpy(t.data_ptr(), f.data.data() + e.begin, e.end - e.begin);
    return t;
  };
  torch::NoGradGuard ng;
  auto& state = opt.state();
  for (const auto& p : model->named_parameters()) {
    auto param = p.value();
    param.copy_(tensor("model." + p.key(), param));
    const std::string base = "optim." + p.key();
    if (f.tensors.count(base + ".exp_avg")) {
      auto s = std::make_unique<AdamWState>();
      s->exp_avg(tensor(base + ".exp_avg", param).to(dev));
      s->exp_avg_sq(tensor(base + ".exp_avg_sq", param).to(dev));
      s->step(tensor(base + ".step", torch::zeros({1}, torch::kLong)).item<int64_t>());
      state[param.unsafeGetTensorImpl()] = std::move(s);
    }
  }
  at::Generator cpu_gen = at::detail::getDefaultCPUGenerator();  // a handle to the global generator
  cpu_gen.set_state(tensor("rng.cpu", cpu_gen.get_state()));
#ifdef FATRAIN_CUDA
  if (dev.is_cuda() && f.tensors.count("rng.cuda")) {
    auto g = at::cuda::detail::getDefaultCUDAGenerator(dev.index());
    g.set_state(tensor("rng.cuda", g.get_state()));
  }
#endif
  return std::stoll(meta("step"));
}

// ----------------------------------------------------------- distributed ---

// Data parallelism: one process per GPU, gradients averaged with one
// all-reduce per optimizer step through libtorch's c10d NCCL process group
// (ranks from torchrun-style RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT).
// The wheel exports c10d (ProcessGroupNCCL, ProcessGroupGloo, TCPStore) but
// ships no Gloo headers, so there is no CPU group: multi-process runs need a
// CUDA build (FATRAIN_NCCL).
struct DataParallel {
  std::int64_t rank = 0, world = 1;
#ifdef FATRAIN_NCCL
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupNCCL> pg;
#endif
  void init(const TrainConfig& c) {
    const char* ws = std::getenv("WORLD_SIZE");
    world = ws ? std::atoll(ws) : 1;
    const char* r = std::getenv("RANK");
    rank = r ? std::atoll(r) : 0;
    if (world <= 1) return;
#ifdef FATRAIN_NCCL
    if (c.device != "cuda") throw ConfigError("--device: WORLD_SIZE > 1 (data parallel) needs --device cuda (NCCL)");
    c10d::TCPStoreOptions o;
    const char* port = std::getenv("MASTER_PORT");
    o.port = static_cast<std::uint16_t>(port ? std::atoi(port) : 29500);
    o.isServer = rank == 0;
    o.numWorkers = static_cast<int>(world);
    const char* addr = std::getenv("MASTER_ADDR");
    store = c10::make_intrusive<c10d::TCPStore>(addr ? addr : "127.0.0.1", o);
    pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, static_cast<int>(rank), static_cast<int>(world));
#else
    (void)c;
    throw ConfigError("WORLD_SIZE: " + std::to_string(world) +
                      " processes asked for, but this build has no NCCL process group (CPU build; the torch "
                      "wheel has no Gloo headers for a CPU group). Build with CUDA for data parallelism.");
#endif
  }
  // Averages the gradients over the processes (a no-op for one process).
  void average_gradients(const std::vector<torch::Tensor>& params) {
    if (world <= 1) return;
#ifdef FATRAIN_NCCL
    std::vector<torch::Tensor> grads;
    for (const auto& p : params) grads.push_back(p.grad().view(-1));
    std::vector<torch::Tensor> flat{torch::cat(grads)};
    pg->allreduce(flat)->wait();
    flat[0].div_(static_cast<double>(world));
    std::int64_t off = 0;
    for (const auto& p : params) {
      p.grad().view(-1).copy_(flat[0].narrow(0, off, p.numel()));
      off += p.numel();
    }
#else
    (void)params;
#endif
  }
};

// ------------------------------------------------------------------- log ---

std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

struct JsonLog {
  std::ofstream f;
  void open(const std::string& path) {
    if (path.empty()) return;
    f.open(path, std::ios::app);
    if (!f) throw ConfigError("--log-json: cannot write '" + path + "'");
  }
  void line(const std::string& s) {
    if (f.is_open()) f << s << "\n" << std::flush;
  }
};

}  // namespace

TrainResult train(const TrainConfig& cfg_in) {
  TrainConfig cfg = cfg_in;
  validate(cfg);
  const std::string task = cfg.effective_task();
  const AttnKind kind = parse_attention(cfg.attention);
  if (cfg.device == "cuda" && !torch::cuda::is_available())
    throw ConfigError("--device: cuda asked for, but torch sees no CUDA device");
#ifndef FATRAIN_CUDA
  if (cfg.device == "cuda")
    throw ConfigError("--device: this fa-train was built without CUDA (CPU torch or no nvcc); rebuild with CUDA");
#endif
  Data data = load_data(cfg);
  if (cfg.model.pos_2d != 0) {
    // The image's side: fa-lra's header says it; a given side must agree.
    std::uint32_t side = 0;
    if (is_lra_data(cfg.data)) {
      const std::string dir = cfg.data.substr(std::string(kLraPrefix).size());
      side = lra_image_size((fs::path(dir) / "train.bin").string());
    }
    if (cfg.model.pos_2d < 0) {
      if (side == 0) throw ConfigError("--pos-2d: auto needs fa-lra image data (--data lra:DIR of Pathfinder)");
      cfg.model.pos_2d = side;
      cfg.model.positions = cfg.model.pos_2d * cfg.model.pos_2d + 1;
      validate(cfg);
    } else if (side != 0 && side != cfg.model.pos_2d) {
      throw ConfigError("--pos-2d: " + std::to_string(cfg.model.pos_2d) + " but the images of --data are " +
                        std::to_string(side) + " x " + std::to_string(side));
    }
  }
  const std::int64_t S = cfg.effective_context();
  if (cfg.model.vocab == 0) cfg.model.vocab = static_cast<std::int64_t>(data.train.vocab_size);
  if (cfg.model.vocab < static_cast<std::int64_t>(data.train.vocab_size))
    throw ConfigError("--vocab: " + std::to_string(cfg.model.vocab) + " is smaller than the vocabulary of --data's shards (" +
                      std::to_string(data.train.vocab_size) + ")");
  for (const Shard* s : {&data.train, &data.val}) {
    if ((task == "lm" || task == "mlm") && s->tokens.size() < static_cast<std::size_t>(S + 2))
      throw ConfigError("--context: " + std::to_string(S) + " tokens need shards longer than " +
                        std::to_string(s->tokens.size()) + " tokens (--data " + cfg.data + ")");
    if (task != "lm" && (s->ids.pad < 0 || s->ids.bos < 0 || s->ids.mask < 0))
      throw ConfigError("--data: the encoder needs pad, bos ([CLS]) and [MASK] ids in the shards");
    if (task == "classify" && s->labels.empty())
      throw ConfigError("--task: classify needs labels in the shards (fa-data prepare --labels FILE)");
  }
  if (task == "classify" && cfg.model.num_classes == 0) {
    std::int32_t mx = 0;
    for (auto l : data.train.labels) mx = std::max(mx, l);
    cfg.model.num_classes = mx + 1;
  }
  if (task == "classify") {
    for (const Shard* s : {&data.train, &data.val})
      for (auto l : s->labels)
        if (l < 0 || l >= cfg.model.num_classes)
          throw ConfigError("--num-classes: label " + std::to_string(l) + " outside [0, " +
                            std::to_string(cfg.model.num_classes) + ")");
  }

  DataParallel dp;
  dp.init(cfg);
  const bool lead = dp.rank == 0;
  torch::Device dev = cfg.device == "cuda" ? torch::Device(torch::kCUDA, static_cast<int>(dp.rank)) : torch::kCPU;
#ifdef FATRAIN_CUDA
  if (dev.is_cuda()) c10::cuda::set_device(dev.index());
#endif
  if (cfg.threads > 0) torch::set_num_threads(static_cast<int>(cfg.threads));
  const bool bf16 = cfg.effective_precision() == "bf16";
  TrainResult result;
  result.attention_note = configure_sdpa(kind, dev);
  if (kind == AttnKind::flashattn) result.attention_note = "flashattn (this repository's kernels, " + dev.str() + ")";
  if (kind == AttnKind::flashattn_sparse) {
    std::ostringstream n;
    n << "flashattn block-sparse (" << cfg.sparse_pattern << ", block " << cfg.sparse_block;
    if (cfg.sparse_pattern == "butterfly") n << ", factors " << cfg.sparse_factors << ", width " << cfg.sparse_width;
    else n << ", local " << cfg.sparse_local << ", global " << cfg.sparse_global;
    n << ", " << dev.str() << ")";
    result.attention_note = n.str();
  }
  if (kind == AttnKind::standard) result.attention_note = "standard (materialised QK^T, softmax, dropout, PV)";

  // Deterministic seeding: parameters from torch's generator, the data from
  // (seed, step) streams, dropout from torch's generator (flashattn draws
  // its Philox (seed, offset) there too).
  torch::manual_seed(cfg.seed);
  AttnOptions ao;
  ao.kind = kind;
  ao.causal = cfg.model.arch == "gpt2";
  ao.dropout_p = cfg.model.attn_dropout;
  ao.deterministic = cfg.deterministic;
  ao.sparse = {cfg.sparse_pattern, cfg.sparse_block, cfg.sparse_local, cfg.sparse_global, cfg.sparse_factors,
               cfg.sparse_width};
  Transformer model(cfg.model, ao);
  model->to(dev);

  std::vector<torch::Tensor> decay, no_decay, params;
  for (const auto& p : model->named_parameters()) {
    (p.value().dim() >= 2 ? decay : no_decay).push_back(p.value());
    params.push_back(p.value());
  }
  auto opts = torch::optim::AdamWOptions(cfg.lr).betas({cfg.beta1, cfg.beta2}).eps(cfg.adam_eps);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(
                                 torch::optim::AdamWOptions(opts).weight_decay(cfg.weight_decay)));
  groups.emplace_back(no_decay,
                      std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(opts).weight_decay(0.0)));
  torch::optim::AdamW opt(std::move(groups), opts);

  std::int64_t step = 0;
  if (!cfg.resume.empty()) step = load_checkpoint(cfg.resume, model, opt, dev);
  if (!cfg.init_from.empty()) init_from_checkpoint(cfg.init_from, model);
  result.first_step = step;

  Batcher train_batches(cfg, data.train, task), val_batches(cfg, data.val, task);
  JsonLog log;
  if (lead) log.open(cfg.log_json);
  std::string gpu_name;
  const double peak = peak_flops(cfg, dev, &gpu_name);
  const double fpt = flops_per_token(model, S, attention_density(ao, S));
  if (lead) {
    std::ostringstream h;
    h << "{\"event\":\"config\",\"config\":" << to_json(cfg) << ",\"params\":" << model->num_params(false)
      << ",\"params_non_embedding\":" << model->num_params(true) << ",\"device\":\"" << dev.str()
      << "\",\"gpu\":\"" << gpu_name << "\",\"world_size\":" << dp.world << ",\"threads\":" << torch::get_num_threads()
      << ",\"flops_per_token\":" << fpt << ",\"peak_flops\":" << peak << ",\"start_step\":" << step
      << ",\"attention_note\":\"" << result.attention_note << "\",\"train_tokens\":" << data.train.tokens.size()
      << ",\"val_tokens\":" << data.val.tokens.size() << "}";
    log.line(h.str());
    if (!cfg.quiet)
      std::printf("fa-train: %s %s, %.2fM params, context %lld, %s, %s, start step %lld\nfa-train: attention %s: %s\n",
                  cfg.preset.c_str(), task.c_str(), model->num_params(false) / 1e6, static_cast<long long>(S),
                  dev.str().c_str(), bf16 ? "bf16 autocast" : "fp32", static_cast<long long>(step),
                  cfg.attention.c_str(), result.attention_note.c_str());
  }

  auto evaluate = [&](std::int64_t at_step) {
    model->eval();
    torch::NoGradGuard ng;
    double loss = 0, correct = 0, rows = 0;
    for (std::int64_t j = 0; j < cfg.eval_batches; ++j) {
      AutocastScope ac(bf16, dev.type());
      auto b = val_batches.eval(j);
      auto [l, c] = loss_of(model, b, task, dev);
      loss += l.item<double>();
      if (c.defined()) correct += c.item<double>(), rows += b.input.size(0);
    }
    model->train();
    EvalResult e;
    e.step = at_step;
    e.loss = loss / cfg.eval_batches;
    e.ppl = std::exp(e.loss);
    if (rows > 0) e.accuracy = correct / rows;
    result.evals.push_back(e);
    if (lead) {
      std::ostringstream o;
      o << "{\"event\":\"eval\",\"step\":" << at_step << ",\"loss\":" << fmt("%.6f", e.loss)
        << ",\"ppl\":" << fmt("%.4f", e.ppl);
      if (e.accuracy >= 0) o << ",\"accuracy\":" << fmt("%.4f", e.accuracy);
      o << "}";
      log.line(o.str());
      if (!cfg.quiet)
        std::printf("eval  step %6lld | loss %.4f | %s\n", static_cast<long long>(at_step), e.loss,
                    task == "classify" ? ("accuracy " + fmt("%.3f", e.accuracy)).c_str()
                                       : ((task == "mlm" ? "MLM ppl " : "ppl ") + fmt("%.2f", e.ppl)).c_str());
    }
  };

  auto checkpoint = [&](std::int64_t at_step) {
    if (cfg.save_dir.empty() || !lead) return;
    fs::create_directories(cfg.save_dir);
    const std::string p = (fs::path(cfg.save_dir) / ("step-" + std::to_string(at_step) + ".safetensors")).string();
    save_checkpoint(p, model, opt, at_step, cfg, dev);
    // Copied, then renamed: a run stopped mid-copy (a time limit) leaves the
    // previous last.safetensors whole rather than a truncated one.
    const fs::path last = fs::path(cfg.save_dir) / "last.safetensors";
    fs::copy_file(p, last.string() + ".tmp", fs::copy_options::overwrite_existing);
    fs::rename(last.string() + ".tmp", last);
    result.checkpoint = p;
  };

  model->train();
  attention_clock::enable(cfg.time_attention);
  attention_clock::take_seconds();  // nothing before the first step counts
  auto t_log = Clock::now();
  std::int64_t tokens_since = 0, steps_since = 0;
  const std::int64_t end_step = cfg.stop_after > 0 ? std::min(cfg.steps, step + cfg.stop_after) : cfg.steps;
  for (; step < end_step; ++step) {
    const double lr = learning_rate(cfg, step);
    for (auto& g : opt.param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
    opt.zero_grad();
    torch::Tensor step_loss = torch::zeros({}, torch::TensorOptions().dtype(torch::kDouble).device(dev));
    for (std::int64_t m = 0; m < cfg.accum; ++m) {
      auto b = train_batches.train(step, m, dp.rank);
      torch::Tensor loss;
      {
        AutocastScope ac(bf16, dev.type());
        loss = loss_of(model, b, task, dev).first / static_cast<double>(cfg.accum);
      }
      loss.backward();
      step_loss += loss.detach().to(torch::kDouble);
      tokens_since += b.tokens;
    }
    dp.average_gradients(params);
    torch::Tensor gnorm = cfg.clip > 0 ? torch::tensor(torch::nn::utils::clip_grad_norm_(params, cfg.clip))
                                       : torch::Tensor();
    opt.step();
    ++steps_since;
    const std::int64_t done = step + 1;
    if (done % cfg.log_every == 0 || done == end_step) {
      const double l = step_loss.item<double>();  // one host sync per logged step
      if (!std::isfinite(l)) throw std::runtime_error("loss became " + std::to_string(l) + " at step " + std::to_string(done));
      const double secs = std::chrono::duration<double>(Clock::now() - t_log).count();
      const double tps = tokens_since * dp.world / secs;
      const double mfu = peak > 0 ? fpt * tps / (peak * dp.world) : -1;
      const std::int64_t mem = peak_memory_bytes(dev);
      const double attn_s = cfg.time_attention ? attention_clock::take_seconds() : -1;
      result.train_loss.emplace_back(done, l);
      if (lead) {
        std::ostringstream o;
        o << "{\"event\":\"train\",\"step\":" << done << ",\"loss\":" << fmt("%.6f", l) << ",\"lr\":" << fmt("%.6g", lr)
          << ",\"grad_norm\":" << (gnorm.defined() ? fmt("%.4f", gnorm.item<double>()) : "null")
          << ",\"tokens_per_s\":" << fmt("%.1f", tps) << ",\"mfu\":" << (mfu >= 0 ? fmt("%.4f", mfu) : "null")
          << ",\"peak_mem_bytes\":" << mem << ",\"step_ms\":" << fmt("%.2f", 1e3 * secs / steps_since);
        if (attn_s >= 0)
          o << ",\"attention_ms_per_step\":" << fmt("%.3f", 1e3 * attn_s / steps_since)
            << ",\"attention_share\":" << fmt("%.4f", attn_s / secs);
        o << "}";
        log.line(o.str());
        if (!cfg.quiet)
          std::printf("step %6lld/%lld | loss %.4f | lr %.2e | %.0f tok/s | MFU %s | peak mem %.2f GB | %.1f ms/step%s\n",
                      static_cast<long long>(done), static_cast<long long>(cfg.steps), l, lr, tps,
                      mfu >= 0 ? fmt("%.1f%%", 100 * mfu).c_str() : "n/a", mem / 1e9, 1e3 * secs / steps_since,
                      attn_s >= 0 ? fmt(" | attention %.1f%%", 100 * attn_s / secs).c_str() : "");
        std::fflush(stdout);
      }
      t_log = Clock::now();
      tokens_since = steps_since = 0;
    }
    if (cfg.eval_every > 0 && done % cfg.eval_every == 0 && done != end_step) {
      evaluate(done);
      if (cfg.time_attention) attention_clock::take_seconds();  // training steps only
    }
    if (cfg.save_every > 0 && done % cfg.save_every == 0 && done != end_step) checkpoint(done);
  }
  result.last_step = step;
  if (result.first_step < end_step) evaluate(step);
  checkpoint(step);
  return result;
}

int cli_main(int argc, char** argv) {
  try {
    bool help = false;
    TrainConfig c = parse_args(std::vector<std::string>(argv + 1, argv + argc), &help);
    if (help) {
      std::cout << usage();
      return 0;
    }
    train(c);
    return 0;
  } catch (const ConfigError& e) {
    std::cerr << "fa-train: " << e.what() << "\n";
    return 2;
  } catch (const c10::Error& e) {
    std::cerr << "fa-train: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "fa-train: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace fatrain
