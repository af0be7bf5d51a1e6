#include "model.h"

#include "op_options.h"
#include "safetensors.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <flashattn/flashattn.h>
#ifdef FATRAIN_CUDA
#include <ATen/cuda/CUDAEvent.h>
#endif

#include <chrono>
#include <cstring>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <mutex>
#include <tuple>
#include <sstream>

namespace fatrain {
namespace {

// ------------------------------------------------------------ flashattn ---
// The library is reached through the torch.library operators of
// bindings/torch (flashattn::torch, linked into this program), so the
// trainer and the Python package share one conversion layer: the same
// checks, the CUDA stream / device guard / caching-allocator workspace on
// CUDA, and torch's thread count on the CPU.
// The operators' C++ signatures (ops.cpp's fwd / bwd): the options packed
// as op_options.h orders them.
using flashattn::op_options::OptionTensors;
namespace topt = flashattn::op_options::topt;
namespace iopt = flashattn::op_options::iopt;
using FwdSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                  const OptionTensors&, at::IntArrayRef, double,
                                                  std::optional<double>);
using BwdSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                              const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                              const OptionTensors&, at::IntArrayRef, double,
                                                              std::optional<double>);

const c10::TypedOperatorHandle<FwdSig>& fwd_op() {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("flashattn::fwd", "").typed<FwdSig>();
  return op;
}
const c10::TypedOperatorHandle<BwdSig>& bwd_op() {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("flashattn::bwd", "").typed<BwdSig>();
  return op;
}

// The state behind attention_clock (model.h).
struct AttentionClockState {
  bool on = false;
  double cpu_seconds = 0;
#ifdef FATRAIN_CUDA
  std::vector<std::pair<at::cuda::CUDAEvent, at::cuda::CUDAEvent>> intervals;
#endif
};
AttentionClockState& clock_state() {
  static AttentionClockState s;
  return s;
}

// Brackets one operator call: Timed t(q); ... ; (destructor marks the end).
class Timed {
 public:
  explicit Timed(const torch::Tensor& like) {
    auto& s = clock_state();
    if (!s.on) return;
    active_ = true;
#ifdef FATRAIN_CUDA
    if (like.is_cuda()) {
      cuda_ = true;
      s.intervals.emplace_back(at::cuda::CUDAEvent(cudaEventDefault), at::cuda::CUDAEvent(cudaEventDefault));
      s.intervals.back().first.record();
      return;
    }
#endif
    (void)like;
    start_ = std::chrono::steady_clock::now();
  }
  ~Timed() {
    if (!active_) return;
    auto& s = clock_state();
#ifdef FATRAIN_CUDA
    if (cuda_) {
      s.intervals.back().second.record();
      return;
    }
#endif
    s.cpu_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }
  Timed(const Timed&) = delete;
  Timed& operator=(const Timed&) = delete;

 private:
  bool active_ = false, cuda_ = false;
  std::chrono::steady_clock::time_point start_;
};

// autograd::Function::apply wants defined tensors, so "no tensor" (no
// cu_seqlens, no dropout state) travels as an empty one.
std::optional<at::Tensor> opt(const torch::Tensor& t) {
  return t.defined() && t.numel() > 0 ? std::optional<at::Tensor>(t) : std::nullopt;
}
torch::Tensor none() { return torch::empty({0}, torch::kInt); }

// The trainer's options in the operators' packed form: dense or varlen
// (cu_seqlens shared by queries and keys), causal or not, dropout state,
// 128 x 128 blocks (unused: no block mask), the flash algorithm.
// The block-sparse lists of flashattn_sparse as the operators take them:
// int32 [1, 1, q blocks] counts and [1, 1, q blocks, k blocks] indices
// (batch and heads broadcast), partial then full.
struct SparseLists {
  torch::Tensor count, indices, full_count, full_indices;
};

OptionTensors option_tensors(const torch::Tensor& cu_seqlens, const torch::Tensor& rng, const SparseLists* sp) {
  OptionTensors t;
  t.reserve(topt::count);
  for (std::size_t i = 0; i < topt::count; ++i) t.push_back(std::nullopt);
  t.set(topt::cu_seqlens_q, opt(cu_seqlens));
  t.set(topt::cu_seqlens_k, opt(cu_seqlens));
  t.set(topt::rng_state, opt(rng));
  if (sp) {
    t.set(topt::kv_num_blocks, sp->count);
    t.set(topt::kv_indices, sp->indices);
    t.set(topt::full_kv_num_blocks, sp->full_count);
    t.set(topt::full_kv_indices, sp->full_indices);
  }
  return t;
}
std::vector<int64_t> option_ints(int64_t max_seqlen, bool causal, bool deterministic, int64_t block = 128) {
  std::vector<int64_t> v(iopt::count, 0);
  v[iopt::max_seqlen_q] = v[iopt::max_seqlen_k] = max_seqlen;
  v[iopt::causal] = causal ? 1 : 0;
  v[iopt::window_left] = v[iopt::window_right] = -1;
  v[iopt::block_q] = v[iopt::block_k] = block;
  v[iopt::algorithm] = 0;  // flash
  v[iopt::deterministic] = deterministic ? 1 : 0;
  return v;
}

// forward -> flashattn::forward with the LSE saved; backward ->
// flashattn::backward from (q, k, v, out, lse), the same options, and the
// same (seed, offset), so the backward applies the forward's dropout mask.
struct FlashAttnFunction : torch::autograd::Function<FlashAttnFunction> {
  // sp_*: the block-sparse lists (empty tensors: dense), sp_block their block size.
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor q, torch::Tensor k,
                               torch::Tensor v, torch::Tensor cu_seqlens, int64_t max_seqlen, bool causal,
                               double dropout_p, bool deterministic, torch::Tensor sp_count, torch::Tensor sp_indices,
                               torch::Tensor sp_full_count, torch::Tensor sp_full_indices, int64_t sp_block) {
    torch::Tensor rng = none();
    if (dropout_p > 0) {
      // Drawn from torch's default CPU generator: torch::manual_seed makes it
      // repeatable and the checkpoint saves that generator's state.
      rng = torch::randint(std::numeric_limits<int64_t>::max(), {2}, torch::TensorOptions().dtype(torch::kLong));
    }
    const SparseLists sp{sp_count, sp_indices, sp_full_count, sp_full_indices};
    const bool sparse = sp_count.numel() > 0;
    Timed timed(q);
    auto [out, lse] = fwd_op().call(q, k, v, option_tensors(cu_seqlens, rng, sparse ? &sp : nullptr),
                                    option_ints(max_seqlen, causal, deterministic, sparse ? sp_block : 128),
                                    dropout_p, std::nullopt);
    ctx->save_for_backward({q, k, v, out, lse, cu_seqlens, rng, sp_count, sp_indices, sp_full_count, sp_full_indices});
    ctx->saved_data["sp_block"] = sp_block;
    ctx->saved_data["max_seqlen"] = max_seqlen;
    ctx->saved_data["causal"] = causal;
    ctx->saved_data["dropout_p"] = dropout_p;
    ctx->saved_data["deterministic"] = deterministic;
    return out;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto s = ctx->get_saved_variables();
    torch::Tensor dout = grads[0];
    if (dout.stride(-1) != 1) dout = dout.contiguous();
    const int64_t max_seqlen = ctx->saved_data["max_seqlen"].toInt();
    const SparseLists sp{s[7], s[8], s[9], s[10]};
    const bool sparse = sp.count.numel() > 0;
    Timed timed(dout);
    auto [dq, dk, dv] = bwd_op().call(
        dout, s[0], s[1], s[2], s[3], s[4], option_tensors(s[5], s[6], sparse ? &sp : nullptr),
        option_ints(max_seqlen, ctx->saved_data["causal"].toBool(), ctx->saved_data["deterministic"].toBool(),
                    sparse ? ctx->saved_data["sp_block"].toInt() : 128),
        ctx->saved_data["dropout_p"].toDouble(), std::nullopt);
    torch::autograd::variable_list g(13);  // one per forward input; only q, k, v have gradients
    g[0] = dq, g[1] = dk, g[2] = dv;
    return g;
  }
};

// The lists of a pattern for one sequence length, built on the host by
// flashattn::BlockPattern and copied to the device once: cached per
// (pattern, length, causal, device) for the life of the process (a run sees
// few distinct lengths: the context, or each batch's longest sequence).
flashattn::BlockPattern block_pattern(const SparseOptions& s, int64_t seqlen, bool causal) {
  return s.pattern == "butterfly"
             ? flashattn::BlockPattern::butterfly(seqlen, seqlen, s.block, s.block, s.factors, s.width, causal)
             : flashattn::BlockPattern::local_global(seqlen, seqlen, s.block, s.block, s.local, s.global, causal);
}

const SparseLists& sparse_lists(const SparseOptions& s, int64_t seqlen, bool causal, const torch::Device& device) {
  using Key = std::tuple<std::string, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool, std::string>;
  static std::mutex mu;
  // Never destroyed: freeing CUDA tensors from a static destructor can run
  // after the CUDA allocator has been torn down at exit.
  static auto& cache = *new std::map<Key, SparseLists>();
  const Key key{s.pattern, s.block, s.local, s.global, s.factors, s.width, seqlen, causal, device.str()};
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  const flashattn::BlockPattern bp = block_pattern(s, seqlen, causal);
  auto to_tensor = [&](const std::vector<std::int32_t>& v, std::vector<int64_t> shape) {
    return torch::tensor(v, torch::kInt).view(shape).to(device);
  };
  const int64_t nq = bp.num_q_blocks, nk = bp.num_k_blocks;
  SparseLists l{to_tensor(bp.kv_count, {1, 1, nq}), to_tensor(bp.kv_indices, {1, 1, nq, nk}),
                to_tensor(bp.full_kv_count, {1, 1, nq}), to_tensor(bp.full_kv_indices, {1, 1, nq, nk})};
  return cache.emplace(key, std::move(l)).first->second;
}

torch::Tensor flash(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const AttnOptions& o,
                    double p, const Padding* pad) {
  const bool sparse = o.kind == AttnKind::flashattn_sparse;
  // With key padding the pattern is laid over each sequence from its first
  // token, for the batch's longest length (the varlen path's max_seqlen).
  const SparseLists* sp = sparse ? &sparse_lists(o.sparse, pad ? pad->max_len : q.size(1), o.causal, q.device()) : nullptr;
  auto sp_t = [&](int i) {
    if (!sp) return none();
    return i == 0 ? sp->count : i == 1 ? sp->indices : i == 2 ? sp->full_count : sp->full_indices;
  };
  if (!pad)
    return FlashAttnFunction::apply(q, k, v, none(), 0, o.causal, p, o.deterministic, sp_t(0), sp_t(1), sp_t(2),
                                    sp_t(3), o.sparse.block);
  // Key padding through the varlen path: pack the tokens of every sequence
  // into (total, H, D), run, and scatter back (padding rows stay zero).
  const int64_t B = q.size(0), S = q.size(1), H = q.size(2), D = q.size(3);
  auto pack = [&](const torch::Tensor& t) { return t.reshape({B * S, H, D}).index_select(0, pad->token_index); };
  torch::Tensor o_packed = FlashAttnFunction::apply(pack(q), pack(k), pack(v), pad->cu_seqlens, pad->max_len,
                                                    o.causal, p, o.deterministic, sp_t(0), sp_t(1), sp_t(2), sp_t(3),
                                                    o.sparse.block);
  return torch::zeros({B * S, H, D}, o_packed.options()).index_copy(0, pad->token_index, o_packed).view({B, S, H, D});
}

}  // namespace

namespace attention_clock {
void enable(bool on) { clock_state().on = on; }
double take_seconds() {
  auto& s = clock_state();
  double total = s.cpu_seconds;
  s.cpu_seconds = 0;
#ifdef FATRAIN_CUDA
  for (auto& [a, b] : s.intervals) {
    b.synchronize();  // elapsed_time refuses an event not yet completed
    total += static_cast<double>(a.elapsed_time(b)) / 1e3;
  }
  s.intervals.clear();
#endif
  return total;
}
}  // namespace attention_clock

namespace {

// ------------------------------------------------------------- standard ---
// As HuggingFace's GPT-2 eager attention: S = QK^T / sqrt(d), masked with
// the dtype's lowest value, softmax (in float32, cast back to V's dtype),
// dropout, then P V. S and P are materialised: O(S^2) memory per head.
torch::Tensor standard(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const AttnOptions& o,
                       double p, const Padding* pad) {
  auto qt = q.transpose(1, 2), kt = k.transpose(1, 2), vt = v.transpose(1, 2);  // [B, H, S, D]
  auto w = torch::matmul(qt, kt.transpose(-1, -2)) / std::sqrt(static_cast<double>(q.size(3)));
  // finfo(dtype).min of the scores' own dtype (bf16 under autocast): float's
  // lowest does not fit in bf16 or f16 and masked_fill would throw.
  double lowest = std::numeric_limits<float>::lowest();
  switch (w.scalar_type()) {
    case torch::kBFloat16: lowest = static_cast<double>(std::numeric_limits<c10::BFloat16>::lowest()); break;
    case torch::kHalf: lowest = static_cast<double>(std::numeric_limits<c10::Half>::lowest()); break;
    case torch::kDouble: lowest = std::numeric_limits<double>::lowest(); break;
    default: break;
  }
  if (o.causal) {
    const int64_t S = q.size(1);
    auto keep = torch::ones({S, S}, torch::TensorOptions().dtype(torch::kBool).device(q.device())).tril();
    w = w.masked_fill(keep.logical_not(), lowest);
  }
  if (pad) w = w.masked_fill(pad->key_mask.logical_not(), lowest);
  auto probs = torch::softmax(w, -1, torch::kFloat).to(vt.scalar_type());
  probs = torch::dropout(probs, p, p > 0);
  return torch::matmul(probs, vt).transpose(1, 2);
}

// ----------------------------------------------------------------- sdpa ---
torch::Tensor sdpa(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const AttnOptions& o,
                   double p, const Padding* pad) {
  auto qt = q.transpose(1, 2), kt = k.transpose(1, 2), vt = v.transpose(1, 2);
  std::optional<at::Tensor> mask;
  if (pad) mask = pad->key_mask;
  static std::once_flag logged;
  std::call_once(logged, [&] {
    const int64_t choice = at::_fused_sdp_choice(qt, kt, vt, mask, p, o.causal);
    const char* names[] = {"math", "flash_attention", "efficient_attention", "cudnn_attention", "overrideable"};
    std::fprintf(stderr, "fa-train: SDPA picked backend '%s' (%s, %s%s)\n",
                 choice >= 0 && choice <= 4 ? names[choice] : "none", q.device().str().c_str(),
                 c10::toString(q.scalar_type()), pad ? ", key padding mask" : "");
  });
  return at::scaled_dot_product_attention(qt, kt, vt, mask, p, o.causal).transpose(1, 2);
}

}  // namespace

double attention_density(const AttnOptions& o, std::int64_t seqlen) {
  if (o.kind != AttnKind::flashattn_sparse || seqlen <= 0) return 1.0;
  return block_pattern(o.sparse, seqlen, o.causal).density();
}

AttnKind parse_attention(const std::string& n) {
  if (n == "flashattn") return AttnKind::flashattn;
  if (n == "flashattn-sparse") return AttnKind::flashattn_sparse;
  if (n == "standard") return AttnKind::standard;
  if (n == "sdpa-flash") return AttnKind::sdpa_flash;
  if (n == "sdpa-cudnn") return AttnKind::sdpa_cudnn;
  throw ConfigError("--attention: expected flashattn, flashattn-sparse, standard, sdpa-flash or sdpa-cudnn, got '" + n + "'");
}

std::string configure_sdpa(AttnKind kind, const torch::Device& device) {
  if (kind != AttnKind::sdpa_flash && kind != AttnKind::sdpa_cudnn) return "";
  auto& ctx = at::globalContext();
  if (device.is_cuda()) {
    const bool f = kind == AttnKind::sdpa_flash;
    ctx.setSDPUseFlash(f);
    ctx.setSDPUseCuDNN(!f);
    ctx.setSDPUseMemEfficient(false);
    ctx.setSDPUseMath(false);
    return std::string("SDPA on CUDA restricted to the ") + (f ? "flash" : "cuDNN") +
           " backend (math / mem-efficient disabled: an unsupported case is an error, not a fallback)";
  }
  return std::string("SDPA on the CPU: PyTorch has no ") + (kind == AttnKind::sdpa_cudnn ? "cuDNN" : "FlashAttention-2 CUDA") +
         " kernel here; every CPU backend stays enabled and PyTorch picks (its CPU flash kernel or math), "
         "logged on the first call. This is NOT the GPU kernel the flag names.";
}

Padding make_padding(const std::vector<std::int32_t>& lengths, std::int64_t seqlen, const torch::Device& device) {
  Padding p;
  p.lengths = lengths;
  p.seqlen = seqlen;
  const int64_t B = static_cast<int64_t>(lengths.size());
  std::vector<std::int32_t> cu(B + 1, 0);
  std::vector<int64_t> idx;
  auto mask = torch::zeros({B, 1, 1, seqlen}, torch::kBool);
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(lengths[b] >= 1 && lengths[b] <= seqlen, "padding: length ", lengths[b], " outside [1, ", seqlen, "]");
    cu[b + 1] = cu[b] + lengths[b];
    p.max_len = std::max<int64_t>(p.max_len, lengths[b]);
    for (int32_t s = 0; s < lengths[b]; ++s) idx.push_back(b * seqlen + s);
    mask[b].narrow(-1, 0, lengths[b]).fill_(true);
  }
  p.cu_seqlens = torch::tensor(cu, torch::kInt).to(device);
  p.token_index = torch::tensor(idx, torch::kLong).to(device);
  p.key_mask = mask.to(device);
  return p;
}

torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const AttnOptions& opt, bool training, const Padding* padding) {
  const double p = training ? opt.dropout_p : 0.0;
  switch (opt.kind) {
    case AttnKind::flashattn:
    case AttnKind::flashattn_sparse: return flash(q, k, v, opt, p, padding);
    case AttnKind::standard: return standard(q, k, v, opt, p, padding);
    default: return sdpa(q, k, v, opt, p, padding);
  }
}

// ---------------------------------------------------------------- blocks ---

BlockImpl::BlockImpl(const ModelConfig& m, const AttnOptions& a)
    : heads(m.heads), head_dim(m.width / m.heads), attn(a) {
  ln1 = register_module("ln_1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({m.width}).eps(1e-5)));
  c_attn = register_module("attn_c_attn", torch::nn::Linear(m.width, 3 * m.width));
  c_proj = register_module("attn_c_proj", torch::nn::Linear(m.width, m.width));
  ln2 = register_module("ln_2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({m.width}).eps(1e-5)));
  fc = register_module("mlp_c_fc", torch::nn::Linear(m.width, m.mlp_ratio * m.width));
  proj = register_module("mlp_c_proj", torch::nn::Linear(m.mlp_ratio * m.width, m.width));
  drop = register_module("drop", torch::nn::Dropout(m.dropout));
}

torch::Tensor BlockImpl::forward(torch::Tensor x, const Padding* padding) {
  const int64_t B = x.size(0), S = x.size(1);
  // Pre-LN (GPT-2's layout; used for the encoder too, so both models come
  // from this one block). q, k, v are strided views into the fused QKV
  // projection, in flashattn's (B, S, H, D) layout: no copy for flashattn.
  auto qkv = c_attn(ln1(x)).view({B, S, 3, heads, head_dim});
  auto a = attention(qkv.select(2, 0), qkv.select(2, 1), qkv.select(2, 2), attn, is_training(), padding);
  x = x + drop(c_proj(a.reshape({B, S, heads * head_dim})));
  // GPT-2's gelu_new is the tanh approximation.
  x = x + drop(proj(torch::gelu(fc(ln2(x)), "tanh")));
  return x;
}

TransformerImpl::TransformerImpl(const ModelConfig& m, const AttnOptions& a) : cfg(m) {
  TORCH_CHECK(m.vocab > 0, "model: vocab not set");
  wte = register_module("wte", torch::nn::Embedding(m.vocab, m.width));
  if (m.pos_2d > 0) {
    TORCH_CHECK(m.positions == m.pos_2d * m.pos_2d + 1, "model: pos_2d ", m.pos_2d, " needs ",
                m.pos_2d * m.pos_2d + 1, " positions, got ", m.positions);
    wpe_cls = register_module("wpe_cls", torch::nn::Embedding(1, m.width));
    wpe_row = register_module("wpe_row", torch::nn::Embedding(m.pos_2d, m.width));
    wpe_col = register_module("wpe_col", torch::nn::Embedding(m.pos_2d, m.width));
  } else {
    TORCH_CHECK(m.pos_2d == 0, "model: pos_2d not resolved (auto needs the data's image size)");
    wpe = register_module("wpe", torch::nn::Embedding(m.positions, m.width));
  }
  drop = register_module("drop", torch::nn::Dropout(m.dropout));
  h = register_module("h", torch::nn::ModuleList());
  for (int64_t i = 0; i < m.layers; ++i) h->push_back(Block(m, a));
  ln_f = register_module("ln_f", torch::nn::LayerNorm(torch::nn::LayerNormOptions({m.width}).eps(1e-5)));
  if (m.arch == "encoder") {
    mlm_dense = register_module("mlm_dense", torch::nn::Linear(m.width, m.width));
    mlm_ln = register_module("mlm_ln", torch::nn::LayerNorm(torch::nn::LayerNormOptions({m.width}).eps(1e-5)));
    mlm_bias = register_parameter("mlm_bias", torch::zeros({m.vocab}));
    if (m.num_classes > 0) {
      pooler = register_module("pooler", torch::nn::Linear(m.width, m.width));
      classifier = register_module("classifier", torch::nn::Linear(m.width, m.num_classes));
    }
  }
  // GPT-2's initialisation: N(0, 0.02) for weights and embeddings, zero
  // biases, and the residual output projections scaled by 1/sqrt(2 layers).
  torch::NoGradGuard ng;
  for (auto& p : named_parameters()) {
    const auto& n = p.key();
    auto& t = p.value();
    if (n.find("ln") != std::string::npos) {
      if (n.ends_with("weight")) t.fill_(1.0);
      else t.zero_();
    } else if (n.ends_with("bias")) {
      t.zero_();
    } else {
      double std = 0.02;
      if (n.ends_with("c_proj.weight")) std /= std::sqrt(2.0 * m.layers);
      t.normal_(0.0, std);
    }
  }
}

torch::Tensor TransformerImpl::hidden(const torch::Tensor& tokens, const Padding* padding) {
  const int64_t S = tokens.size(1);
  TORCH_CHECK(S <= cfg.positions, "model: sequence of ", S, " tokens exceeds ", cfg.positions, " positions");
  auto x = drop(wte(tokens) + positions(S, tokens.device()));
  for (auto& m : *h) x = m->as<BlockImpl>()->forward(x, padding);
  return ln_f(x);
}

torch::Tensor TransformerImpl::positions(std::int64_t S, const torch::Device& device) {
  auto pos = torch::arange(S, torch::TensorOptions().dtype(torch::kLong).device(device));
  if (!wpe_row) return wpe(pos);
  // Position p >= 1 is pixel p - 1 of the row-major image.
  auto pixel = pos.narrow(0, 0, S - 1);
  auto grid = wpe_row(pixel.div(cfg.pos_2d, "floor")) + wpe_col(pixel.remainder(cfg.pos_2d));
  return torch::cat({wpe_cls->weight, grid}, 0);
}

torch::Tensor TransformerImpl::lm_logits(const torch::Tensor& x) { return torch::matmul(x, wte->weight.t()); }

torch::Tensor TransformerImpl::mlm_logits(const torch::Tensor& x) {
  TORCH_CHECK(mlm_dense, "model: the MLM head needs the encoder");
  return torch::matmul(mlm_ln(torch::gelu(mlm_dense(x), "tanh")), wte->weight.t()) + mlm_bias;
}

torch::Tensor TransformerImpl::cls_logits(const torch::Tensor& x, const Padding* padding) {
  TORCH_CHECK(classifier, "model: the classification head needs the encoder and num_classes > 0");
  torch::Tensor pooled;
  if (cfg.pool == "mean") {
    // Padding rows are excluded: their hidden states are not zero for every
    // attention switch (only flashattn's varlen path leaves them zero), and
    // their number varies per row, so a plain mean would depend on the batch.
    if (padding) {
      auto keep = padding->key_mask.view({x.size(0), x.size(1), 1}).to(x.scalar_type());
      auto n = torch::tensor(std::vector<float>(padding->lengths.begin(), padding->lengths.end()),
                             torch::TensorOptions().device(x.device())).to(x.scalar_type()).view({-1, 1});
      pooled = (x * keep).sum(1) / n;
    } else {
      pooled = x.mean(1);
    }
  } else {
    pooled = x.select(1, 0);  // [CLS] = bos
  }
  // BERT's pooler: tanh(dense(pooled)), then the classifier.
  return classifier(torch::tanh(pooler(pooled)));
}

std::int64_t TransformerImpl::num_params(bool non_embedding) const {
  std::int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  if (non_embedding) n -= num_position_params() + wte->weight.numel();
  return n;
}

std::int64_t TransformerImpl::num_position_params() const {
  if (wpe) return wpe->weight.numel();
  return wpe_cls->weight.numel() + wpe_row->weight.numel() + wpe_col->weight.numel();
}

torch::Tensor interpolate_positions(const torch::Tensor& table, std::int64_t n) {
  TORCH_CHECK(table.dim() == 2 && table.size(0) >= 2 && n >= 2, "interpolate_positions: expected [H >= 2, W] to n >= 2");
  if (table.size(0) == n) return table.clone();
  namespace F = torch::nn::functional;
  auto t = table.t().unsqueeze(0);  // [1, W, H]: interpolate's (N, C, L)
  auto r = F::interpolate(t, F::InterpolateFuncOptions().size(std::vector<int64_t>{n}).mode(torch::kLinear).align_corners(true));
  return r.squeeze(0).t().contiguous();
}

void init_from_checkpoint(const std::string& path, Transformer& model) {
  safetensors::File f;
  try {
    f = safetensors::read(path);
  } catch (const std::runtime_error& e) {
    throw ConfigError(std::string("--init-from: ") + e.what());
  }
  auto fmt = f.metadata.find("format");
  if (fmt == f.metadata.end() || fmt->second != "fa-train-checkpoint-1")
    throw ConfigError("--init-from: " + path + " is not an fa-train checkpoint");
  torch::NoGradGuard ng;
  for (const auto& p : model->named_parameters()) {
    const std::string name = "model." + p.key();
    auto it = f.tensors.find(name);
    if (it == f.tensors.end())
      throw ConfigError("--init-from: " + path + " has no " + name + " (a checkpoint of another model kind?)");
    const auto& e = it->second;
    if (e.dtype != "F32") throw ConfigError("--init-from: " + name + " is " + e.dtype + ", expected F32");
    auto src = torch::empty(e.shape, torch::kFloat);
    if (static_cast<std::size_t>(src.numel() * 4) != e.end - e.begin)
      throw ConfigError("--init-from: " + name + ": size does not match its shape");
    std::memcpy(src.data_ptr(), f.data.data() + e.begin, e.end - e.begin);
    auto param = p.value();
    const bool grid = p.key() == "wpe_row.weight" || p.key() == "wpe_col.weight";
    if (grid && src.dim() == 2 && src.size(1) == param.size(1) && src.size(0) != param.size(0))
      src = interpolate_positions(src, param.size(0));
    if (!src.sizes().equals(param.sizes())) {
      std::ostringstream o;
      o << "--init-from: " << name << " has shape " << src.sizes() << " in " << path << ", the flags' model "
        << param.sizes();
      throw ConfigError(o.str());
    }
    param.copy_(src);
  }
}

}  // namespace fatrain
