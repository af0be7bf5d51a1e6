// The O(N d) kernels around the main sweep of every flash backward (the
// sm80 and sm90 families alike), 16-byte chunks of rows (RowChunks):
//   dot_do_o     D = rowsum(dO * O) in fp32 (the softmax-gradient term)
//   finish_dq    dq = scale * dq_accum (the fp32 atomic scratch); a row
//                that is not finite is recomputed (exact_rows.cuh)
//   reduce_dkdv  GQA/MQA: dk, dv = sums of the per-query-head fp32 dK / dV
//                of each kv head's group, in a fixed order
#pragma once

#include "common.cuh"
#include "exact_rows.cuh"

namespace flashattn::detail::cuda {

// These kernels are pure streams (a few flops a byte), so they run at the
// memory bandwidth only with wide accesses: a thread moves 16-byte chunks
// (8 values of T, two float4 of fp32); with one scalar a lane a warp's
// access moves 64-128 bytes and the stream reaches about a third of the
// copy bandwidth on an H100. A row's chunks sit on kLanes
// consecutive lanes (kD / 8 rounded up to a power of two, so that a
// shuffle reduction stays inside the row); a warp takes 32 / kLanes rows,
// a 256-thread CTA 8 times that.
template <int kD>
struct RowChunks {
  static constexpr int kChunks = kD / 8;
  static_assert(kChunks * 8 == kD && kChunks <= 32, "head_dim a multiple of 8, at most 256");
  static constexpr int kLanes = kChunks <= 4 ? 4 : kChunks <= 8 ? 8 : kChunks <= 16 ? 16 : 32;
  static constexpr int kRowsWarp = 32 / kLanes;
  static constexpr int kRowsCta = 8 * kRowsWarp;
  static constexpr unsigned kGroupMask = kLanes == 32 ? 0xffffffffu : (1u << kLanes) - 1u;

  int row, chunk;  // this thread's row within blockIdx.x's kRowsCta, and chunk of it
  __device__ RowChunks() {
    const int lane = threadIdx.x & 31;
    row = blockIdx.x * kRowsCta + (threadIdx.x >> 5) * kRowsWarp + lane / kLanes;
    chunk = lane % kLanes;
  }
  __device__ bool owns(int rows) const { return chunk < kChunks && row < rows; }

  // Sum over the lanes of this thread's row (every lane of the warp calls it).
  __device__ static float row_sum(float v) {
#pragma unroll
    for (int m = kLanes / 2; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
    return v;
  }
};

template <class T>
__device__ __forceinline__ void load8(const T* src, float (&v)[8]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(src);
  const T* x = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int e = 0; e < 8; ++e) v[e] = to_float(x[e]);
}

__device__ __forceinline__ void load8(const float* src, float (&v)[8]) {
  const float4 a = reinterpret_cast<const float4*>(src)[0], b = reinterpret_cast<const float4*>(src)[1];
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}

template <class T>
__device__ __forceinline__ void store8(T* dst, const float (&v)[8]) {
  uint4 packed;
  packed.x = pack2<T>(v[0], v[1]);
  packed.y = pack2<T>(v[2], v[3]);
  packed.z = pack2<T>(v[4], v[5]);
  packed.w = pack2<T>(v[6], v[7]);
  *reinterpret_cast<uint4*>(dst) = packed;
}

template <class T, int kD>
__global__ void __launch_bounds__(256) dot_do_o_kernel(const __grid_constant__ Params p) {
  const int b = blockIdx.z, h = blockIdx.y;
  const RowChunks<kD> rc;
  const SeqInfo seq = resolve_seq(p, b);
  const int i = rc.row;
  float acc = 0.f;
  if (rc.owns(seq.sq)) {
    float o[8], d_o[8];
    load8(static_cast<const T*>(p.o) + b * p.o_sb + (seq.q_start + i) * p.o_ss + h * p.o_sh + rc.chunk * 8, o);
    load8(static_cast<const T*>(p.dout) + b * p.do_sb + (seq.q_start + i) * p.do_ss + h * p.do_sh + rc.chunk * 8, d_o);
#pragma unroll
    for (int e = 0; e < 8; ++e) acc = fmaf(o[e], d_o[e], acc);
  }
  acc = RowChunks<kD>::row_sum(acc);
  if (rc.chunk == 0 && i < seq.sq) p.dsum[q_row(p, seq, b, h, i)] = acc;
}

// The NaN rule's slow path of finish_dq (exact_rows.cuh): row i's dq
// recomputed from the inputs by the whole warp and stored. Not inlined, so
// that its registers and stack do not count against the stream's
// occupancy.
template <class T, int kD>
__device__ __noinline__ void recompute_dq_row(const Params& p, const SeqInfo& seq, int b, int h, int i, int lane,
                                              T* dst) {
  float dq[exact::kCols<kD>];
  exact::dq_row<T, kD>(p, seq, b, h, i, lane, dq);
#pragma unroll
  for (int u = 0; u < exact::kCols<kD>; ++u)
    if (lane + 32 * u < kD) dst[lane + 32 * u] = from_float<T>(dq[u]);
}

// Six CTAs an SM at least (at most 40 registers a thread): each thread has
// only 32 bytes in flight, so the stream needs many threads resident to
// cover the memory latency.
template <class T, int kD>
__global__ void __launch_bounds__(256, 6) finish_dq_kernel(const __grid_constant__ Params p) {
  using RC = RowChunks<kD>;
  const int b = blockIdx.z, h = blockIdx.y, lane = threadIdx.x & 31;
  const RC rc;
  const SeqInfo seq = resolve_seq(p, b);
  auto dq_of = [&](int i) { return static_cast<T*>(p.dq) + b * p.dq_sb + (seq.q_start + i) * p.dq_ss + h * p.dq_sh; };
  bool bad = false;
  if (rc.owns(seq.sq)) {
    float v[8];
    load8(p.dq_accum + q_row(p, seq, b, h, rc.row) * kD + rc.chunk * 8, v);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      v[e] *= p.scale;
      bad |= exact::not_finite(v[e]);
    }
    store8<T>(dq_of(rc.row) + rc.chunk * 8, v);
  }
  // A row the atomics left not finite is recomputed, one flagged row at a
  // time by the whole warp (after a __syncwarp that orders the fast stores
  // first).
  unsigned m = __ballot_sync(0xffffffffu, bad);
  if (m != 0u) __syncwarp();
  while (m != 0u) {
    const int slot = (__ffs(static_cast<int>(m)) - 1) / RC::kLanes;
    m &= ~(RC::kGroupMask << (slot * RC::kLanes));
    const int i = rc.row - lane / RC::kLanes + slot;
    recompute_dq_row<T, kD>(p, seq, b, h, i, lane, dq_of(i));
  }
}

// blockIdx.y is the kv head; its group's query heads are summed in order.
template <class T, int kD>
__global__ void __launch_bounds__(256) reduce_dkdv_kernel(const __grid_constant__ Params p) {
  const int b = blockIdx.z, hk = blockIdx.y;
  const RowChunks<kD> rc;
  const SeqInfo seq = resolve_seq(p, b);
  const int j = rc.row;
  if (!rc.owns(seq.sk)) return;  // no warp-wide operation below
  float sk[8] = {}, sv[8] = {};
  for (int g = 0; g < p.group; ++g) {
    const std::int64_t off = kv_row(p, seq, b, hk * p.group + g, j) * kD + rc.chunk * 8;
    float k[8], v[8];
    load8(p.dk_accum + off, k);
    load8(p.dv_accum + off, v);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      sk[e] += k[e];
      sv[e] += v[e];
    }
  }
  store8<T>(static_cast<T*>(p.dk) + b * p.dk_sb + (seq.k_start + j) * p.dk_ss + hk * p.dk_sh + rc.chunk * 8, sk);
  store8<T>(static_cast<T*>(p.dv) + b * p.dv_sb + (seq.k_start + j) * p.dv_ss + hk * p.dv_sh + rc.chunk * 8, sv);
}

// One launcher each, so that both backward families run exactly the same
// pre- and post-processing (same Params, same scratch layout). A grid with
// no rows (seqlen 0) is not launched at all.

// D = rowsum(dO * O) into p.dsum.
template <class T, int kD>
void launch_dot_do_o(const Params& p, cudaStream_t stream) {
  const dim3 rows_grid((p.seqlen_q + RowChunks<kD>::kRowsCta - 1) / RowChunks<kD>::kRowsCta, p.heads_q, p.batch);
  if (rows_grid.x == 0) return;
  dot_do_o_kernel<T, kD><<<rows_grid, 256, 0, stream>>>(p);
  check(cudaGetLastError(), "dot_do_o kernel launch");
}

// dq = scale * dq_accum (atomic mode).
template <class T, int kD>
void launch_finish_dq(const Params& p, cudaStream_t stream) {
  const dim3 rows_grid((p.seqlen_q + RowChunks<kD>::kRowsCta - 1) / RowChunks<kD>::kRowsCta, p.heads_q, p.batch);
  if (rows_grid.x == 0) return;
  finish_dq_kernel<T, kD><<<rows_grid, 256, 0, stream>>>(p);
  check(cudaGetLastError(), "finish_dq kernel launch");
}

// dk, dv = sums of the per-query-head dk_accum, dv_accum (GQA/MQA only).
template <class T, int kD>
void launch_reduce_dkdv(const Params& p, cudaStream_t stream) {
  if (p.group <= 1 || p.seqlen_k <= 0) return;
  const dim3 grid((p.seqlen_k + RowChunks<kD>::kRowsCta - 1) / RowChunks<kD>::kRowsCta, p.heads_k, p.batch);
  reduce_dkdv_kernel<T, kD><<<grid, 256, 0, stream>>>(p);
  check(cudaGetLastError(), "reduce_dkdv kernel launch");
}

}  // namespace flashattn::detail::cuda
