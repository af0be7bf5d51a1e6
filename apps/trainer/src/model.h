// The models: one set of building blocks (embeddings, pre-LN transformer
// block, heads) that makes a GPT-2 decoder and a BERT-style encoder. The
// attention kernel is a switch that changes nothing else in the model.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "config.h"

namespace fatrain {

enum class AttnKind { flashattn, flashattn_sparse, standard, sdpa_flash, sdpa_cudnn };
AttnKind parse_attention(const std::string& name);  // throws ConfigError naming --attention

// Key padding of an encoder batch: sequence b holds tokens [0, lengths[b])
// and padding after. Built once per batch, shared by every layer.
struct Padding {
  std::vector<std::int32_t> lengths;
  std::int64_t seqlen = 0, max_len = 0;
  torch::Tensor cu_seqlens;   // int32 [B + 1] on the model's device (flashattn varlen)
  torch::Tensor token_index;  // int64 [total]: rows of the flattened (B * S) batch that are tokens
  torch::Tensor key_mask;     // bool [B, 1, 1, S], true = a token (standard / SDPA)
};
Padding make_padding(const std::vector<std::int32_t>& lengths, std::int64_t seqlen, const torch::Device& device);

// flashattn_sparse's fixed pattern, built by flashattn::BlockPattern over
// block x block tiles of (query, key) positions:
//   local_global: query block i sees key blocks i - local + 1 .. i (its
//     diagonal and the blocks before it) and the first `global` blocks;
//   butterfly: with super-blocks of `width` blocks, query super-block a sees
//     key super-block b when a XOR b is 0 or 2^j for j < factors.
// Causal models keep the causal rule inside the kept blocks.
struct SparseOptions {
  std::string pattern = "local_global";
  std::int64_t block = 128, local = 3, global = 1, factors = 3, width = 1;
};

struct AttnOptions {
  AttnKind kind = AttnKind::flashattn;
  SparseOptions sparse;
  bool causal = false;
  double dropout_p = 0.0;  // applied only in training mode
  bool deterministic = false;
};

// The share of (query block, key block) pairs the attention computes at
// sequence length seqlen: the block pattern's density for flashattn-sparse
// (BlockPattern::density), 1 otherwise. Scales the attention term of the
// FLOP count, so that MFU counts the work the kernels do.
double attention_density(const AttnOptions& o, std::int64_t seqlen);

// q, k, v: [B, S, H, D] (any strides with a contiguous last dimension).
// Returns [B, S, H, D]. With padding, rows of padding positions are zero for
// flashattn (varlen: they are not computed) and unspecified-but-finite for
// the others; no token ever attends to a padding key.
torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const AttnOptions& opt, bool training, const Padding* padding);

// Time spent in the flashattn operators (forward and backward), for the
// share of the step that attention takes (--time-attention). On CUDA each
// call is bracketed by two events on the current stream, so timing adds no
// synchronisation; take_seconds() waits for the last event, sums the
// intervals since the previous take and forgets them. On the CPU the calls
// are synchronous and their wall time is summed. Only the flashattn switch
// is timed: the other switches' backward is torch's autograd of several ops.
namespace attention_clock {
void enable(bool on);
double take_seconds();
}  // namespace attention_clock

// Sets PyTorch's SDPA backend switches for --attention sdpa-*: on CUDA only
// the named backend is enabled (so an unsupported shape is an error, not a
// silent fallback); on the CPU PyTorch has no cuDNN kernel and its flash
// kernel has its own limits, so every backend stays enabled and the first
// call logs the one PyTorch picked. Returns a line for the log.
std::string configure_sdpa(AttnKind kind, const torch::Device& device);

struct BlockImpl : torch::nn::Module {
  BlockImpl(const ModelConfig& m, const AttnOptions& a);
  torch::Tensor forward(torch::Tensor x, const Padding* padding);
  torch::nn::LayerNorm ln1{nullptr}, ln2{nullptr};
  torch::nn::Linear c_attn{nullptr}, c_proj{nullptr}, fc{nullptr}, proj{nullptr};
  torch::nn::Dropout drop{nullptr};
  std::int64_t heads, head_dim;
  AttnOptions attn;
};
TORCH_MODULE(Block);

// GPT-2 (arch gpt2, causal) or the encoder (arch encoder). Parameter names
// follow HuggingFace's GPT-2 where there is one (wte, wpe, h.N.*, ln_f).
struct TransformerImpl : torch::nn::Module {
  TransformerImpl(const ModelConfig& m, const AttnOptions& a);
  // tokens [B, S] int64 -> final hidden states [B, S, W] (after ln_f).
  torch::Tensor hidden(const torch::Tensor& tokens, const Padding* padding);
  torch::Tensor lm_logits(const torch::Tensor& h);    // [.., V], tied to wte
  torch::Tensor mlm_logits(const torch::Tensor& h);   // encoder MLM head, decoder tied to wte
  // Encoder classification: pooled (cfg.pool: position 0, or the mean over
  // the positions below each sequence's length, all when padding is null)
  // -> BERT's pooler -> [B, C].
  torch::Tensor cls_logits(const torch::Tensor& h, const Padding* padding = nullptr);
  std::int64_t num_params(bool non_embedding) const;
  std::int64_t num_position_params() const;
  // [S, W]: the position embeddings of positions 0 .. S-1.
  torch::Tensor positions(std::int64_t S, const torch::Device& device);

  ModelConfig cfg;
  torch::nn::Embedding wte{nullptr}, wpe{nullptr};
  // 2-D positions (cfg.pos_2d > 0) instead of wpe: [CLS]'s own embedding,
  // and pixel (r, c) gets wpe_row[r] + wpe_col[c].
  torch::nn::Embedding wpe_cls{nullptr}, wpe_row{nullptr}, wpe_col{nullptr};
  torch::nn::Dropout drop{nullptr};
  torch::nn::ModuleList h;
  torch::nn::LayerNorm ln_f{nullptr};
  // encoder heads
  torch::nn::Linear mlm_dense{nullptr}, pooler{nullptr}, classifier{nullptr};
  torch::nn::LayerNorm mlm_ln{nullptr};
  torch::Tensor mlm_bias;
};
TORCH_MODULE(Transformer);

// A [H, W] table of per-row (or per-column) embeddings resampled to [n, W]
// by linear interpolation with align_corners = true: output row j reads the
// source at j * (H - 1) / (n - 1), so the first and last rows are copied
// exactly and the grid's corners keep their embeddings (pos = row + col).
torch::Tensor interpolate_positions(const torch::Tensor& table, std::int64_t n);

// Loads the model.* tensors of an fa-train checkpoint into `model` (no
// optimizer state, no step): every parameter must be there with its shape,
// except wpe_row / wpe_col, which are interpolated to the model's image side
// when the checkpoint was trained at another one. Throws ConfigError naming
// --init-from.
void init_from_checkpoint(const std::string& path, Transformer& model);

}  // namespace fatrain
