// Shared by the CUDA backend's host and device code: the kernel parameter
// block, CUDA error reporting, and the small device helpers (dtype packing,
// sequence resolution, block-mask lookups) every kernel uses.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include "common/fail.h"
#include "common/mask.h"
#include "common/philox.h"
#include "flashattn/flashattn.h"

namespace flashattn::detail::cuda {

// A CUDA failure becomes the library's runtime error (OutOfMemory for an
// allocation that failed), with CUDA's text: not an argument Error.
inline void check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  const std::string msg = std::string(what) + ": expected cudaSuccess, got " + cudaGetErrorName(e) + " (" +
                          cudaGetErrorString(e) + ")";
  if (e == cudaErrorMemoryAllocation) throw OutOfMemory(msg);
  throw RuntimeError(msg);
}

// Device scratch of one call: the caller's workspace (ctx.workspace, at
// least `bytes`, else an argument error naming ctx.workspace_bytes and
// `sizing`, the query that sizes it; 256-byte aligned, as cudaMalloc's, so
// that every part is aligned for vector and TMA access), or stream-ordered
// memory of its own, freed on the same stream when the call's work is
// queued. take(n) hands out consecutive 256-byte-aligned parts.
class Scratch {
 public:
  Scratch(const Context& ctx, std::size_t bytes, cudaStream_t stream, const char* sizing) : stream_(stream) {
    if (bytes == 0) return;
    if (ctx.workspace != nullptr) {
      if (ctx.workspace_bytes < bytes)
        fail("ctx.workspace_bytes", ">= " + std::to_string(bytes) + " (" + sizing + ")",
             std::to_string(ctx.workspace_bytes));
      if (reinterpret_cast<std::uintptr_t>(ctx.workspace) % 256 != 0)
        fail("ctx.workspace", "a 256-byte aligned address (as cudaMalloc returns)",
             "address % 256 = " + std::to_string(reinterpret_cast<std::uintptr_t>(ctx.workspace) % 256));
      base_ = static_cast<char*>(ctx.workspace);
      return;
    }
    void* ptr = nullptr;
    check(cudaMallocAsync(&ptr, bytes, stream), "cudaMallocAsync(workspace)");
    base_ = owned_ = static_cast<char*>(ptr);
  }
  ~Scratch() {
    if (owned_ != nullptr) cudaFreeAsync(owned_, stream_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  char* bytes() const { return base_; }
  void* take(std::size_t bytes) {
    void* part = base_ + used_;
    used_ += (bytes + 255) / 256 * 256;
    return part;
  }

 private:
  cudaStream_t stream_;
  char* base_ = nullptr;
  char* owned_ = nullptr;
  std::size_t used_ = 0;
};

// Host-side queries that every call made and that never change for a
// device, done once: the torch profiler put the two attribute queries and
// the cudaFuncSetAttribute of each launch at about 3 us of host time a call
// (most of the binding's overhead over the raw call). The caches assume
// the device's context lives as long as the process: after a
// cudaDeviceReset the kernels' shared-memory attribute would have to be set
// again (flashattn never resets a device).
struct ComputeCapability {
  int major = 0, minor = 0;
};

// compute(dev) for the current device, asked once per device: a positive
// value is cached (per Tag: each caller passes its own tag type); 0 is
// returned uncached. Devices past the first 64 are asked every time.
template <class Tag, class Compute>
int cached_per_device(Compute&& compute, int* device = nullptr) {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cached[kMaxDevices];  // 0: not asked yet
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  if (device != nullptr) *device = dev;
  const int hit = dev < kMaxDevices ? cached[dev].load(std::memory_order_relaxed) : 0;
  if (hit != 0) return hit;
  const int value = compute(dev);
  if (dev < kMaxDevices && value > 0) cached[dev].store(value, std::memory_order_relaxed);
  return value;
}

// The current device and its compute capability.
inline ComputeCapability device_compute_capability(int* device = nullptr) {
  struct Tag {};
  // Encoded as 1 + 16 major + minor (minor < 16), so that 0 stays "not asked".
  const int code = cached_per_device<Tag>(
      [](int dev) {
        ComputeCapability cc;
        check(cudaDeviceGetAttribute(&cc.major, cudaDevAttrComputeCapabilityMajor, dev), "cudaDeviceGetAttribute");
        check(cudaDeviceGetAttribute(&cc.minor, cudaDevAttrComputeCapabilityMinor, dev), "cudaDeviceGetAttribute");
        return 1 + 16 * cc.major + cc.minor;
      },
      device);
  return {(code - 1) / 16, (code - 1) % 16};
}

// The current device's number of SMs (a persistent kernel's grid), cached
// per device like the compute capability.
inline int device_sm_count() {
  struct Tag {};
  const int n = cached_per_device<Tag>([](int dev) {
    int count = 0;
    check(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
    return count;
  });
  return n > 0 ? n : 1;
}

// cudaFuncSetAttribute(kernel, MaxDynamicSharedMemorySize, bytes), once
// per (kernel, device): later calls with no more bytes than already set
// return after a lookup. `what` names the kernel in the error.
template <class Kernel>
void set_max_dynamic_smem(Kernel kernel, int bytes, const char* what) {
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, int> set_bytes;  // (kernel, device) -> bytes
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  const std::pair<const void*, int> key{reinterpret_cast<const void*>(kernel), dev};
  {
    std::lock_guard<std::mutex> lock(mutex);
    const auto it = set_bytes.find(key);
    if (it != set_bytes.end() && it->second >= bytes) return;
  }
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes), what);
  std::lock_guard<std::mutex> lock(mutex);
  int& b = set_bytes[key];
  if (bytes > b) b = bytes;
}

// Everything a flash kernel reads, resolved on the host from the validated
// Problem. Strides are in elements. For varlen batches batch strides are 0
// and sequence b starts at row cu_q[b] / cu_k[b].
struct Params {
  const void *q = nullptr, *k = nullptr, *v = nullptr, *o = nullptr, *dout = nullptr;
  void *out = nullptr, *dq = nullptr, *dk = nullptr, *dv = nullptr;
  std::int64_t q_sb = 0, q_ss = 0, q_sh = 0, k_sb = 0, k_ss = 0, k_sh = 0, v_sb = 0, v_ss = 0, v_sh = 0;
  std::int64_t o_sb = 0, o_ss = 0, o_sh = 0, do_sb = 0, do_ss = 0, do_sh = 0;
  std::int64_t dq_sb = 0, dq_ss = 0, dq_sh = 0, dk_sb = 0, dk_ss = 0, dk_sh = 0, dv_sb = 0, dv_ss = 0, dv_sh = 0;
  int batch = 0, heads_q = 0, heads_k = 0, group = 1;
  int seqlen_q = 0, seqlen_k = 0;          // dense: the lengths; varlen: the maxima
  std::int64_t total_q = 0, total_k = 0;   // rows of the q / k tensors (varlen bounds)
  const std::int32_t *cu_q = nullptr, *cu_k = nullptr;
  float scale = 1.f, scale_log2 = 1.f;     // scale_log2 = scale * log2(e): softmax in exp2
  WindowMask window;
  bool has_dropout = false;
  float keep_scale = 1.f;                  // 1 / (1 - p)
  DropoutStream dropout{};
  // block-sparse (null bm_count = dense)
  const std::int32_t *bm_count = nullptr, *bm_idx = nullptr, *bm_fcount = nullptr, *bm_fidx = nullptr;
  int bm_batch = 1, bm_heads = 1, bm_nqb = 0, bm_nkb = 0, block_q = 0, block_k = 0;
  // Backward only: the lists above as a dense BlockState table, one byte per
  // (mask row, key block), and transposed: for each (batch, head) of the
  // mask and key block kb, the query blocks that list it, in increasing
  // order, as 2 qb + (1 if full), bm_t_count[(bh) nkb + kb] of them at
  // bm_t_idx + ((bh) nkb + kb) nqb. Filled by api.cu before the kernels run.
  const std::uint8_t* bm_states = nullptr;
  const std::int32_t *bm_t_count = nullptr, *bm_t_idx = nullptr;
  // forward output / backward input, [batch, heads_q, seqlen_q] or [heads_q, total_q]
  float* lse = nullptr;
  // backward scratch (see api.cu for the layout)
  float* dsum = nullptr;                   // D = rowsum(dO * O), indexed like lse
  float* dq_accum = nullptr;               // fp32 dQ (atomic mode), row of lse * head_dim
  float *dk_accum = nullptr, *dv_accum = nullptr;  // fp32 per query head (GQA), see kv_row
  bool dq_atomic = true;                   // false: deterministic, dQ by its own kernel
  // e4m3 forward: the [batch, heads_k] descales (null = 1), and the scratch
  // copy of V transposed (sm90/fp8_vt.h): vt_len key bytes a (KV head,
  // head_dim column) row.
  const float *q_descale = nullptr, *k_descale = nullptr, *v_descale = nullptr;
  std::uint8_t* vt = nullptr;
  std::int64_t vt_len = 0;

  // Hopper forward: 1 when the CTAs take query tiles in pairs
  // (sm90/scheduler.h), set at the launch.
  int tile_pairs = 0;

  __host__ __device__ bool is_varlen() const { return cu_q != nullptr; }
  __host__ __device__ bool is_sparse() const { return bm_count != nullptr; }
};

// ------------------------------------------------------------- device ---

template <class T>
__device__ __forceinline__ std::uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ std::uint32_t pack2<__half>(float lo, float hi) {
  __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<std::uint32_t*>(&h);
}
template <>
__device__ __forceinline__ std::uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<std::uint32_t*>(&h);
}

__host__ __device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__host__ __device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__host__ __device__ __forceinline__ float to_float(__nv_fp8_e4m3 x) { return static_cast<float>(x); }
template <class T>
__host__ __device__ __forceinline__ T from_float(float x);
template <>
__host__ __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__host__ __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Rows of sequence b inside the tensors. Varlen offsets are read from the
// device arrays and clamped to the tensors, so bad values (unchecked when
// no host copies were given) cannot reach memory outside them.
struct SeqInfo {
  std::int64_t q_start = 0, k_start = 0;
  int sq = 0, sk = 0;
};

__device__ __forceinline__ SeqInfo resolve_seq(const Params& p, int b) {
  SeqInfo s;
  if (!p.is_varlen()) {
    s.sq = p.seqlen_q;
    s.sk = p.seqlen_k;
    return s;
  }
  auto clamp = [](std::int64_t begin, std::int64_t end, std::int64_t total, std::int64_t max_len,
                  std::int64_t* start) {
    begin = begin < 0 ? 0 : (begin > total ? total : begin);
    end = end < begin ? begin : (end > total ? total : end);
    *start = begin;
    const std::int64_t len = end - begin;
    return static_cast<int>(len > max_len ? max_len : len);
  };
  s.sq = clamp(p.cu_q[b], p.cu_q[b + 1], p.total_q, p.seqlen_q, &s.q_start);
  s.sk = clamp(p.cu_k[b], p.cu_k[b + 1], p.total_k, p.seqlen_k, &s.k_start);
  return s;
}

// Index of query row i of (b, h) in lse / dsum (and, times head_dim, in dq_accum).
__host__ __device__ __forceinline__ std::int64_t q_row(const Params& p, const SeqInfo& s, int b, int h, int i) {
  return p.is_varlen() ? static_cast<std::int64_t>(h) * p.total_q + s.q_start + i
                       : (static_cast<std::int64_t>(b) * p.heads_q + h) * p.seqlen_q + i;
}

// Index of key row j of (b, query head h) in dk_accum / dv_accum (times head_dim).
__host__ __device__ __forceinline__ std::int64_t kv_row(const Params& p, const SeqInfo& s, int b, int h, int j) {
  return p.is_varlen() ? static_cast<std::int64_t>(h) * p.total_k + s.k_start + j
                       : (static_cast<std::int64_t>(b) * p.heads_q + h) * p.seqlen_k + j;
}

// The dropout stream's (batch, head) word: batch * heads_q + head in 32-bit
// unsigned arithmetic (validation keeps it below 2^32 when dropout is on).
__host__ __device__ __forceinline__ std::uint32_t dropout_bh(const Params& p, int b, int h) {
  return static_cast<std::uint32_t>(b) * static_cast<std::uint32_t>(p.heads_q) + static_cast<std::uint32_t>(h);
}

// The descale factor of sequence b, KV head hk, from one of Params'
// [batch, heads_k] descale arrays (null: 1).
__host__ __device__ __forceinline__ float descale(const float* d, const Params& p, int b, int hk) {
  return d != nullptr ? d[static_cast<std::int64_t>(b) * p.heads_k + hk] : 1.f;
}

enum BlockState : int { kSkip = 0, kPartial = 1, kFull = 2 };

__host__ __device__ __forceinline__ std::int64_t mask_row(const Params& p, int b, int h, int qb) {
  const int bb = p.bm_batch == 1 ? 0 : b, hh = p.bm_heads == 1 ? 0 : h;
  return (static_cast<std::int64_t>(bb) * p.bm_heads + hh) * p.bm_nqb + qb;
}

__host__ __device__ __forceinline__ int clamp_count(int c, int n) { return c < 0 ? 0 : (c > n ? n : c); }

// True when every (i, j) of rows [m0, m_last] x cols [n0, n_last] passes the
// window rule: first_key grows with i and last_key too, so the corners decide.
__device__ __forceinline__ bool window_covers(const WindowMask& w, std::int64_t m0, std::int64_t m_last,
                                              std::int64_t n0, std::int64_t n_last, int sq, int sk) {
  return w.first_key(m_last, sq, sk) <= n0 && w.last_key(m0, sq, sk) >= n_last;
}

}  // namespace flashattn::detail::cuda
