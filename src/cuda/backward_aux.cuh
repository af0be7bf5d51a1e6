// The O(N d) kernels around the main sweep of every flash backward (the
// sm80 and sm90 families alike), one warp per row, 8 rows a CTA:
//   dot_do_o     D = rowsum(dO * O) in fp32 (the softmax-gradient term)
//   finish_dq    dq = scale * dq_accum (the fp32 atomic scratch); a row
//                that is not finite is recomputed (exact_rows.cuh)
//   reduce_dkdv  GQA/MQA: dk, dv = sums of the per-query-head fp32 dK / dV
//                of each kv head's group, in a fixed order
#pragma once

#include "common.cuh"
#include "exact_rows.cuh"

namespace flashattn::detail::cuda {

template <class T, int kD>
__global__ void __launch_bounds__(256) dot_do_o_kernel(const __grid_constant__ Params p) {
  const int b = blockIdx.z, h = blockIdx.y, i = blockIdx.x * 8 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  const SeqInfo seq = resolve_seq(p, b);
  if (i >= seq.sq) return;
  const T* o = static_cast<const T*>(p.o) + b * p.o_sb + (seq.q_start + i) * p.o_ss + h * p.o_sh;
  const T* d_o = static_cast<const T*>(p.dout) + b * p.do_sb + (seq.q_start + i) * p.do_ss + h * p.do_sh;
  float acc = 0.f;
  for (int c = lane; c < kD; c += 32) acc += to_float(o[c]) * to_float(d_o[c]);
#pragma unroll
  for (int m = 16; m > 0; m >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, m);
  if (lane == 0) p.dsum[q_row(p, seq, b, h, i)] = acc;
}

template <class T, int kD>
__global__ void __launch_bounds__(256) finish_dq_kernel(const __grid_constant__ Params p) {
  const int b = blockIdx.z, h = blockIdx.y, i = blockIdx.x * 8 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  const SeqInfo seq = resolve_seq(p, b);
  if (i >= seq.sq) return;
  const float* src = p.dq_accum + q_row(p, seq, b, h, i) * kD;
  T* dst = static_cast<T*>(p.dq) + b * p.dq_sb + (seq.q_start + i) * p.dq_ss + h * p.dq_sh;
  bool bad = false;
  for (int c = lane; c < kD; c += 32) {
    const float v = src[c] * p.scale;
    bad |= exact::not_finite(v);
    dst[c] = from_float<T>(v);
  }
  // The NaN rule's slow path (exact_rows.cuh): a row the atomics left not
  // finite is recomputed from the inputs.
  if (__any_sync(0xffffffffu, bad)) {
    float dq[exact::kCols<kD>];
    exact::dq_row<T, kD>(p, seq, b, h, i, lane, dq);
#pragma unroll
    for (int u = 0; u < exact::kCols<kD>; ++u)
      if (lane + 32 * u < kD) dst[lane + 32 * u] = from_float<T>(dq[u]);
  }
}

// blockIdx.y is the kv head; its group's query heads are summed in order.
template <class T, int kD>
__global__ void __launch_bounds__(256) reduce_dkdv_kernel(const __grid_constant__ Params p) {
  const int b = blockIdx.z, hk = blockIdx.y, j = blockIdx.x * 8 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  const SeqInfo seq = resolve_seq(p, b);
  if (j >= seq.sk) return;
  T* dk = static_cast<T*>(p.dk) + b * p.dk_sb + (seq.k_start + j) * p.dk_ss + hk * p.dk_sh;
  T* dv = static_cast<T*>(p.dv) + b * p.dv_sb + (seq.k_start + j) * p.dv_ss + hk * p.dv_sh;
  for (int c = lane; c < kD; c += 32) {
    float sk = 0.f, sv = 0.f;
    for (int g = 0; g < p.group; ++g) {
      const std::int64_t row = kv_row(p, seq, b, hk * p.group + g, j) * kD + c;
      sk += p.dk_accum[row];
      sv += p.dv_accum[row];
    }
    dk[c] = from_float<T>(sk);
    dv[c] = from_float<T>(sv);
  }
}

// One launcher each, so that both backward families run exactly the same
// pre- and post-processing (same Params, same scratch layout). A grid with
// no rows (seqlen 0) is not launched at all.

// D = rowsum(dO * O) into p.dsum.
template <class T, int kD>
void launch_dot_do_o(const Params& p, cudaStream_t stream) {
  const dim3 rows_grid((p.seqlen_q + 7) / 8, p.heads_q, p.batch);
  if (rows_grid.x == 0) return;
  dot_do_o_kernel<T, kD><<<rows_grid, 256, 0, stream>>>(p);
  check(cudaGetLastError(), "dot_do_o kernel launch");
}

// dq = scale * dq_accum (atomic mode).
template <class T, int kD>
void launch_finish_dq(const Params& p, cudaStream_t stream) {
  const dim3 rows_grid((p.seqlen_q + 7) / 8, p.heads_q, p.batch);
  if (rows_grid.x == 0) return;
  finish_dq_kernel<T, kD><<<rows_grid, 256, 0, stream>>>(p);
  check(cudaGetLastError(), "finish_dq kernel launch");
}

// dk, dv = sums of the per-query-head dk_accum, dv_accum (GQA/MQA only).
template <class T, int kD>
void launch_reduce_dkdv(const Params& p, cudaStream_t stream) {
  if (p.group <= 1 || p.seqlen_k <= 0) return;
  reduce_dkdv_kernel<T, kD><<<dim3((p.seqlen_k + 7) / 8, p.heads_k, p.batch), 256, 0, stream>>>(p);
  check(cudaGetLastError(), "reduce_dkdv kernel launch");
}

}  // namespace flashattn::detail::cuda
