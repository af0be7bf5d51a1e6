// The flashattn torch.library operators, shared by the Python package
// (bindings/python) and the C++ trainer (apps/trainer). This file only
// converts between at::Tensor and flashattn::Tensor and picks the
// Context (device, stream, workspace, threads); every kernel and every check
// on the problem itself lives in libflashattn, linked from this repository's
// CMake. The autograd formula is here too (FwdWithGrad); the fake (meta)
// kernels are registered from Python (flashattn/_ops.py), so the schemas
// below are the single source of truth for the argument lists of both sides.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "flashattn/flashattn.h"
#include "op_options.h"

#ifdef FLASHATTN_TORCH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace {

using at::Tensor;

// The packed options (option_tensors, option_ints) and their order:
// op_options.h, shared with apps/trainer, the other C++ caller.
using namespace flashattn::op_options;

// Error messages are assembled as plain strings (std::to_string, no
// std::ostream) and handed to torch as one string. On the GPU machine's
// torch 2.11 build, throwing an error whose message c10::str had to stream
// (integers, shapes) crashed the process, while one of plain strings did not.
std::string piece(const char* s) { return s; }
std::string piece(const std::string& s) { return s; }
std::string piece(int64_t v) { return std::to_string(v); }
// dtypes by their Python names (torch.float32, not c10's Float), as the
// Python side's messages write them.
std::string piece(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kFloat8_e4m3fn: return "torch.float8_e4m3fn";
    case at::kByte: return "torch.uint8";
    case at::kChar: return "torch.int8";
    case at::kShort: return "torch.int16";
    case at::kInt: return "torch.int32";
    case at::kLong: return "torch.int64";
    case at::kBool: return "torch.bool";
    case at::kComplexFloat: return "torch.complex64";
    case at::kComplexDouble: return "torch.complex128";
    default: return c10::toString(t);
  }
}
std::string piece(const c10::Device& d) { return d.str(); }
std::string piece(at::IntArrayRef sizes) {
  std::string s = "[";
  for (std::size_t i = 0; i < sizes.size(); ++i) s += (i ? ", " : "") + std::to_string(sizes[i]);
  return s + "]";
}
std::string shape_str(const Tensor& t) { return piece(t.sizes()); }

template <class... Args>
[[noreturn]] void value_error(const Args&... args) {
  std::string msg;
  ((msg += piece(args)), ...);
  TORCH_CHECK_VALUE(false, msg);  // raised in Python as ValueError
}

// Like TORCH_CHECK_VALUE, with the message built as above (and only on failure).
#define FLASHATTN_CHECK(cond, ...)         \
  do {                                     \
    if (!(cond)) value_error(__VA_ARGS__); \
  } while (0)

// Library errors keep their kind in Python, with the library's message
// (argument, expected, actual) unchanged: argument errors become
// ValueError (c10::ValueError), device allocation failures
// torch.OutOfMemoryError (c10::OutOfMemoryError), other device failures
// RuntimeError (c10::Error).
template <class F>
void surface_errors(F&& f) {
  try {
    f();
  } catch (const flashattn::Error& e) {
    value_error("flashattn: ", e.what());
  } catch (const flashattn::OutOfMemory& e) {
    TORCH_CHECK_WITH(OutOfMemoryError, false, "flashattn: ", e.what());
  } catch (const flashattn::RuntimeError& e) {
    TORCH_CHECK(false, "flashattn: ", e.what());
  }
}

flashattn::DType to_dtype(const Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return flashattn::DType::f32;
    case at::kHalf:
      return flashattn::DType::f16;
    case at::kBFloat16:
      return flashattn::DType::bf16;
    case at::kDouble:
      return flashattn::DType::f64;
    case at::kFloat8_e4m3fn:
      return flashattn::DType::e4m3;
    default:
      value_error("flashattn: ", name, ".dtype: expected float32, float16, bfloat16, float64 or float8_e4m3fn, got ",
                  t.scalar_type());
  }
}

// (batch, seqlen, heads, head_dim), or (total, heads, head_dim) for varlen
// (seen by the library as batch = 1). Strides pass through: only the last
// dimension must be contiguous (the Python side makes it so).
flashattn::Tensor view(const Tensor& t, const char* name, bool varlen) {
  const int64_t want = varlen ? 3 : 4;
  FLASHATTN_CHECK(t.dim() == want, "flashattn: ", name, ": expected a ", want, "-D tensor ",
                  varlen ? "(total, heads, head_dim)" : "(batch, seqlen, heads, head_dim)", ", got shape ",
                  shape_str(t));
  // The size / stride arrays read once (t.size(i) / t.stride(i) wrap and
  // check the index on every call: a fifth of this function's cost).
  const at::IntArrayRef sizes = t.sizes(), strides = t.strides();
  FLASHATTN_CHECK(sizes[want - 1] <= 1 || strides[want - 1] == 1, "flashattn: ", name,
                  ": expected a contiguous last dimension, got stride ", strides[want - 1]);
  flashattn::Tensor v;
  v.data = t.data_ptr();
  v.dtype = to_dtype(t, name);
  const int64_t seq_dim = varlen ? 0 : 1;
  v.batch = varlen ? 1 : sizes[0];
  v.stride_batch = varlen ? t.numel() : strides[0];
  v.seqlen = sizes[seq_dim];
  v.heads = sizes[seq_dim + 1];
  v.head_dim = sizes[seq_dim + 2];
  v.stride_seq = strides[seq_dim];
  v.stride_head = strides[seq_dim + 1];
  return v;
}

// Index tensors (cu_seqlens, block lists) live on the device of the call.
// On CUDA no host copies are made for the library to validate: that would
// synchronise the stream on every call; the library clamps instead, so bad
// values cannot reach memory outside the tensors (see flashattn.h, Varlen).
const int32_t* int32_data(const std::optional<Tensor>& t, const Tensor& q, const char* name) {
  if (!t) return nullptr;
  FLASHATTN_CHECK(t->scalar_type() == at::kInt, "flashattn: ", name, ".dtype: expected int32, got ", t->scalar_type());
  FLASHATTN_CHECK(t->device() == q.device(), "flashattn: ", name, ".device: expected the device of q (", q.device(),
                  "), got ", t->device());
  FLASHATTN_CHECK(t->is_contiguous(), "flashattn: ", name, ": expected a contiguous tensor");
  return t->data_ptr<int32_t>();
}

// Everything a call needs besides the tensors, owning the structs that
// Options points into.
struct CallOptions {
  flashattn::Options options;
  flashattn::Varlen varlen;
  flashattn::BlockMask block_mask;
  flashattn::Context ctx;
  bool is_varlen = false;
  bool deterministic = false;  // bwd's
};

void check_same_device(const Tensor& t, const Tensor& q, const char* name) {
  FLASHATTN_CHECK(t.device() == q.device(), "flashattn: ", name, ".device: expected the device of q (", q.device(),
                  "), got ", t.device());
}

// k and v: the dtype and the device of q. With view() these are the checks of
// the Python side (flashattn/_ops.py, _check_inputs), in its order and with
// its messages: eager calls from flashattn's functions rely on these.
void check_like_q(const Tensor& t, const Tensor& q, const char* name) {
  FLASHATTN_CHECK(t.scalar_type() == q.scalar_type(), "flashattn: ", name, ".dtype: expected the dtype of q (",
                  q.scalar_type(), "), got ", t.scalar_type());
  check_same_device(t, q, name);
}

template <std::size_t N>
std::string joined(const char* const (&names)[N]) {
  std::string s;
  for (std::size_t i = 0; i < N; ++i) s += (i ? ", " : "") + std::string(names[i]);
  return s;
}

// The packed lists' lengths, checked before any entry is read. An empty
// option_tensors stands for all None (the dense call without dropout, the
// common case): a list of 7 Nones costs a Python call about 3k instructions
// more to convert (callgrind) than an empty one.
void check_packing(const OptionTensors& option_tensors, at::IntArrayRef option_ints) {
  FLASHATTN_CHECK(option_tensors.size() == topt::count || option_tensors.empty(),
                  "flashattn: option_tensors: expected ", static_cast<int64_t>(topt::count), " entries (",
                  joined(kTensorOptionNames), ") or none (all None), got ",
                  static_cast<int64_t>(option_tensors.size()));
  FLASHATTN_CHECK(option_ints.size() == iopt::count, "flashattn: option_ints: expected ",
                  static_cast<int64_t>(iopt::count), " entries (", joined(kIntOptionNames), "), got ",
                  static_cast<int64_t>(option_ints.size()));
}

// Entry i of a checked option_tensors (None when the list is empty).
std::optional<Tensor> option_tensor(const OptionTensors& option_tensors, std::size_t i) {
  if (option_tensors.empty()) return std::nullopt;
  return option_tensors.get(i);
}

bool flag(at::IntArrayRef option_ints, std::size_t i) {
  const int64_t v = option_ints[i];
  FLASHATTN_CHECK(v == 0 || v == 1, "flashattn: ", kIntOptionNames[i], ": expected 0 or 1 (a bool), got ", v);
  return v == 1;
}

CallOptions make_options(const Tensor& q, const OptionTensors& option_tensors, at::IntArrayRef option_ints,
                         double dropout_p, std::optional<double> softmax_scale) {
  check_packing(option_tensors, option_ints);
  // Named copies (a reference count each, None for most) keep the checks
  // below readable.
  const std::optional<Tensor> cu_seqlens_q = option_tensor(option_tensors, topt::cu_seqlens_q),
                              cu_seqlens_k = option_tensor(option_tensors, topt::cu_seqlens_k),
                              rng_state = option_tensor(option_tensors, topt::rng_state),
                              kv_num_blocks = option_tensor(option_tensors, topt::kv_num_blocks),
                              kv_indices = option_tensor(option_tensors, topt::kv_indices),
                              full_kv_num_blocks = option_tensor(option_tensors, topt::full_kv_num_blocks),
                              full_kv_indices = option_tensor(option_tensors, topt::full_kv_indices);
  const int64_t algorithm = option_ints[iopt::algorithm];
  CallOptions c;
  FLASHATTN_CHECK(q.device().is_cpu() || q.device().is_cuda(), "flashattn: q.device: expected cpu or cuda, got ",
                  q.device());
  c.ctx.device = q.device().is_cuda() ? flashattn::Device::cuda : flashattn::Device::cpu;
  FLASHATTN_CHECK(algorithm == 0 || algorithm == 1, "flashattn: algorithm: expected 0 (flash) or 1 (standard), got ",
                  algorithm);
  c.ctx.algorithm = static_cast<flashattn::Algorithm>(algorithm);
  // Follow torch.set_num_threads rather than OpenMP's own default (CPU only:
  // the CUDA backend has no use for it).
  if (c.ctx.device == flashattn::Device::cpu) c.ctx.num_threads = at::get_num_threads();

  c.deterministic = flag(option_ints, iopt::deterministic);

  auto& o = c.options;
  if (softmax_scale) o.softmax_scale = static_cast<float>(*softmax_scale);
  o.causal = flag(option_ints, iopt::causal);
  o.window_left = option_ints[iopt::window_left];
  o.window_right = option_ints[iopt::window_right];
  o.dropout_p = static_cast<float>(dropout_p);
  if (dropout_p > 0.0) {
    FLASHATTN_CHECK(rng_state.has_value(),
                    "flashattn: rng_state: expected (seed, offset) when dropout_p > 0, got None");
    FLASHATTN_CHECK(rng_state->device().is_cpu() && rng_state->scalar_type() == at::kLong && rng_state->numel() == 2,
                    "flashattn: rng_state: expected a CPU int64 tensor of 2 elements (seed, offset), got ",
                    rng_state->scalar_type(), " on ", rng_state->device(), " with ", rng_state->numel(), " elements");
    const Tensor s = rng_state->contiguous();
    o.seed = static_cast<uint64_t>(s.data_ptr<int64_t>()[0]);
    o.offset = static_cast<uint64_t>(s.data_ptr<int64_t>()[1]);
  }

  FLASHATTN_CHECK(cu_seqlens_q.has_value() == cu_seqlens_k.has_value(),
                  "flashattn: cu_seqlens_q / cu_seqlens_k: expected both or neither, got only one");
  if (cu_seqlens_q) {
    c.is_varlen = true;
    FLASHATTN_CHECK(cu_seqlens_q->dim() == 1 && cu_seqlens_k->dim() == 1 &&
                        cu_seqlens_q->numel() == cu_seqlens_k->numel() && cu_seqlens_q->numel() >= 1,
                    "flashattn: cu_seqlens_q / cu_seqlens_k: expected 1-D tensors of batch + 1 entries each, got ",
                    shape_str(*cu_seqlens_q), " and ", shape_str(*cu_seqlens_k));
    c.varlen.cu_seqlens_q = int32_data(cu_seqlens_q, q, "cu_seqlens_q");
    c.varlen.cu_seqlens_k = int32_data(cu_seqlens_k, q, "cu_seqlens_k");
    c.varlen.batch = cu_seqlens_q->numel() - 1;
    c.varlen.max_seqlen_q = option_ints[iopt::max_seqlen_q];
    c.varlen.max_seqlen_k = option_ints[iopt::max_seqlen_k];
    o.varlen = &c.varlen;
  }

  FLASHATTN_CHECK(kv_num_blocks.has_value() == kv_indices.has_value(),
                  "flashattn: kv_num_blocks / kv_indices: expected both or neither, got only one");
  if (kv_num_blocks) {
    auto& m = c.block_mask;
    FLASHATTN_CHECK(kv_num_blocks->dim() == 3 && kv_indices->dim() == 4,
                    "flashattn: kv_num_blocks / kv_indices: expected shapes [batch, heads, num_q_blocks] and "
                    "[batch, heads, num_q_blocks, num_kv_blocks], got ",
                    shape_str(*kv_num_blocks), " and ", shape_str(*kv_indices));
    FLASHATTN_CHECK(kv_indices->sizes().slice(0, 3) == kv_num_blocks->sizes(),
                    "flashattn: kv_indices: expected leading dimensions ", shape_str(*kv_num_blocks),
                    " (those of kv_num_blocks), got ", shape_str(*kv_indices));
    m.block_q = option_ints[iopt::block_q];
    m.block_k = option_ints[iopt::block_k];
    m.batch = kv_num_blocks->size(0);
    m.heads = kv_num_blocks->size(1);
    m.num_q_blocks = kv_num_blocks->size(2);
    m.num_k_blocks = kv_indices->size(3);
    m.kv_count = int32_data(kv_num_blocks, q, "kv_num_blocks");
    m.kv_indices = int32_data(kv_indices, q, "kv_indices");
    FLASHATTN_CHECK(full_kv_num_blocks.has_value() == full_kv_indices.has_value(),
                    "flashattn: full_kv_num_blocks / full_kv_indices: expected both or neither, got only one");
    if (full_kv_num_blocks) {
      FLASHATTN_CHECK(
          full_kv_num_blocks->sizes() == kv_num_blocks->sizes() && full_kv_indices->sizes() == kv_indices->sizes(),
          "flashattn: full_kv_num_blocks / full_kv_indices: expected the shapes of kv_num_blocks / "
          "kv_indices (",
          shape_str(*kv_num_blocks), " / ", shape_str(*kv_indices), "), got ", shape_str(*full_kv_num_blocks), " / ",
          shape_str(*full_kv_indices));
      m.full_kv_count = int32_data(full_kv_num_blocks, q, "full_kv_num_blocks");
      m.full_kv_indices = int32_data(full_kv_indices, q, "full_kv_indices");
    }
    o.block_mask = &m;
  } else {
    FLASHATTN_CHECK(!full_kv_num_blocks && !full_kv_indices,
                    "flashattn: full_kv_num_blocks / full_kv_indices: expected kv_num_blocks / kv_indices too");
  }
  return c;
}

// The device guard and, on CUDA, the current stream; both must outlive the
// library call.
struct DeviceScope {
#ifdef FLASHATTN_TORCH_CUDA
  std::optional<c10::cuda::CUDAGuard> guard;
#endif
  DeviceScope(const Tensor& q, flashattn::Context& ctx) {
    if (!q.device().is_cuda()) return;
#ifdef FLASHATTN_TORCH_CUDA
    guard.emplace(q.device());
    ctx.stream = at::cuda::getCurrentCUDAStream(q.device().index()).stream();
#else
    (void)ctx;
    value_error(
        "flashattn: q.device: expected cpu (this build of the flashattn package has no CUDA "
        "backend), got ",
        q.device());
#endif
  }
};

// Scratch from PyTorch's caching allocator, ordered on the current stream
// like any tensor, instead of the library's own allocation.
Tensor workspace_for(std::size_t bytes, const Tensor& q, flashattn::Context& ctx) {
  if (bytes == 0) return Tensor();
  Tensor ws = at::empty({static_cast<int64_t>(bytes)}, q.options().dtype(at::kByte));
  ctx.workspace = ws.data_ptr();
  ctx.workspace_bytes = bytes;
  return ws;
}

// The LSE's shape, without a heap allocation: dense [batch, heads_q,
// seqlen_q], varlen [heads_q, total_q].
struct LseShape {
  int64_t dims[3];
  std::size_t rank;
  operator at::IntArrayRef() const { return {dims, rank}; }
};
LseShape lse_shape(const Tensor& q, bool varlen) {
  const at::IntArrayRef s = q.sizes();
  if (varlen) return {{s[1], s[0], 0}, 2};
  return {{s[0], s[2], s[1]}, 3};
}

// Varlen rows past cu_seqlens[batch] belong to no sequence and are never
// written by the library, so their outputs start at zero; dense outputs are
// written everywhere.
Tensor new_output(const Tensor& like, bool varlen, std::optional<at::ScalarType> dtype = std::nullopt) {
  const at::TensorOptions opt = dtype ? like.options().dtype(*dtype) : like.options();
  return varlen ? at::zeros(like.sizes(), opt) : at::empty(like.sizes(), opt);
}

// The FP8 descale factors of fwd_fp8: float32 (batch, heads_k) on the
// device of q, contiguous (flashattn.h, ForwardArgs); batch is the number
// of sequences for varlen. None: all 1.
const float* descale_data(const std::optional<Tensor>& t, const Tensor& q, const Tensor& k, const CallOptions& c,
                          const char* name) {
  if (!t) return nullptr;
  const int64_t batch = c.is_varlen ? c.varlen.batch : q.size(0), heads_k = k.size(c.is_varlen ? 1 : 2);
  FLASHATTN_CHECK(t->scalar_type() == at::kFloat, "flashattn: ", name, ".dtype: expected float32, got ",
                  t->scalar_type());
  check_same_device(*t, q, name);
  FLASHATTN_CHECK(t->dim() == 2 && t->size(0) == batch && t->size(1) == heads_k && t->is_contiguous(),
                  "flashattn: ", name, ": expected a contiguous float32 tensor of shape (batch, heads_k) = [", batch,
                  ", ", heads_k, "], got shape ", shape_str(*t));
  return t->data_ptr<float>();
}

// fwd and fwd_fp8. The output has q's dtype, bf16 for e4m3 inputs.
std::tuple<Tensor, Tensor> forward_call(const Tensor& q, const Tensor& k, const Tensor& v,
                                        const std::optional<Tensor>& q_descale, const std::optional<Tensor>& k_descale,
                                        const std::optional<Tensor>& v_descale, const OptionTensors& option_tensors,
                                        at::IntArrayRef option_ints, double dropout_p,
                                        std::optional<double> softmax_scale) {
  CallOptions c = make_options(q, option_tensors, option_ints, dropout_p, softmax_scale);
  // The inputs' checks before the allocations, so that the shape of q is
  // known to be right when the outputs' shapes are taken from it.
  flashattn::ForwardArgs a;
  a.q = view(q, "q", c.is_varlen);
  a.k = view(k, "k", c.is_varlen);
  check_like_q(k, q, "k");
  a.v = view(v, "v", c.is_varlen);
  check_like_q(v, q, "v");
  a.q_descale = descale_data(q_descale, q, k, c, "q_descale");
  a.k_descale = descale_data(k_descale, q, k, c, "k_descale");
  a.v_descale = descale_data(v_descale, q, k, c, "v_descale");
  DeviceScope scope(q, c.ctx);
  Tensor out = q.scalar_type() == at::kFloat8_e4m3fn ? new_output(q, c.is_varlen, at::kBFloat16)
                                                     : new_output(q, c.is_varlen);
  // Every row of a dense batch gets its LSE (-inf where no key is visible:
  // flashattn.h), so no fill there; varlen rows past cu_seqlens_q[batch]
  // belong to no sequence, are never written, and read -inf. (The fill is
  // a kernel launch per call, a large share of the operator's host time on a GPU.)
  Tensor lse = c.is_varlen ? at::full(lse_shape(q, true), -std::numeric_limits<float>::infinity(),
                                      q.options().dtype(at::kFloat))
                           : at::empty(lse_shape(q, false), q.options().dtype(at::kFloat));
  a.o = view(out, "out", c.is_varlen);
  a.lse = lse.data_ptr<float>();
  a.options = c.options;
  surface_errors([&] {
    Tensor ws = workspace_for(flashattn::forward_workspace_bytes(a, c.ctx), q, c.ctx);
    flashattn::forward(a, c.ctx);
  });
  return {out, lse};
}

std::tuple<Tensor, Tensor> fwd(const Tensor& q, const Tensor& k, const Tensor& v, const OptionTensors& option_tensors,
                               at::IntArrayRef option_ints, double dropout_p, std::optional<double> softmax_scale) {
  return forward_call(q, k, v, std::nullopt, std::nullopt, std::nullopt, option_tensors, option_ints, dropout_p,
                      softmax_scale);
}

// The FP8 forward with its descale factors (forward only: no autograd
// formula, as the library has no e4m3 backward).
std::tuple<Tensor, Tensor> fwd_fp8(const Tensor& q, const Tensor& k, const Tensor& v,
                                   const std::optional<Tensor>& q_descale, const std::optional<Tensor>& k_descale,
                                   const std::optional<Tensor>& v_descale, const OptionTensors& option_tensors,
                                   at::IntArrayRef option_ints, double dropout_p, std::optional<double> softmax_scale) {
  return forward_call(q, k, v, q_descale, k_descale, v_descale, option_tensors, option_ints, dropout_p,
                      softmax_scale);
}

std::tuple<Tensor, Tensor, Tensor> bwd(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                       const Tensor& out, const Tensor& lse, const OptionTensors& option_tensors,
                                       at::IntArrayRef option_ints, double dropout_p,
                                       std::optional<double> softmax_scale) {
  CallOptions c = make_options(q, option_tensors, option_ints, dropout_p, softmax_scale);
  for (auto [t, name] : {std::pair{&k, "k"}, {&v, "v"}, {&out, "out"}, {&dout, "dout"}, {&lse, "lse"}})
    check_same_device(*t, q, name);
  // The inputs' checks (views) first: lse_shape reads the sizes of q.
  flashattn::BackwardArgs a;
  a.q = view(q, "q", c.is_varlen);
  a.k = view(k, "k", c.is_varlen);
  a.v = view(v, "v", c.is_varlen);
  a.o = view(out, "out", c.is_varlen);
  a.dout = view(dout, "dout", c.is_varlen);
  const LseShape want = lse_shape(q, c.is_varlen);
  FLASHATTN_CHECK(lse.scalar_type() == at::kFloat && lse.is_contiguous() && lse.sizes() == at::IntArrayRef(want),
                  "flashattn: lse: expected a contiguous float32 tensor of shape ", at::IntArrayRef(want), ", got ",
                  lse.scalar_type(), " ", shape_str(lse));
  DeviceScope scope(q, c.ctx);
  Tensor dq = new_output(q, c.is_varlen), dk = new_output(k, c.is_varlen), dv = new_output(v, c.is_varlen);
  a.lse = lse.data_ptr<float>();
  a.dq = view(dq, "dq", c.is_varlen);
  a.dk = view(dk, "dk", c.is_varlen);
  a.dv = view(dv, "dv", c.is_varlen);
  a.options = c.options;
  a.deterministic = c.deterministic;
  surface_errors([&] {
    Tensor ws = workspace_for(flashattn::backward_workspace_bytes(a, c.ctx), q, c.ctx);
    flashattn::backward(a, c.ctx);
  });
  return {dq, dk, dv};
}

// Attention over a KV cache (flashattn::forward_kvcache): k_cache and v_cache
// are written in place at the appended rows (declared in the schema).
// Shapes the library cannot see through its pointers (the index tensors'
// lengths) are checked here.
std::tuple<Tensor, Tensor> fwd_kvcache(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                                       const std::optional<Tensor>& k, const std::optional<Tensor>& v,
                                       const Tensor& cache_seqlens, const std::optional<Tensor>& block_table,
                                       const std::optional<Tensor>& cache_batch_idx,
                                       const std::optional<Tensor>& rotary_cos, const std::optional<Tensor>& rotary_sin,
                                       bool rotary_interleaved, std::optional<double> softmax_scale, bool causal,
                                       int64_t window_left, int64_t window_right, int64_t num_splits) {
  FLASHATTN_CHECK(q.device().is_cpu() || q.device().is_cuda(), "flashattn: q.device: expected cpu or cuda, got ",
                  q.device());
  flashattn::Context ctx;
  ctx.device = q.device().is_cuda() ? flashattn::Device::cuda : flashattn::Device::cpu;
  if (ctx.device == flashattn::Device::cpu) ctx.num_threads = at::get_num_threads();
  flashattn::KvCacheArgs a;
  a.q = view(q, "q", false);
  a.k_cache = view(k_cache, "k_cache", false);
  check_like_q(k_cache, q, "k_cache");
  a.v_cache = view(v_cache, "v_cache", false);
  check_like_q(v_cache, q, "v_cache");
  const int64_t batch = q.size(0);
  FLASHATTN_CHECK(k.has_value() == v.has_value(), "flashattn: k / v: expected both or neither, got only one");
  if (k) {
    a.k_new = view(*k, "k", false);
    check_like_q(*k, q, "k");
    a.v_new = view(*v, "v", false);
    check_like_q(*v, q, "v");
  }
  const auto index = [&](const std::optional<Tensor>& t, const char* name, int64_t dim) -> const int32_t* {
    if (!t) return nullptr;
    FLASHATTN_CHECK(t->dim() == dim && t->size(0) == batch, "flashattn: ", name, ": expected a ", dim,
                    "-D tensor with batch = ", batch, " rows, got shape ", shape_str(*t));
    return int32_data(t, q, name);
  };
  a.cache_seqlens = index(cache_seqlens, "cache_seqlens", 1);
  a.block_table = index(block_table, "block_table", 2);
  if (block_table) {
    // An empty table's data pointer is null, which the library reads as no
    // table at all.
    FLASHATTN_CHECK(block_table->size(1) >= 1, "flashattn: block_table: expected at least one page a sequence, got "
                    "shape ", shape_str(*block_table));
    a.max_blocks_per_seq = block_table->size(1);
  }
  a.cache_batch_idx = index(cache_batch_idx, "cache_batch_idx", 1);
  FLASHATTN_CHECK(rotary_cos.has_value() == rotary_sin.has_value(),
                  "flashattn: rotary_cos / rotary_sin: expected both or neither, got only one");
  if (rotary_cos) {
    for (auto [t, name] : {std::pair{&*rotary_cos, "rotary_cos"}, {&*rotary_sin, "rotary_sin"}}) {
      FLASHATTN_CHECK(t->dim() == 2 && t->sizes() == rotary_cos->sizes() && t->is_contiguous(), "flashattn: ", name,
                      ": expected a contiguous (seqlen_ro, rotary_dim / 2) tensor like rotary_cos ",
                      shape_str(*rotary_cos), ", got ", shape_str(*t));
      FLASHATTN_CHECK(t->scalar_type() == rotary_cos->scalar_type(), "flashattn: ", name,
                      ".dtype: expected the dtype of rotary_cos (", rotary_cos->scalar_type(), "), got ",
                      t->scalar_type());
      check_same_device(*t, q, name);
    }
    // rotary_dim 0 would read as no rotary (and an empty tensor's data
    // pointer is null).
    FLASHATTN_CHECK(rotary_cos->size(1) >= 1, "flashattn: rotary_cos: expected rotary_dim / 2 >= 1 columns, got shape ",
                    shape_str(*rotary_cos));
    a.rotary_cos = rotary_cos->data_ptr();
    a.rotary_sin = rotary_sin->data_ptr();
    a.rotary_dtype = to_dtype(*rotary_cos, "rotary_cos");
    a.rotary_seqlen = rotary_cos->size(0);
    a.rotary_dim = 2 * rotary_cos->size(1);
    a.rotary_interleaved = rotary_interleaved;
  }
  if (softmax_scale) a.options.softmax_scale = static_cast<float>(*softmax_scale);
  a.options.causal = causal;
  a.options.window_left = window_left;
  a.options.window_right = window_right;
  FLASHATTN_CHECK(num_splits >= 0 && num_splits <= 128, "flashattn: num_splits: expected 0 (heuristic) to 128, got ",
                  num_splits);
  a.num_splits = static_cast<int>(num_splits);
  DeviceScope scope(q, ctx);
  Tensor out = at::empty(q.sizes(), q.options());
  Tensor lse = at::empty(lse_shape(q, false), q.options().dtype(at::kFloat));
  a.o = view(out, "out", false);
  a.lse = lse.data_ptr<float>();
  surface_errors([&] { flashattn::forward_kvcache(a, ctx); });
  return {out, lse};
}

// The operators' dispatcher handles, looked up once. Calls through them
// below the Autograd key reach the device kernels (or, under torch.compile,
// the fake ones).
const c10::TypedOperatorHandle<decltype(fwd)>& fwd_handle() {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("flashattn::fwd", "").typed<decltype(fwd)>();
  return op;
}
const c10::TypedOperatorHandle<decltype(bwd)>& bwd_handle() {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("flashattn::bwd", "").typed<decltype(bwd)>();
  return op;
}

// The autograd formula: dq, dk, dv from bwd with the forward's options; the
// LSE output is not differentiable (returned for inspection, as in
// flash-attn). Both operators are called through the dispatcher below the
// Autograd key, so under torch.compile they trace to their fake kernels.
struct FwdWithGrad : public torch::autograd::Function<FwdWithGrad> {
  static constexpr int kInputs = 7;  // q, k, v and the four packed options

  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const Tensor& q,
                                                const Tensor& k, const Tensor& v, const OptionTensors& option_tensors,
                                                at::IntArrayRef option_ints, double dropout_p,
                                                std::optional<double> softmax_scale) {
    Tensor out, lse;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      std::tie(out, lse) = fwd_handle().call(q, k, v, option_tensors, option_ints, dropout_p, softmax_scale);
    }
    // The option tensors are saved as tensors (None as undefined), so that an
    // in-place change to one before the backward is caught like any other;
    // an empty list (all None) saves none of them (a saved variable costs
    // even when undefined). fwd has checked the lists' lengths.
    std::vector<Tensor> saved{q, k, v, out, lse};
    if (!option_tensors.empty()) {
      saved.reserve(5 + topt::count);
      for (std::size_t i = 0; i < topt::count; ++i) {
        const std::optional<Tensor> t = option_tensors.get(i);
        saved.push_back(t ? *t : Tensor());
      }
    }
    ctx->save_for_backward(std::move(saved));
    auto& d = ctx->saved_data;
    d["option_ints"] = option_ints;
    d["dropout_p"] = dropout_p;
    d["softmax_scale"] = softmax_scale ? c10::IValue(*softmax_scale) : c10::IValue();
    ctx->mark_non_differentiable({lse});
    return {out, lse};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const auto& d = ctx->saved_data;
    Tensor dout = grads[0].defined() ? grads[0] : at::zeros_like(s[3]);
    if (dout.dim() > 0 && dout.stride(-1) != 1) dout = dout.contiguous();
    OptionTensors option_tensors;  // empty when the forward's was
    if (s.size() > 5) {
      option_tensors.reserve(topt::count);
      for (std::size_t i = 0; i < topt::count; ++i)
        option_tensors.push_back(s[5 + i].defined() ? std::optional<Tensor>(s[5 + i]) : std::nullopt);
    }
    const std::vector<int64_t> option_ints = d.at("option_ints").toIntVector();
    const c10::IValue& scale = d.at("softmax_scale");
    auto [dq, dk, dv] = bwd_handle().call(dout, s[0], s[1], s[2], s[3], s[4], option_tensors, option_ints,
                                          d.at("dropout_p").toDouble(),
                                          scale.isNone() ? std::nullopt : std::optional<double>(scale.toDouble()));
    torch::autograd::variable_list g{dq, dk, dv};
    g.resize(kInputs);  // no gradient for the options
    return g;
  }
};

// Without a gradient to record (inference, no_grad, inputs that do not
// require grad) the call goes straight below the Autograd key: building the
// autograd node and saving its state was 3 of the 13 us a call costs on the
// CPU machine from Python (seqlen 0, so no kernel work).
std::tuple<Tensor, Tensor> fwd_autograd(const Tensor& q, const Tensor& k, const Tensor& v,
                                        const OptionTensors& option_tensors, at::IntArrayRef option_ints,
                                        double dropout_p, std::optional<double> softmax_scale) {
  if (!at::GradMode::is_enabled() || !(q.requires_grad() || k.requires_grad() || v.requires_grad())) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return fwd_handle().call(q, k, v, option_tensors, option_ints, dropout_p, softmax_scale);
  }
  auto r = FwdWithGrad::apply(q, k, v, option_tensors, option_ints, dropout_p, softmax_scale);
  return {r[0], r[1]};
}

Tensor dropout_mask(int64_t seed, int64_t offset, double dropout_p, int64_t batch, int64_t heads_q, int64_t head,
                    int64_t rows, int64_t cols) {
  // The library's bounds on rows and cols, before the output is allocated
  // (a huge one would fail in the allocator, naming neither).
  FLASHATTN_CHECK(rows >= 0 && rows <= INT32_MAX, "flashattn: rows: expected in [0, 2^31), got ", rows);
  FLASHATTN_CHECK(cols >= 0 && cols <= INT32_MAX, "flashattn: cols: expected in [0, 2^31), got ", cols);
  Tensor keep;
  try {
    keep = at::empty({rows, cols}, at::TensorOptions().dtype(at::kBool));
  } catch (const c10::Error&) {
    FLASHATTN_CHECK(false, "flashattn: rows / cols: expected a rows x cols mask that can be allocated, got ", rows,
                    " x ", cols);
  }
  surface_errors([&] {
    flashattn::dropout_mask(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), static_cast<float>(dropout_p),
                            batch, heads_q, head, rows, cols, reinterpret_cast<std::uint8_t*>(keep.data_ptr()));
  });
  return keep;
}

bool built_with_cuda() {
#ifdef FLASHATTN_TORCH_CUDA
  return true;
#else
  return false;
#endif
}

bool supports(const std::string& device, at::ScalarType dtype, int64_t head_dim, int64_t algorithm) {
  flashattn::DType dt;
  switch (dtype) {
    case at::kFloat:
      dt = flashattn::DType::f32;
      break;
    case at::kHalf:
      dt = flashattn::DType::f16;
      break;
    case at::kBFloat16:
      dt = flashattn::DType::bf16;
      break;
    case at::kDouble:
      dt = flashattn::DType::f64;
      break;
    case at::kFloat8_e4m3fn:
      dt = flashattn::DType::e4m3;
      break;
    default:
      return false;
  }
  const auto alg = algorithm == 1 ? flashattn::Algorithm::standard : flashattn::Algorithm::flash;
  if (device == "cpu") return flashattn::supports(flashattn::Device::cpu, alg, dt, head_dim);
  if (device == "cuda") return built_with_cuda() && flashattn::supports(flashattn::Device::cuda, alg, dt, head_dim);
  return false;
}

std::string library_version() { return flashattn::version(); }

// The packing order, for flashattn/_ops.py to check its own against.
std::tuple<std::vector<std::string>, std::vector<std::string>> option_names() {
  return {{std::begin(kTensorOptionNames), std::end(kTensorOptionNames)},
          {std::begin(kIntOptionNames), std::end(kIntOptionNames)}};
}

}  // namespace

TORCH_LIBRARY(flashattn, m) {
  m.def("fwd(Tensor q, Tensor k, Tensor v, " FLASHATTN_OPTIONS_SCHEMA ") -> (Tensor out, Tensor lse)");
  m.def("bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, " FLASHATTN_OPTIONS_SCHEMA
        ") -> (Tensor dq, Tensor dk, Tensor dv)");
  m.def("fwd_fp8(Tensor q, Tensor k, Tensor v, Tensor? q_descale, Tensor? k_descale, Tensor? v_descale, "
        FLASHATTN_OPTIONS_SCHEMA ") -> (Tensor out, Tensor lse)");
  // Helpers without tensor inputs: one kernel for every dispatch key.
  m.def(
      "dropout_mask(int seed, int offset, float dropout_p, int batch, int heads_q, int head, int rows, int cols) "
      "-> Tensor",
      &dropout_mask);
  m.def(
      "fwd_kvcache(Tensor q, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor? k, Tensor? v, Tensor cache_seqlens, "
      "Tensor? block_table, Tensor? cache_batch_idx, Tensor? rotary_cos, Tensor? rotary_sin, bool rotary_interleaved, "
      "float? softmax_scale, bool causal, int window_left, int window_right, int num_splits) -> (Tensor out, Tensor lse)");
  m.def("supports(str device, ScalarType dtype, int head_dim, int algorithm) -> bool", &supports);
  m.def("built_with_cuda() -> bool", &built_with_cuda);
  m.def("version() -> str", &library_version);
  m.def("option_names() -> (str[] option_tensors, str[] option_ints)", &option_names);
}

TORCH_LIBRARY_IMPL(flashattn, Autograd, m) { m.impl("fwd", &fwd_autograd); }

TORCH_LIBRARY_IMPL(flashattn, CPU, m) {
  m.impl("fwd", &fwd);
  m.impl("fwd_fp8", &fwd_fp8);
  m.impl("bwd", &bwd);
  m.impl("fwd_kvcache", &fwd_kvcache);
}

#ifdef FLASHATTN_TORCH_CUDA
TORCH_LIBRARY_IMPL(flashattn, CUDA, m) {
  m.impl("fwd", &fwd);
  m.impl("fwd_fp8", &fwd_fp8);
  m.impl("bwd", &bwd);
  m.impl("fwd_kvcache", &fwd_kvcache);
}
#endif
