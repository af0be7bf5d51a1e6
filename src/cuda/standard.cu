// Standard attention on the GPU (see standard.h): cuBLAS for the four kinds
// of matrix products, plus three small kernels of our own (pack/unpack of the
// strided tensors, the masked softmax, the softmax backward).
//
// Precision (as PyTorch's math backend for f16/bf16 inputs):
//  - every GEMM reads the 16-bit dtype, accumulates in fp32 and writes the
//    16-bit dtype: S = scale QK^T, O = P_d V, dV, dP = dO V^T, dQ, dK;
//  - the softmax and its backward compute in fp32 from the 16-bit S / P / dP
//    and store P, P_d = dropout(P) / (1-p) and dS in the 16-bit dtype;
//  - LSE is m + log(l) in fp32 of the (16-bit) S row;
//  - the backward recomputes S and P from Q and K and forms
//    D_i = sum_j P_d,ij dP_ij (= rowsum(dO_i * O_i) in exact arithmetic), so
//    it reads neither the forward's O nor its LSE: an oracle independent of
//    what the flash kernels produced.
//
// Layout: Q, K, V, dO are first packed into dense, zero-padded
// [batch, heads, max_seqlen, head_dim] buffers. That one copy (O(N d), small
// next to the O(N^2) S) turns arbitrary strides, varlen batches and GQA into
// plain strided-batched GEMMs: the query heads of one kv head are adjacent in
// the packed Q (h = hk * group + g), so one GEMM item is a (group * sq) x d
// block of queries against one kv head, and the dK / dV products sum over
// the group inside cuBLAS (fp32 accumulation, fixed order: deterministic).
// Padded rows are zero and padded columns are masked, so they contribute
// nothing; outputs are unpacked only for the rows of real sequences.
//
// Calls: everything is enqueued on ctx.stream (cuBLAS included, through
// cublasSetStream); scratch is the caller's workspace or a stream-ordered
// cudaMallocAsync / cudaFreeAsync pair, so nothing synchronises the host
// (the first call on a host thread also creates that thread's cuBLAS
// handle). Workspace: 2 S-sized buffers for the backward, 1 for the forward,
// plus the packed copies (see forward_bytes / backward_bytes).
#include "standard.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cublas_v2.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "common.cuh"
#include "common/mask.h"
#include "common/philox.h"

namespace flashattn::detail {
namespace {

// ------------------------------------------------------------- errors ---

// Device failures are runtime errors, not argument errors (flashattn.h):
// cuda::check's, with the call named as standard attention's.
void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) cuda::check(e, (std::string("standard attention, ") + what).c_str());
}

void check_cublas(cublasStatus_t s, const char* what) {
  if (s == CUBLAS_STATUS_SUCCESS) return;
  const std::string msg = std::string("cuBLAS (standard attention, ") + what +
                          "): expected CUBLAS_STATUS_SUCCESS, got " + cublasGetStatusName(s) + " (" +
                          cublasGetStatusString(s) + ")";
  if (s == CUBLAS_STATUS_ALLOC_FAILED) throw OutOfMemory(msg);
  throw RuntimeError(msg);
}

void check_launch(const char* kernel) { check_cuda(cudaGetLastError(), kernel); }

// One cuBLAS handle per (host thread, device): handles are expensive to
// create and not safe to share between threads; the stream is set per call.
// Handles are never destroyed: destroying them from a thread-exit or
// static destructor can run after the CUDA context has gone.
cublasHandle_t cublas_handle(cudaStream_t stream) {
  constexpr int kMaxDevices = 64;
  thread_local cublasHandle_t handles[kMaxDevices] = {};
  int dev = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  if (dev < 0 || dev >= kMaxDevices)
    throw Error("device index: expected < " + std::to_string(kMaxDevices) + ", got " + std::to_string(dev));
  if (!handles[dev]) check_cublas(cublasCreate(&handles[dev]), "cublasCreate");
  check_cublas(cublasSetStream(handles[dev], stream), "cublasSetStream");
  return handles[dev];
}

// ------------------------------------------------------ sequence bounds ---

// Rows of sequence b inside the q and k tensors. Varlen offsets are read on
// the device and clamped to the tensors, so unchecked (device-only) values
// can never send an access outside them (flashattn.h, Varlen).
struct SeqBounds {
  std::int64_t q_start, len_q, k_start, len_k;
};

struct SeqGeometry {
  const std::int32_t* cu_q = nullptr;  // null: dense batch
  const std::int32_t* cu_k = nullptr;
  std::int64_t total_q = 0, total_k = 0;  // rows of the q / k tensors (varlen)
  std::int64_t max_q = 0, max_k = 0;      // padded lengths (Problem::seqlen_q / _k)

  __device__ static void clamp(const std::int32_t* cu, std::int64_t b, std::int64_t total, std::int64_t max_len,
                               std::int64_t* start, std::int64_t* len) {
    std::int64_t s = cu[b], e = cu[b + 1];
    s = s < 0 ? 0 : (s > total ? total : s);
    e = e < s ? s : (e > total ? total : e);
    *start = s;
    *len = e - s < max_len ? e - s : max_len;
  }

  __device__ SeqBounds operator()(std::int64_t b) const {
    if (!cu_q) return SeqBounds{0, max_q, 0, max_k};
    SeqBounds r;
    clamp(cu_q, b, total_q, max_q, &r.q_start, &r.len_q);
    clamp(cu_k, b, total_k, max_k, &r.k_start, &r.len_k);
    return r;
  }
};

// ---------------------------------------------------------- pack/unpack ---

// A strided tensor view in 16-byte vectors of 8 elements (validation
// guarantees 16-byte aligned rows and strides on CUDA).
struct VecView {
  uint4* data;
  std::int64_t stride_batch, stride_seq, stride_head;  // in vectors
};

VecView vec_view(const Tensor& t) {
  return VecView{static_cast<uint4*>(t.data), t.stride_batch / 8, t.stride_seq / 8, t.stride_head / 8};
}

// dense [batch, heads, rows, vecs] <-> strided tensor rows of each sequence.
// to_dense: padded rows are zero-filled; !to_dense: only real rows are
// written back, so rows of no sequence keep their contents.
__global__ void pack_kernel(VecView t, uint4* dense, SeqGeometry geo, bool is_query, bool to_dense,
                            std::int64_t heads, std::int64_t rows, std::int64_t vecs, std::int64_t total) {
  for (std::int64_t idx = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t v = idx % vecs, r = (idx / vecs) % rows, h = (idx / (vecs * rows)) % heads,
                       b = idx / (vecs * rows * heads);
    const SeqBounds sb = geo(b);
    const std::int64_t len = is_query ? sb.len_q : sb.len_k, start = is_query ? sb.q_start : sb.k_start;
    const std::int64_t tb = geo.cu_q ? 0 : b;
    const std::int64_t off = tb * t.stride_batch + (start + r) * t.stride_seq + h * t.stride_head + v;
    if (to_dense)
      dense[idx] = r < len ? t.data[off] : make_uint4(0, 0, 0, 0);
    else if (r < len)
      t.data[off] = dense[idx];
  }
}

int grid_for(std::int64_t work, int threads) {
  const std::int64_t blocks = (work + threads - 1) / threads;
  return static_cast<int>(blocks < (1 << 20) ? blocks : (1 << 20));
}

void pack(const Tensor& t, void* dense, const SeqGeometry& geo, bool is_query, bool to_dense, std::int64_t batch,
          std::int64_t rows, cudaStream_t stream) {
  const std::int64_t vecs = t.head_dim / 8, total = batch * t.heads * rows * vecs;
  if (total == 0) return;
  constexpr int kThreads = 256;
  pack_kernel<<<grid_for(total, kThreads), kThreads, 0, stream>>>(vec_view(t), static_cast<uint4*>(dense), geo,
                                                                  is_query, to_dense, t.heads, rows, vecs, total);
  check_launch("pack_kernel");
}

// ------------------------------------------------------- the row kernels ---

__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Everything the row kernels need to decide visibility and dropout.
struct RowParams {
  SeqGeometry geo;
  std::int64_t heads_q = 0;
  std::int64_t sq = 0, sk = 0, ld = 0;  // padded rows / columns per head; row stride of S, P, dP
  WindowMask window;
  // Block mask (device arrays; count == nullptr: none).
  const std::int32_t *count = nullptr, *indices = nullptr, *full_count = nullptr, *full_indices = nullptr;
  std::int64_t block_q = 1, block_k = 1, bm_batch = 1, bm_heads = 1, nqb = 0, nkb = 0;
  bool dropout = false;
  DropoutStream drop{};
  float drop_scale = 1.0f;  // 1 / (1 - p)
};

// The block states of query block qb of (b, h) into shared memory. Entries
// outside [0, nkb) are ignored so unchecked device data stays in bounds.
__device__ void load_block_states(const RowParams& rp, std::int64_t b, std::int64_t h, std::int64_t qb,
                                  std::uint8_t* states) {
  const std::int64_t bb = rp.bm_batch == 1 ? 0 : b, hh = rp.bm_heads == 1 ? 0 : h;
  const std::int64_t row = (bb * rp.bm_heads + hh) * rp.nqb + qb;
  for (std::int64_t j = threadIdx.x; j < rp.nkb; j += blockDim.x) states[j] = kBlockSkip;
  __syncthreads();
  const std::int64_t n = rp.count[row] < rp.nkb ? rp.count[row] : rp.nkb;
  for (std::int64_t t = threadIdx.x; t < n; t += blockDim.x) {
    const std::int32_t kb = rp.indices[row * rp.nkb + t];
    if (kb >= 0 && kb < rp.nkb) states[kb] = kBlockPartial;
  }
  // Full after partial: a block wrongly in both lists ends up full on every
  // thread's view (one order, no race between the two writes).
  __syncthreads();
  if (rp.full_count) {
    const std::int64_t nf = rp.full_count[row] < rp.nkb ? rp.full_count[row] : rp.nkb;
    for (std::int64_t t = threadIdx.x; t < nf; t += blockDim.x) {
      const std::int32_t kb = rp.full_indices[row * rp.nkb + t];
      if (kb >= 0 && kb < rp.nkb) states[kb] = kBlockFull;
    }
  }
  __syncthreads();
}

// Which keys one query row sees. The window rule leaves a contiguous range
// [lo, hi] of the sequence's keys, so the per-element test is two
// comparisons; a block mask adds one shared-memory lookup.
struct RowVisibility {
  int lo, hi;  // inclusive; empty when lo > hi
  int len_k;
  int block_k;
  const std::uint8_t* states;  // null: no block mask

  __device__ __forceinline__ bool operator()(int j) const {
    const bool in_window = j >= lo && j <= hi;
    if (!states) return in_window;
    const std::uint8_t s = states[j / block_k];
    return s == kBlockFull ? j < len_k : (s == kBlockPartial && in_window);
  }
};

// Block-wide reductions (blockDim.x a multiple of 32, <= 1024). The leading
// barrier lets the same scratch be reused by consecutive reductions.
__device__ float block_reduce(float x, bool is_max, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) {
    const float y = __shfl_xor_sync(0xffffffffu, x, o);
    x = is_max ? fmaxf(x, y) : x + y;
  }
  __syncthreads();
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = x;
  __syncthreads();
  const int warps = blockDim.x >> 5;
  x = is_max ? -INFINITY : 0.0f;
  for (int w = 0; w < warps; ++w) x = is_max ? fmaxf(x, scratch[w]) : x + scratch[w];
  return x;
}

// Each thread owns column quads c = threadIdx.x + k * blockDim.x (columns
// 4c .. 4c+3): one 8-byte access moves a quad (rows are 16-byte aligned, ld
// a multiple of 8, so a quad never crosses the row's allocation).
struct RowPos {
  std::int64_t b, h, i;
  SeqBounds sb;
};

__device__ RowPos row_pos(const RowParams& rp, std::int64_t row) {
  RowPos r;
  r.i = row % rp.sq;
  r.h = (row / rp.sq) % rp.heads_q;
  r.b = row / (rp.sq * rp.heads_q);
  r.sb = rp.geo(r.b);
  return r;
}

__device__ RowVisibility row_visibility(const RowParams& rp, const RowPos& r, const std::uint8_t* states) {
  RowVisibility v;
  v.lo = static_cast<int>(rp.window.first_key(r.i, r.sb.len_q, r.sb.len_k));
  v.hi = static_cast<int>(rp.window.last_key(r.i, r.sb.len_q, r.sb.len_k));
  v.len_k = static_cast<int>(r.sb.len_k);
  v.block_k = static_cast<int>(rp.block_k < INT_MAX ? rp.block_k : INT_MAX);
  v.states = rp.count ? states : nullptr;
  return v;
}

// The dropout keep flags of columns 4 quad .. 4 quad + 3. They come from
// two Philox calls (calls u and u + 1 of their 16-column group, one output
// word of each; philox.h), whose other words belong to the quad 8 columns
// away and to the row 8 rows away: this kernel draws each call four times,
// the price of its simple layout (it is the baseline, not the fast path).
__device__ __forceinline__ void dropout_keep(const RowParams& rp, const RowPos& r, std::int64_t quad, bool k[4]) {
  const auto bh = static_cast<std::uint32_t>(r.b * rp.heads_q + r.h);
  const auto row = static_cast<std::uint32_t>(r.i);
  const auto col0 = static_cast<std::uint32_t>(4 * quad);
  const std::uint32_t call = DropoutStream::call_of(col0), w = DropoutStream::word_of(row, col0);
  const std::uint32_t pair = DropoutStream::row_pair_of(row);
  const std::uint32_t a = DropoutStream::word(rp.drop.words(bh, pair, call), w);
  const std::uint32_t b = DropoutStream::word(rp.drop.words(bh, pair, call + 1), w);
  k[0] = rp.drop.keep(a, 0);
  k[1] = rp.drop.keep(a, 1);
  k[2] = rp.drop.keep(b, 0);
  k[3] = rp.drop.keep(b, 1);
}

template <typename T>
__device__ __forceinline__ void load_quad(const T* p, float (&x)[4]) {
  const uint2 u = *reinterpret_cast<const uint2*>(p);
  T t[4];
  memcpy(t, &u, sizeof(u));
#pragma unroll
  for (int l = 0; l < 4; ++l) x[l] = to_float(t[l]);
}

template <typename T>
__device__ __forceinline__ void store_quad(T* p, const float (&x)[4]) {
  T t[4];
#pragma unroll
  for (int l = 0; l < 4; ++l) t[l] = from_float<T>(x[l]);
  uint2 u;
  memcpy(&u, t, sizeof(u));
  *reinterpret_cast<uint2*>(p) = u;
}

constexpr float kLog2e = 1.4426950408889634f;

// Masked softmax of each row of S (padded [batch, heads_q, sq, ld]), in two
// passes: an online max / sum (one exp per element), then the write. The
// second read of a row (a few KB) comes from L2, so DRAM sees S once.
// Writes P (un-dropped) to p_out and P_d to pd_out when those are non-null;
// either may alias S (each quad is read, then written, by one thread).
// Columns [sk, ld) of the outputs are written as zeros.
template <typename T>
__global__ void softmax_kernel(const T* S, T* p_out, T* pd_out, float* lse, std::int64_t lse_row_stride,
                               RowParams rp, std::int64_t rows) {
  extern __shared__ std::uint8_t states[];
  __shared__ float scratch[32];
  const std::int64_t quads = (rp.sk + 3) / 4;
  for (std::int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const RowPos r = row_pos(rp, row);
    const T* s = S + row * rp.ld;
    T* p = p_out ? p_out + row * rp.ld : nullptr;
    T* pd = pd_out ? pd_out + row * rp.ld : nullptr;
    if (r.i >= r.sb.len_q) {  // padding row: zero so it adds nothing to dV / dK
      const float zero[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      for (std::int64_t c = threadIdx.x; c < quads; c += blockDim.x) {
        if (p) store_quad(p + 4 * c, zero);
        if (pd) store_quad(pd + 4 * c, zero);
      }
      continue;
    }
    if (rp.count) load_block_states(rp, r.b, r.h, r.i / rp.block_q, states);
    const RowVisibility visible = row_visibility(rp, r, states);
    // Pass 1: per-thread running max m and sum l of exp2(x log2e - m).
    float m = -INFINITY, l = 0.0f;
    for (std::int64_t c = threadIdx.x; c < quads; c += blockDim.x) {
      float x[4];
      load_quad(s + 4 * c, x);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        if (!visible(static_cast<int>(4 * c + e))) continue;
        const float xs = x[e] * kLog2e;
        if (xs > m) {
          l = l * exp2f(m - xs) + 1.0f;
          m = xs;
        } else {
          l += exp2f(xs - m);
        }
      }
    }
    const float row_max = block_reduce(m, true, scratch);
    const float row_sum = block_reduce(m == -INFINITY ? 0.0f : l * exp2f(m - row_max), false, scratch);
    const bool empty = row_max == -INFINITY;
    const float inv = empty ? 0.0f : 1.0f / row_sum;
    // Pass 2: P = exp2(x log2e - max) / sum, dropout on top.
    for (std::int64_t c = threadIdx.x; c < quads; c += blockDim.x) {
      float x[4], pq[4], pdq[4];
      load_quad(s + 4 * c, x);
      bool kept[4] = {true, true, true, true};
      if (rp.dropout) dropout_keep(rp, r, c, kept);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        pq[e] = !empty && visible(static_cast<int>(4 * c + e)) ? exp2f(x[e] * kLog2e - row_max) * inv : 0.0f;
        pdq[e] = rp.dropout ? (kept[e] ? pq[e] * rp.drop_scale : 0.0f) : pq[e];
      }
      if (p) store_quad(p + 4 * c, pq);
      if (pd) store_quad(pd + 4 * c, pdq);
    }
    if (lse && threadIdx.x == 0) {
      const std::int64_t idx = rp.geo.cu_q ? r.h * lse_row_stride + r.sb.q_start + r.i
                                           : (r.b * rp.heads_q + r.h) * rp.sq + r.i;
      lse[idx] = empty ? -INFINITY : (row_max + log2f(row_sum)) / kLog2e;
    }
    __syncthreads();  // the states of the next row overwrite this row's
  }
}

// Softmax backward of each row, in place: P_dS holds P (un-dropped) on entry
// and dS on exit. dP = dO V^T is the gradient w.r.t. P_d, so the gradient
// w.r.t. P is g = dP * keep / (1-p), and D_i = sum_j P_ij g_ij. Entries with
// P = 0 (masked, padding, or the uninitialised columns [sk, ld) of dP) are
// skipped, so they can neither contribute nor turn D into NaN.
template <typename T>
__global__ void softmax_backward_kernel(T* P_dS, const T* dP, RowParams rp, std::int64_t rows) {
  __shared__ float scratch[32];
  const std::int64_t quads = (rp.sk + 3) / 4;
  for (std::int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const RowPos r = row_pos(rp, row);
    T* ps = P_dS + row * rp.ld;
    const T* dp = dP + row * rp.ld;
    float d = 0.0f;
    for (std::int64_t c = threadIdx.x; c < quads; c += blockDim.x) {
      float pq[4], gq[4];
      load_quad(ps + 4 * c, pq);
      load_quad(dp + 4 * c, gq);
      bool kept[4] = {true, true, true, true};
      if (rp.dropout) dropout_keep(rp, r, c, kept);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float g = rp.dropout ? (kept[e] ? gq[e] * rp.drop_scale : 0.0f) : gq[e];
        if (pq[e] != 0.0f) d += pq[e] * g;
      }
    }
    d = block_reduce(d, false, scratch);
    for (std::int64_t c = threadIdx.x; c < quads; c += blockDim.x) {
      float pq[4], gq[4], ds[4];
      load_quad(ps + 4 * c, pq);
      load_quad(dp + 4 * c, gq);
      bool kept[4] = {true, true, true, true};
      if (rp.dropout) dropout_keep(rp, r, c, kept);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float g = rp.dropout ? (kept[e] ? gq[e] * rp.drop_scale : 0.0f) : gq[e];
        ds[e] = pq[e] == 0.0f ? 0.0f : pq[e] * (g - d);
      }
      store_quad(ps + 4 * c, ds);
    }
  }
}

// A row of <= 4 * 256 columns fits one pass of 256 threads; short rows get
// fewer threads so that tiny problems do not idle whole warps.
int row_threads(std::int64_t sk) {
  const std::int64_t quads = (sk + 3) / 4;
  std::int64_t t = ((quads + 31) / 32) * 32;
  return static_cast<int>(t < 32 ? 32 : (t > 256 ? 256 : t));
}

// ----------------------------------------------------------------- GEMM ---

// Row-major, strided-batched C = alpha op(A) op(B) with fp32 accumulation
// and the 16-bit dtype everywhere else. cuBLAS is column-major: a row-major
// X is a column-major X^T, so C^T = op(B)^T op(A)^T is asked for with the
// operands swapped and the same transpose flags.
struct Mat {
  const void* data;
  std::int64_t ld, stride;
  bool trans;
};

void gemm(cublasHandle_t handle, cudaDataType_t type, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
          Mat A, Mat B, void* C, std::int64_t ldc, std::int64_t stride_c, std::int64_t batch, cudaStream_t stream) {
  if (m == 0 || n == 0 || batch == 0) return;
  if (k == 0) {  // an empty sum: C = 0 (cuBLAS is not asked to decide)
    check_cuda(cudaMemsetAsync(C, 0, static_cast<std::size_t>(batch * stride_c) * 2, stream), "cudaMemsetAsync");
    return;
  }
  for (std::int64_t v : {m, n, k, A.ld, B.ld, ldc, batch})
    if (v > INT_MAX)
      throw Error("standard attention GEMM size: expected every dimension <= 2^31-1 (cuBLAS int), got " +
                  std::to_string(v));
  const float beta = 0.0f;
  check_cublas(cublasGemmStridedBatchedEx(handle, B.trans ? CUBLAS_OP_T : CUBLAS_OP_N,
                                          A.trans ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m),
                                          static_cast<int>(k), &alpha, B.data, type, static_cast<int>(B.ld), B.stride,
                                          A.data, type, static_cast<int>(A.ld), A.stride, &beta, C, type,
                                          static_cast<int>(ldc), stride_c, static_cast<int>(batch), CUBLAS_COMPUTE_32F,
                                          CUBLAS_GEMM_DEFAULT),
               "cublasGemmStridedBatchedEx");
}

// ------------------------------------------------------------ workspace ---

// Sizes of one call: padded lengths and the buffers carved from one
// workspace allocation (256-byte aligned pieces, as cuBLAS prefers).
struct Shapes {
  std::int64_t batch, hq, hk, group, sq, sk, d, ld;
  std::int64_t q_elems, kv_elems, s_elems;
};

Shapes shapes_of(const Problem& p) {
  Shapes s;
  s.batch = p.batch;
  s.hq = p.heads_q;
  s.hk = p.heads_k;
  s.group = p.group();
  s.sq = p.seqlen_q;
  s.sk = p.seqlen_k;
  s.d = p.head_dim;
  s.ld = (s.sk + 7) / 8 * 8;  // 16-byte aligned rows of S / P for cuBLAS's fast paths
  s.q_elems = s.batch * s.hq * s.sq * s.d;
  s.kv_elems = s.batch * s.hk * s.sk * s.d;
  s.s_elems = s.batch * s.hq * s.sq * s.ld;
  return s;
}

std::size_t aligned_bytes(std::int64_t elems) { return (static_cast<std::size_t>(elems) * 2 + 255) / 256 * 256; }
// A part of `elems` 16-bit values of the call's scratch (aligned_bytes of them).
void* take(cuda::Scratch& ws, std::int64_t elems) { return ws.take(static_cast<std::size_t>(elems) * 2); }

// Forward: Qp, Kp, Vp, S (-> P_d), Op.  Backward: Qp, Kp, Vp, dOp, S (-> P
// -> dS), P_d (-> dP), dQp, dKp, dVp.
std::size_t forward_bytes(const Shapes& s) {
  return 2 * aligned_bytes(s.q_elems) + 2 * aligned_bytes(s.kv_elems) + aligned_bytes(s.s_elems);
}
std::size_t backward_bytes(const Shapes& s) {
  return 3 * aligned_bytes(s.q_elems) + 4 * aligned_bytes(s.kv_elems) + 2 * aligned_bytes(s.s_elems);
}

// The caller's workspace, or a stream-ordered allocation freed (also
// stream-ordered) when the call ends, on success or error.

// ----------------------------------------------------------- the passes ---

SeqGeometry geometry_of(const Problem& p, const Tensor& q, const Tensor& k) {
  SeqGeometry g;
  if (p.is_varlen()) {
    g.cu_q = p.varlen->cu_seqlens_q;
    g.cu_k = p.varlen->cu_seqlens_k;
  }
  g.total_q = q.seqlen;
  g.total_k = k.seqlen;
  g.max_q = p.seqlen_q;
  g.max_k = p.seqlen_k;
  return g;
}

RowParams row_params(const Problem& p, const Shapes& s, const SeqGeometry& geo) {
  RowParams rp;
  rp.geo = geo;
  rp.heads_q = s.hq;
  rp.sq = s.sq;
  rp.sk = s.sk;
  rp.ld = s.ld;
  rp.window = p.window;
  if (const BlockMask* m = p.block_mask) {
    rp.count = m->kv_count;
    rp.indices = m->kv_indices;
    rp.full_count = m->full_kv_count;
    rp.full_indices = m->full_kv_indices;
    rp.block_q = m->block_q;
    rp.block_k = m->block_k;
    rp.bm_batch = m->batch;
    rp.bm_heads = m->heads;
    rp.nqb = m->num_q_blocks;
    rp.nkb = m->num_k_blocks;
  }
  rp.dropout = p.has_dropout();
  rp.drop = DropoutStream::make(p.seed, p.offset, p.dropout_p);
  rp.drop_scale = static_cast<float>(1.0 / (1.0 - static_cast<double>(p.dropout_p)));
  return rp;
}

template <typename T>
void launch_softmax(const void* S, void* p_out, void* pd_out, float* lse, std::int64_t lse_row_stride,
                    const RowParams& rp, std::int64_t rows, cudaStream_t stream) {
  if (rows == 0) return;
  const std::size_t smem = rp.count ? static_cast<std::size_t>(rp.nkb) : 0;
  if (smem > 48 * 1024) {
    int dev = 0, max_smem = 0;
    check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
    check_cuda(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), "cudaDeviceGetAttribute");
    if (smem + 32 * sizeof(float) > static_cast<std::size_t>(max_smem))
      throw Error("block_mask.num_k_blocks: expected <= " + std::to_string(max_smem - 128) +
                  " for the CUDA standard path (one byte of shared memory per key block), got " +
                  std::to_string(rp.nkb));
    check_cuda(cudaFuncSetAttribute(softmax_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(smem)),
               "cudaFuncSetAttribute");
  }
  const int grid = static_cast<int>(rows < (1 << 30) ? rows : (1 << 30));
  softmax_kernel<T><<<grid, row_threads(rp.sk), smem, stream>>>(
      static_cast<const T*>(S), static_cast<T*>(p_out), static_cast<T*>(pd_out), lse, lse_row_stride, rp, rows);
  check_launch("softmax_kernel");
}

template <typename T>
void launch_softmax_backward(void* P_dS, const void* dP, const RowParams& rp, std::int64_t rows,
                             cudaStream_t stream) {
  if (rows == 0) return;
  const int grid = static_cast<int>(rows < (1 << 30) ? rows : (1 << 30));
  softmax_backward_kernel<T><<<grid, row_threads(rp.sk), 0, stream>>>(static_cast<T*>(P_dS),
                                                                      static_cast<const T*>(dP), rp, rows);
  check_launch("softmax_backward_kernel");
}

template <typename T>
void forward_impl(const Problem& p, const ForwardArgs& a, const Context& ctx) {
  const Shapes s = shapes_of(p);
  if (s.batch * s.hq * s.sq == 0) return;  // no query row to produce
  const auto stream = static_cast<cudaStream_t>(ctx.stream);
  const cudaDataType_t type = p.dtype == DType::bf16 ? CUDA_R_16BF : CUDA_R_16F;
  const SeqGeometry geo = geometry_of(p, a.q, a.k);
  cublasHandle_t handle = cublas_handle(stream);
  cuda::Scratch ws(ctx, forward_bytes(s), stream, "cuda_standard_forward_workspace_bytes");
  void* Q = take(ws, s.q_elems);
  void* K = take(ws, s.kv_elems);
  void* V = take(ws, s.kv_elems);
  void* S = take(ws, s.s_elems);
  void* O = take(ws, s.q_elems);
  pack(a.q, Q, geo, true, true, s.batch, s.sq, stream);
  pack(a.k, K, geo, false, true, s.batch, s.sk, stream);
  pack(a.v, V, geo, false, true, s.batch, s.sk, stream);

  const std::int64_t items = s.batch * s.hk, gq = s.group * s.sq;  // one GEMM item: a kv head and its query group
  // S = scale Q K^T
  gemm(handle, type, gq, s.sk, s.d, p.scale, Mat{Q, s.d, gq * s.d, false}, Mat{K, s.d, s.sk * s.d, true}, S, s.ld,
       gq * s.ld, items, stream);
  // P_d overwrites S in place: the forward keeps no un-dropped P.
  launch_softmax<T>(S, nullptr, S, a.lse, a.q.seqlen, row_params(p, s, geo), s.batch * s.hq * s.sq, stream);
  // O = P_d V
  gemm(handle, type, gq, s.d, s.sk, 1.0f, Mat{S, s.ld, gq * s.ld, false}, Mat{V, s.d, s.sk * s.d, false}, O, s.d,
       gq * s.d, items, stream);
  pack(a.o, O, geo, true, false, s.batch, s.sq, stream);
}

template <typename T>
void backward_impl(const Problem& p, const BackwardArgs& a, const Context& ctx) {
  const Shapes s = shapes_of(p);
  if (s.batch == 0) return;
  const auto stream = static_cast<cudaStream_t>(ctx.stream);
  const cudaDataType_t type = p.dtype == DType::bf16 ? CUDA_R_16BF : CUDA_R_16F;
  const SeqGeometry geo = geometry_of(p, a.q, a.k);
  const RowParams rp = row_params(p, s, geo);
  cublasHandle_t handle = cublas_handle(stream);
  cuda::Scratch ws(ctx, backward_bytes(s), stream, "cuda_standard_backward_workspace_bytes");
  void* Q = take(ws, s.q_elems);
  void* K = take(ws, s.kv_elems);
  void* V = take(ws, s.kv_elems);
  void* dO = take(ws, s.q_elems);
  void* S = take(ws, s.s_elems);   // S, then P, then dS
  void* Pd = take(ws, s.s_elems);  // P_d, then dP
  void* dQ = take(ws, s.q_elems);
  void* dK = take(ws, s.kv_elems);
  void* dV = take(ws, s.kv_elems);
  pack(a.q, Q, geo, true, true, s.batch, s.sq, stream);
  pack(a.k, K, geo, false, true, s.batch, s.sk, stream);
  pack(a.v, V, geo, false, true, s.batch, s.sk, stream);
  pack(a.dout, dO, geo, true, true, s.batch, s.sq, stream);

  const std::int64_t items = s.batch * s.hk, gq = s.group * s.sq;
  const Mat q_mat{Q, s.d, gq * s.d, false}, do_mat{dO, s.d, gq * s.d, false};
  const Mat k_mat{K, s.d, s.sk * s.d, false};
  gemm(handle, type, gq, s.sk, s.d, p.scale, q_mat, Mat{K, s.d, s.sk * s.d, true}, S, s.ld, gq * s.ld, items, stream);
  const bool dropout = p.has_dropout();
  launch_softmax<T>(S, S, dropout ? Pd : nullptr, nullptr, 0, rp, s.batch * s.hq * s.sq, stream);
  // dV = P_d^T dO (sums over the query group)
  gemm(handle, type, s.sk, s.d, gq, 1.0f, Mat{dropout ? Pd : S, s.ld, gq * s.ld, true}, do_mat, dV, s.d, s.sk * s.d,
       items, stream);
  // dP = dO V^T, into P_d's buffer: stream order puts it after the dV GEMM.
  gemm(handle, type, gq, s.sk, s.d, 1.0f, do_mat, Mat{V, s.d, s.sk * s.d, true}, Pd, s.ld, gq * s.ld, items, stream);
  launch_softmax_backward<T>(S, Pd, rp, s.batch * s.hq * s.sq, stream);
  // dQ = scale dS K, dK = scale dS^T Q (sums over the query group)
  gemm(handle, type, gq, s.d, s.sk, p.scale, Mat{S, s.ld, gq * s.ld, false}, k_mat, dQ, s.d, gq * s.d, items, stream);
  gemm(handle, type, s.sk, s.d, gq, p.scale, Mat{S, s.ld, gq * s.ld, true}, q_mat, dK, s.d, s.sk * s.d, items, stream);
  pack(a.dq, dQ, geo, true, false, s.batch, s.sq, stream);
  pack(a.dk, dK, geo, false, false, s.batch, s.sk, stream);
  pack(a.dv, dV, geo, false, false, s.batch, s.sk, stream);
}

}  // namespace

std::size_t cuda_standard_forward_workspace_bytes(const Problem& p, const ForwardArgs&, const Context&) {
  const Shapes s = shapes_of(p);
  return s.batch * s.hq * s.sq == 0 ? 0 : forward_bytes(s);
}

std::size_t cuda_standard_backward_workspace_bytes(const Problem& p, const BackwardArgs&, const Context&) {
  const Shapes s = shapes_of(p);
  return s.batch == 0 ? 0 : backward_bytes(s);
}

void cuda_standard_forward(const Problem& p, const ForwardArgs& a, const Context& ctx) {
  if (p.dtype == DType::bf16)
    forward_impl<__nv_bfloat16>(p, a, ctx);
  else if (p.dtype == DType::f16)
    forward_impl<__half>(p, a, ctx);
  else
    throw Error(std::string("q.dtype: expected f16 or bf16 for CUDA standard attention, got ") + to_string(p.dtype));
}

void cuda_standard_backward(const Problem& p, const BackwardArgs& a, const Context& ctx) {
  if (p.dtype == DType::bf16)
    backward_impl<__nv_bfloat16>(p, a, ctx);
  else if (p.dtype == DType::f16)
    backward_impl<__half>(p, a, ctx);
  else
    throw Error(std::string("q.dtype: expected f16 or bf16 for CUDA standard attention, got ") + to_string(p.dtype));
}

}  // namespace flashattn::detail
