// The CUDA backend's entry points (src/backends.h): resolves a validated
// Problem into kernel Params, picks the kernel from the dispatch table and
// launches on the caller's stream. Nothing here synchronises; scratch memory
// comes from the caller's workspace or, when none was given, from
// stream-ordered cudaMallocAsync / cudaFreeAsync.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <string>

#include "backends.h"
#include "common/fail.h"
#include "common.cuh"
#include "dispatch.h"
#include "common/kvcache.h"
#include "sm80/kvcache.h"
#include "sm80/launch.h"
#include "sm90/fp8_vt.h"
#include "sm90/launch.h"
#include "standard.h"

namespace flashattn::detail {
namespace {

using cuda::check;
using cuda::Params;

void require_sm80() {
  const auto [major, minor] = cuda::device_compute_capability();
  if (major < 8)
    fail("ctx.device", "a CUDA GPU of compute capability >= 8.0 for the flash kernels",
         "compute capability " + std::to_string(major) + "." + std::to_string(minor));
}

void set_strides(const Tensor& t, bool varlen, std::int64_t& sb, std::int64_t& ss, std::int64_t& sh) {
  sb = varlen ? 0 : t.stride_batch;
  ss = t.stride_seq;
  sh = t.stride_head;
}

Params make_params(const Problem& pr, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o) {
  if (pr.heads_q > 65535) fail("q.heads", "<= 65535 on CUDA (grid dimension)", std::to_string(pr.heads_q));
  if (pr.batch > 65535) fail("batch", "<= 65535 on CUDA (grid dimension)", std::to_string(pr.batch));
  Params p;
  const bool vl = pr.is_varlen();
  p.q = q.data;
  p.k = k.data;
  p.v = v.data;
  p.o = o.data;
  set_strides(q, vl, p.q_sb, p.q_ss, p.q_sh);
  set_strides(k, vl, p.k_sb, p.k_ss, p.k_sh);
  set_strides(v, vl, p.v_sb, p.v_ss, p.v_sh);
  set_strides(o, vl, p.o_sb, p.o_ss, p.o_sh);
  p.batch = static_cast<int>(pr.batch);
  p.heads_q = static_cast<int>(pr.heads_q);
  p.heads_k = static_cast<int>(pr.heads_k);
  p.group = static_cast<int>(pr.group());
  p.seqlen_q = static_cast<int>(pr.seqlen_q);
  p.seqlen_k = static_cast<int>(pr.seqlen_k);
  p.total_q = q.seqlen;
  p.total_k = k.seqlen;
  if (vl) {
    p.cu_q = pr.varlen->cu_seqlens_q;
    p.cu_k = pr.varlen->cu_seqlens_k;
  }
  p.scale = pr.scale;
  p.scale_log2 = static_cast<float>(static_cast<double>(pr.scale) * 1.4426950408889634);
  p.window = pr.window;
  p.has_dropout = pr.has_dropout();
  p.keep_scale = static_cast<float>(1.0 / (1.0 - static_cast<double>(pr.dropout_p)));
  p.dropout = DropoutStream::make(pr.seed, pr.offset, pr.dropout_p);
  if (const BlockMask* m = pr.block_mask) {
    if (m->block_q % cuda::kSparseBlockQMultiple != 0)
      fail("block_mask.block_q", "a multiple of " + std::to_string(cuda::kSparseBlockQMultiple) +
                                     " on CUDA (the flash kernels' query tile)", std::to_string(m->block_q));
    if (m->block_k % cuda::kSparseBlockKMultiple != 0)
      fail("block_mask.block_k", "a multiple of " + std::to_string(cuda::kSparseBlockKMultiple) +
                                     " on CUDA (the flash kernels' key tile)", std::to_string(m->block_k));
    p.bm_count = m->kv_count;
    p.bm_idx = m->kv_indices;
    p.bm_fcount = m->full_kv_count;
    p.bm_fidx = m->full_kv_indices;
    p.bm_batch = static_cast<int>(m->batch);
    p.bm_heads = static_cast<int>(m->heads);
    p.bm_nqb = static_cast<int>(m->num_q_blocks);
    p.bm_nkb = static_cast<int>(m->num_k_blocks);
    p.block_q = static_cast<int>(m->block_q);
    p.block_k = static_cast<int>(m->block_k);
  }
  return p;
}

// ------------------------------------------------ kernel family choice ---
// THE switch between the kernel families of the flash forward and
// backward, in one place: Context::cuda_kernels (flashattn.h), overridden
// by the environment variable FLASHATTN_CUDA_KERNELS when it is set and
// not empty ("sm80" or "sm90"; anything else is an Error naming it), read
// at every call. Both families read and write O, LSE and the gradients in
// the same layout, so a forward of one may be followed by a backward of
// the other.
enum class KernelFamily { sm80, sm90 };

CudaKernels kernel_choice(const Context& ctx) {
  const char* env = std::getenv("FLASHATTN_CUDA_KERNELS");
  const std::string choice = env == nullptr ? "" : env;
  if (choice == "sm80") return CudaKernels::sm80;
  if (choice == "sm90") return CudaKernels::sm90;
  if (!choice.empty()) fail("FLASHATTN_CUDA_KERNELS", "unset, \"sm80\" or \"sm90\"", "\"" + choice + "\"");
  switch (ctx.cuda_kernels) {
    case CudaKernels::automatic:
    case CudaKernels::sm80:
    case CudaKernels::sm90: return ctx.cuda_kernels;
  }
  fail("ctx.cuda_kernels", "automatic, sm80 or sm90", std::to_string(static_cast<int>(ctx.cuda_kernels)));
}

// Why the Hopper kernel of one direction cannot take a problem (empty: it
// can): the argument, what it would need, what it got.
struct Refusal {
  std::string arg, expected, actual;
  explicit operator bool() const { return !arg.empty(); }
};

// Why TMA cannot map one of the tensors (empty: it can).
Refusal tma_refusal(std::initializer_list<const Tensor*> tma_tensors) {
  // TMA: strides below 2^40 bytes (validation already made them 16-byte
  // multiples and the bases 16-byte aligned), row coordinates below 2^31
  // (a packed varlen tensor is mapped as one sequence of all its rows).
  for (const Tensor* t : tma_tensors) {
    for (std::int64_t st : {t->stride_seq, t->stride_head, t->stride_batch})
      if (st < 0 || st * 2 >= (std::int64_t{1} << 40))
        return {"tensor strides", "0 <= stride < 2^39 elements (TMA)", std::to_string(st)};
    if (t->seqlen >= (std::int64_t{1} << 31))
      return {"tensor rows", "fewer than 2^31 rows a tensor (TMA coordinates)", std::to_string(t->seqlen)};
  }
  return {};
}

// What both Hopper kernels need: the GPU, the dtype, a head_dim of their
// table, strides and extents TMA can encode.
template <const auto& kTable>
Refusal sm90_common_refusal(const Problem& pr, std::initializer_list<const Tensor*> tma_tensors) {
  const auto [major, minor] = cuda::device_compute_capability();
  // sm_90a machine code runs on 9.0 only (not on later major versions).
  if (major != 9 || minor != 0)
    return {"ctx.device", "a GPU of compute capability 9.0",
            "compute capability " + std::to_string(major) + "." + std::to_string(minor)};
  if (pr.dtype != DType::f16 && pr.dtype != DType::bf16) return {"q.dtype", "f16 or bf16", to_string(pr.dtype)};
  if (!cuda::has_head_dim<kTable>(pr.head_dim))
    return {"q.head_dim", cuda::head_dims_text<kTable>(), std::to_string(pr.head_dim)};
  return tma_refusal(tma_tensors);
}

// The FP8 (e4m3) forward exists as the Hopper kernel only: an Error naming
// why it cannot run here, before any work.
void require_fp8_path(const Problem& pr, const ForwardArgs& a, const Context& ctx) {
  if (kernel_choice(ctx) == CudaKernels::sm80)
    fail("ctx.cuda_kernels",
         "automatic or sm90 with e4m3 inputs (the FP8 forward is a Hopper kernel; FLASHATTN_CUDA_KERNELS, when set, "
         "overrides ctx.cuda_kernels)",
         "sm80");
  const auto [major, minor] = cuda::device_compute_capability();
  if (major != 9 || minor != 0)
    fail("ctx.device", "a GPU of compute capability 9.0 (H100, H200) for e4m3 inputs (the FP8 forward is a Hopper kernel)",
         "compute capability " + std::to_string(major) + "." + std::to_string(minor));
  if (const Refusal r = tma_refusal({&a.q, &a.k, &a.v, &a.o})) fail(r.arg, r.expected + " (the FP8 forward)", r.actual);
}

// Bytes of the FP8 forward's V^T copy (sm90/fp8_vt.h).
std::size_t fp8_workspace_bytes(const Problem& pr, const ForwardArgs& a) {
  return sm90::fp8_vt_bytes(pr.is_varlen(), pr.is_varlen() ? a.k.seqlen : pr.seqlen_k, pr.batch, pr.heads_k,
                            pr.head_dim);
}

// `what` is "forward" or "backward".
[[noreturn]] void sm90_unsupported(const char* what, const std::string& arg, const std::string& expected,
                                   const std::string& actual) {
  fail(arg,
       expected + " for the sm90 " + what +
           " (ctx.cuda_kernels or FLASHATTN_CUDA_KERNELS asks for sm90; automatic takes the portable kernels here)",
       actual);
}

// The family for one direction: sm80 when asked, sm90 when asked (or an
// Error saying why it cannot), and automatically sm90 wherever it can.
KernelFamily choose(CudaKernels choice, const char* what, const Refusal& refusal) {
  switch (choice) {
    case CudaKernels::sm80: return KernelFamily::sm80;
    case CudaKernels::sm90:
      if (refusal) sm90_unsupported(what, refusal.arg, refusal.expected, refusal.actual);
      return KernelFamily::sm90;
    case CudaKernels::automatic: break;
  }
  return refusal ? KernelFamily::sm80 : KernelFamily::sm90;
}

KernelFamily forward_path(const Problem& pr, const ForwardArgs& a, const Context& ctx) {
  const CudaKernels choice = kernel_choice(ctx);
  if (choice == CudaKernels::sm80) return KernelFamily::sm80;
  return choose(choice, "forward", sm90_common_refusal<cuda::kSm90FwdTiles>(pr, {&a.q, &a.k, &a.v, &a.o}));
}

KernelFamily backward_path(const Problem& pr, const BackwardArgs& a, const Context& ctx) {
  const CudaKernels choice = kernel_choice(ctx);
  if (choice == CudaKernels::sm80) return KernelFamily::sm80;
  Refusal r = sm90_common_refusal<cuda::kSm90BwdTiles>(pr, {&a.q, &a.k, &a.v, &a.dout});
  // The sm90 backward adds dQ with fp32 atomics (its order, hence the last
  // bits of dq, varies from run to run) except at the head dims with a dQ
  // pass (kSm90BwdTiles), which write each dq element once.
  if (!r && a.deterministic && !cuda::sm90_bwd_tile(static_cast<int>(pr.head_dim)).dq_pass)
    r = {"deterministic", "false (the deterministic dQ is not implemented there at this head_dim)", "true"};
  return choose(choice, "backward", r);
}

// Calls launch.template operator()<T, kD>() for the problem's dtype and the
// row of kTable with its head_dim (the sm80 table, or a Hopper one).
template <const auto& kTable, class Launch>
void dispatch(DType dtype, std::int64_t head_dim, Launch&& launch) {
  auto by_head_dim = [&](auto type_tag) {
    using T = decltype(type_tag);
    const bool found = cuda::with_head_dim<kTable>(static_cast<int>(head_dim),
                                                   [&](auto d) { launch.template operator()<T, decltype(d)::value>(); });
    if (!found) fail("q.head_dim", "one of " + cuda::head_dims_text<kTable>() + " (the CUDA dispatch table)",
                     std::to_string(head_dim));
  };
  if (dtype == DType::f16) by_head_dim(__half{});
  else if (dtype == DType::bf16) by_head_dim(__nv_bfloat16{});
  else fail("q.dtype", "f16 or bf16 on CUDA (flash)", to_string(dtype));
}

bool empty(const Problem& pr) { return pr.batch == 0 || (pr.seqlen_q == 0 && pr.seqlen_k == 0); }

// Backward scratch, in this order, each part 256-byte aligned:
//   dsum      float[rows_q]                 D = rowsum(dO * O)
//   states    uint8[mask rows * nkb]        block-sparse only: BlockState of
//                                           every (query block, key block)
//   t_count   int32[mask bh * nkb]          block-sparse only: the transposed
//   t_idx     int32[mask bh * nkb * nqb]    lists (Params::bm_t_count)
//   dq_accum  float[rows_q * d]             atomic (non-deterministic) mode only,
//                                           and not where the sm90 dQ pass writes dq
//   dk_accum, dv_accum float[rows_kv * d]   GQA/MQA only (per query head)
// rows_q = batch * heads_q * seqlen_q (varlen: heads_q * total_q), rows_kv likewise.
struct BwdLayout {
  std::size_t dsum = 0, states = 0, t_count = 0, t_idx = 0, dq = 0, dk = 0, dv = 0, total = 0;
};

std::size_t align256(std::size_t n) { return (n + 255) / 256 * 256; }

// Whether the backward of `path` adds dQ into the fp32 scratch.
bool needs_dq_scratch(const Problem& pr, const BackwardArgs& a, KernelFamily path) {
  if (a.deterministic) return false;
  return !(path == KernelFamily::sm90 && cuda::sm90_bwd_tile(static_cast<int>(pr.head_dim)).dq_pass);
}

BwdLayout bwd_layout(const Problem& pr, const BackwardArgs& a, KernelFamily path) {
  const std::size_t rows_q = static_cast<std::size_t>(pr.heads_q) *
                             (pr.is_varlen() ? a.q.seqlen : pr.batch * pr.seqlen_q);
  const std::size_t rows_kv = static_cast<std::size_t>(pr.heads_q) *
                              (pr.is_varlen() ? a.k.seqlen : pr.batch * pr.seqlen_k);
  const std::size_t d = static_cast<std::size_t>(pr.head_dim);
  BwdLayout l;
  l.dsum = 0;
  std::size_t at = align256(rows_q * sizeof(float));
  if (const BlockMask* m = pr.block_mask) {
    const auto bh = static_cast<std::size_t>(m->batch * m->heads);
    const auto nqb = static_cast<std::size_t>(m->num_q_blocks), nkb = static_cast<std::size_t>(m->num_k_blocks);
    l.states = at;
    at += align256(bh * nqb * nkb);
    l.t_count = at;
    at += align256(bh * nkb * sizeof(std::int32_t));
    l.t_idx = at;
    at += align256(bh * nkb * nqb * sizeof(std::int32_t));
  }
  if (needs_dq_scratch(pr, a, path)) {
    l.dq = at;
    at += align256(rows_q * d * sizeof(float));
  }
  if (pr.group() > 1) {
    l.dk = at;
    at += align256(rows_kv * d * sizeof(float));
    l.dv = at;
    at += align256(rows_kv * d * sizeof(float));
  }
  l.total = at;
  return l;
}

// The backward walks key blocks and asks, for each query tile, whether its
// block is kept: answered from the query-major lists that would be a scan
// per question (O(n_kept) per tile, so O(n^3) per head; at 64K tokens it made
// the sparse backward slower than the dense one). One block per mask row
// writes that row of a dense table instead, once per call; full first, then
// partial, so that a block in both lists is partial as in the CPU backend.
__global__ void fill_block_states(const Params p, std::uint8_t* states) {
  const std::int64_t row = blockIdx.x;
  std::uint8_t* out = states + row * p.bm_nkb;
  if (p.bm_fcount) {
    const int n = cuda::clamp_count(p.bm_fcount[row], p.bm_nkb);
    for (int e = static_cast<int>(threadIdx.x); e < n; e += static_cast<int>(blockDim.x)) {
      const int kb = p.bm_fidx[row * p.bm_nkb + e];
      if (kb >= 0 && kb < p.bm_nkb) out[kb] = cuda::kFull;
    }
  }
  __syncthreads();
  const int n = cuda::clamp_count(p.bm_count[row], p.bm_nkb);
  for (int e = static_cast<int>(threadIdx.x); e < n; e += static_cast<int>(blockDim.x)) {
    const int kb = p.bm_idx[row * p.bm_nkb + e];
    if (kb >= 0 && kb < p.bm_nkb) out[kb] = cuda::kPartial;
  }
}

// The transposed lists from the state table: one warp a (mask (batch,
// head), key block), walking the query blocks 32 at a time in increasing
// order and compacting the listed ones with a ballot. The backward's dK/dV
// sweeps read them (QueryTiles) instead of scanning the table, so their
// cost falls with the density.
__global__ void transpose_block_lists(const Params p, const std::uint8_t* states, std::int32_t* t_count,
                                      std::int32_t* t_idx) {
  const std::int64_t warp = (static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x % 32);
  const std::int64_t bh = warp / p.bm_nkb;
  const int kb = static_cast<int>(warp % p.bm_nkb);
  if (bh >= static_cast<std::int64_t>(p.bm_batch) * p.bm_heads) return;
  std::int32_t* out = t_idx + (bh * p.bm_nkb + kb) * p.bm_nqb;
  int n = 0;
  for (int q0 = 0; q0 < p.bm_nqb; q0 += 32) {
    const int qb = q0 + lane;
    const int st = qb < p.bm_nqb ? states[(bh * p.bm_nqb + qb) * p.bm_nkb + kb] : cuda::kSkip;
    const unsigned listed = __ballot_sync(0xffffffffu, st != cuda::kSkip);
    if (st != cuda::kSkip) out[n + __popc(listed & ((1u << lane) - 1u))] = 2 * qb + (st == cuda::kFull ? 1 : 0);
    n += __popc(listed);
  }
  if (lane == 0) t_count[bh * p.bm_nkb + kb] = n;
}

}  // namespace

std::size_t cuda_forward_workspace_bytes(const Problem& p, const ForwardArgs& a, const Context& ctx) {
  if (ctx.algorithm == Algorithm::standard) return cuda_standard_forward_workspace_bytes(p, a, ctx);
  if (p.dtype == DType::e4m3 && !empty(p) && p.seqlen_q > 0) {
    require_fp8_path(p, a, ctx);
    return fp8_workspace_bytes(p, a);  // V^T
  }
  return 0;  // the 16-bit forward keeps everything in registers and shared memory
}

std::size_t cuda_backward_workspace_bytes(const Problem& p, const BackwardArgs& a, const Context& ctx) {
  if (ctx.algorithm == Algorithm::standard) return cuda_standard_backward_workspace_bytes(p, a, ctx);
  if (empty(p)) return 0;
  require_sm80();
  return bwd_layout(p, a, backward_path(p, a, ctx)).total;
}

void cuda_forward(const Problem& pr, const ForwardArgs& a, const Context& ctx) {
  if (ctx.algorithm == Algorithm::standard) return cuda_standard_forward(pr, a, ctx);
  if (empty(pr) || pr.seqlen_q == 0) return;
  require_sm80();
  Params p = make_params(pr, a.q, a.k, a.v, a.o);
  p.out = a.o.data;
  p.lse = a.lse;
  const auto stream = static_cast<cudaStream_t>(ctx.stream);
  if (pr.dtype == DType::e4m3) {
    require_fp8_path(pr, a, ctx);
    p.q_descale = pr.q_descale;
    p.k_descale = pr.k_descale;
    p.v_descale = pr.v_descale;
    p.vt_len = sm90::fp8_vt_len(pr.is_varlen(), pr.is_varlen() ? a.k.seqlen : pr.seqlen_k, pr.batch);
    cuda::Scratch scratch(ctx, fp8_workspace_bytes(pr, a), stream, "see forward_workspace_bytes");
    p.vt = reinterpret_cast<std::uint8_t*>(scratch.bytes());
    const bool found = cuda::with_head_dim<cuda::kSm90Fp8FwdTiles>(
        static_cast<int>(pr.head_dim), [&](auto d) { sm90::launch_forward_e4m3<decltype(d)::value>(p, stream); });
    if (!found) fail("q.head_dim", cuda::fp8_head_dims_text(), std::to_string(pr.head_dim));
    return;
  }
  if (forward_path(pr, a, ctx) == KernelFamily::sm90) {
    dispatch<cuda::kSm90FwdTiles>(pr.dtype, pr.head_dim,
                                  [&]<class T, int kD>() { sm90::launch_forward<T, kD>(p, stream); });
    return;
  }
  dispatch<cuda::kSm80Tiles>(pr.dtype, pr.head_dim, [&]<class T, int kD>() { sm80::launch_forward<T, kD>(p, stream); });
}

void cuda_backward(const Problem& pr, const BackwardArgs& a, const Context& ctx) {
  if (ctx.algorithm == Algorithm::standard) return cuda_standard_backward(pr, a, ctx);
  if (empty(pr)) return;
  require_sm80();
  const KernelFamily path = backward_path(pr, a, ctx);  // before any work: a refusal leaves nothing behind
  Params p = make_params(pr, a.q, a.k, a.v, a.o);
  const bool vl = pr.is_varlen();
  p.dout = a.dout.data;
  p.dq = a.dq.data;
  p.dk = a.dk.data;
  p.dv = a.dv.data;
  set_strides(a.dout, vl, p.do_sb, p.do_ss, p.do_sh);
  set_strides(a.dq, vl, p.dq_sb, p.dq_ss, p.dq_sh);
  set_strides(a.dk, vl, p.dk_sb, p.dk_ss, p.dk_sh);
  set_strides(a.dv, vl, p.dv_sb, p.dv_ss, p.dv_sh);
  p.lse = const_cast<float*>(a.lse);
  p.dq_atomic = !a.deterministic;

  const auto stream = static_cast<cudaStream_t>(ctx.stream);
  const BwdLayout l = bwd_layout(pr, a, path);
  cuda::Scratch scratch(ctx, l.total, stream, "see backward_workspace_bytes");
  char* ws = scratch.bytes();
  p.dsum = reinterpret_cast<float*>(ws + l.dsum);
  if (p.is_sparse()) {
    auto* states = reinterpret_cast<std::uint8_t*>(ws + l.states);
    const std::int64_t rows = static_cast<std::int64_t>(p.bm_batch) * p.bm_heads * p.bm_nqb;
    check(cudaMemsetAsync(states, cuda::kSkip, static_cast<std::size_t>(rows * p.bm_nkb), stream),
          "cudaMemsetAsync(block states)");
    auto* t_count = reinterpret_cast<std::int32_t*>(ws + l.t_count);
    auto* t_idx = reinterpret_cast<std::int32_t*>(ws + l.t_idx);
    if (rows > 0) {
      fill_block_states<<<static_cast<unsigned>(rows), 128, 0, stream>>>(p, states);
      check(cudaGetLastError(), "fill_block_states");
      const std::int64_t warps = static_cast<std::int64_t>(p.bm_batch) * p.bm_heads * p.bm_nkb;
      if (warps > 0) {
        transpose_block_lists<<<static_cast<unsigned>((warps + 3) / 4), 128, 0, stream>>>(p, states, t_count, t_idx);
        check(cudaGetLastError(), "transpose_block_lists");
      }
    }
    p.bm_states = states;
    p.bm_t_count = t_count;
    p.bm_t_idx = t_idx;
  }
  if (needs_dq_scratch(pr, a, path)) {
    p.dq_accum = reinterpret_cast<float*>(ws + l.dq);
    const std::size_t dq_end = pr.group() > 1 ? l.dk : l.total;
    check(cudaMemsetAsync(p.dq_accum, 0, dq_end - l.dq, stream), "cudaMemsetAsync(dq_accum)");
  }
  if (pr.group() > 1) {
    p.dk_accum = reinterpret_cast<float*>(ws + l.dk);
    p.dv_accum = reinterpret_cast<float*>(ws + l.dv);
  }
  if (path == KernelFamily::sm90) {
    dispatch<cuda::kSm90BwdTiles>(pr.dtype, pr.head_dim,
                                  [&]<class T, int kD>() { sm90::launch_backward<T, kD>(p, stream); });
    return;
  }
  dispatch<cuda::kSm80Tiles>(pr.dtype, pr.head_dim,
                             [&]<class T, int kD>() { sm80::launch_backward<T, kD>(p, stream); });
}

// KV cache (sm80/kvcache.cuh). Scratch, each part 256-byte aligned:
//   q_rot     T[batch * seqlen_q * heads_q * head_dim]   rotary only: rotated q
//   part_o    float[batch * heads_k * splits * rows * head_dim]  splits > 1 only
//   part_lse  float[batch * heads_k * splits * rows]
// rows = (heads_q / heads_k) * seqlen_q.
void cuda_forward_kvcache(const KvProblem& kp, const KvCacheArgs& a, const Context& ctx) {
  const Problem& pr = kp.base;
  if (pr.batch == 0) return;
  // Refusals first, so that a refused call leaves the cache untouched.
  if (!cuda::has_head_dim<cuda::kKvTiles>(pr.head_dim))
    fail("q.head_dim", cuda::head_dims_text<cuda::kKvTiles>() + " for forward_kvcache on CUDA (its kernel table)",
         std::to_string(pr.head_dim));
  if (pr.dtype != DType::f16 && pr.dtype != DType::bf16) fail("q.dtype", "f16 or bf16 on CUDA", to_string(pr.dtype));
  if (pr.batch > 65535) fail("batch", "<= 65535 on CUDA (grid dimension)", std::to_string(pr.batch));
  if (kp.capacity > INT32_MAX)
    fail("k_cache capacity", "< 2^31 positions a sequence on CUDA (32-bit key positions)", std::to_string(kp.capacity));
  if (kp.seqlen_new > kp.capacity)
    fail("k_new.seqlen", "<= the cache capacity " + std::to_string(kp.capacity), std::to_string(kp.seqlen_new));
  if (kp.rotary_dim > 0 && a.rotary_seqlen < 1) fail("rotary_seqlen", ">= 1 with rotary", std::to_string(a.rotary_seqlen));
  require_sm80();

  const std::int64_t sq = pr.seqlen_q, n = kp.seqlen_new, rows = pr.group() * sq;
  int splits = a.num_splits;
  if (splits == 0) {
    // Without the host lengths, the capacity stands for the longest sequence.
    std::int64_t max_len = kp.capacity;
    if (a.cache_seqlens_host != nullptr) {
      max_len = 0;
      for (std::int64_t b = 0; b < pr.batch; ++b)
        max_len = std::max<std::int64_t>(max_len, a.cache_seqlens_host[b] + n);
    }
    // Workers: the attention CTAs the GPU holds at once.
    int per_sm = 1;
    dispatch<cuda::kKvTiles>(pr.dtype, pr.head_dim, [&]<class T, int kD>() {
      per_sm = sm80::kvcache_ctas_per_sm<T, kD>(static_cast<int>(rows));
    });
    splits = kv_num_splits_heuristic(pr.batch * pr.heads_k, max_len, cuda::device_sm_count() * per_sm);
  }
  // Grid x: KV heads x 16-row tiles (at most) x splits.
  if (pr.heads_k * ((rows + 15) / 16) * splits > INT32_MAX)
    fail("q.heads * q.seqlen", "fewer than 2^31 CTAs of KV heads x 16-row tiles x splits on CUDA (grid dimension)",
         std::to_string(pr.heads_q * sq));

  sm80::KvParams p;
  p.q = a.q.data;
  p.q_sb = a.q.stride_batch;
  p.q_ss = a.q.stride_seq;
  p.q_sh = a.q.stride_head;
  p.k_cache = a.k_cache.data;
  p.v_cache = a.v_cache.data;
  p.kl = KvCacheLayout{a.k_cache.stride_batch, a.k_cache.stride_seq, a.k_cache.stride_head, kp.page_size,
                       a.max_blocks_per_seq,   a.block_table,        a.cache_batch_idx,    a.k_cache.batch};
  p.vl = KvCacheLayout{a.v_cache.stride_batch, a.v_cache.stride_seq, a.v_cache.stride_head, kp.page_size,
                       a.max_blocks_per_seq,   a.block_table,        a.cache_batch_idx,    a.v_cache.batch};
  if (n > 0) {
    p.k_new = a.k_new.data;
    p.v_new = a.v_new.data;
    p.kn_sb = a.k_new.stride_batch;
    p.kn_ss = a.k_new.stride_seq;
    p.kn_sh = a.k_new.stride_head;
    p.vn_sb = a.v_new.stride_batch;
    p.vn_ss = a.v_new.stride_seq;
    p.vn_sh = a.v_new.stride_head;
  }
  p.o = a.o.data;
  p.o_sb = a.o.stride_batch;
  p.o_ss = a.o.stride_seq;
  p.o_sh = a.o.stride_head;
  p.lse = a.lse;
  p.cache_seqlens = a.cache_seqlens;
  p.batch = static_cast<int>(pr.batch);
  p.heads_q = static_cast<int>(pr.heads_q);
  p.heads_k = static_cast<int>(pr.heads_k);
  p.group = static_cast<int>(pr.group());
  p.seqlen_q = static_cast<int>(sq);
  p.seqlen_new = static_cast<int>(n);
  p.head_dim = static_cast<int>(pr.head_dim);
  p.capacity = static_cast<int>(kp.capacity);
  p.rows = static_cast<int>(rows);
  p.splits = splits;
  p.scale_log2 = static_cast<float>(static_cast<double>(pr.scale) * 1.4426950408889634);
  p.window = pr.window;
  if (kp.rotary_dim > 0) {
    p.rot_cos = a.rotary_cos;
    p.rot_sin = a.rotary_sin;
    p.rot_f32 = a.rotary_dtype == DType::f32;
    p.rot_interleaved = a.rotary_interleaved;
    p.q_per_row = a.options.causal || a.options.window_left >= 0 || a.options.window_right >= 0;
    p.rotary_dim = static_cast<int>(kp.rotary_dim);
    p.rotary_seqlen = static_cast<int>(a.rotary_seqlen);
  }

  const std::size_t es = dtype_size(pr.dtype), d = static_cast<std::size_t>(pr.head_dim);
  const std::size_t q_rot_bytes =
      kp.rotary_dim > 0 ? align256(static_cast<std::size_t>(pr.batch * sq * pr.heads_q) * d * es) : 0;
  const std::size_t part_rows = splits > 1 ? static_cast<std::size_t>(pr.batch * pr.heads_k * rows) * splits : 0;
  const std::size_t part_o_bytes = align256(part_rows * d * sizeof(float));
  const std::size_t total = q_rot_bytes + part_o_bytes + align256(part_rows * sizeof(float));
  const auto stream = static_cast<cudaStream_t>(ctx.stream);
  cuda::Scratch scratch(ctx, total, stream, "the KV-cache scratch: rotated q and split-KV partials");
  if (kp.rotary_dim > 0) {
    // The attention reads the rotated, dtype-rounded copy.
    p.q_in = a.q.data;
    p.qi_sb = a.q.stride_batch;
    p.qi_ss = a.q.stride_seq;
    p.qi_sh = a.q.stride_head;
    p.q_rot = scratch.bytes();
    p.q = p.q_rot;
    p.q_sh = pr.head_dim;
    p.q_ss = pr.heads_q * pr.head_dim;
    p.q_sb = sq * p.q_ss;
  }
  if (splits > 1) {
    p.part_o = reinterpret_cast<float*>(scratch.bytes() + q_rot_bytes);
    p.part_lse = reinterpret_cast<float*>(scratch.bytes() + q_rot_bytes + part_o_bytes);
  }
  const auto launch = [&]<class T, int kD>() { sm80::launch_kvcache<T, kD>(p, stream); };
  dispatch<cuda::kKvTiles>(pr.dtype, pr.head_dim, launch);
}

}  // namespace flashattn::detail
