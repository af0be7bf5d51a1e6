// FlashAttention-2 backward on tensor cores (mma.sync.m16n8k16), sm_80+.
//
// Kernels, in launch order (api.cu):
//  1. dot_do_o:   D_i = rowsum(dO_i * O_i) in fp32 (the softmax-gradient term).
//  2. dkdv:       one CTA per key tile (64 or 128 keys, dispatch.h) of one
//                 (batch, query head); dK and dV accumulate in registers
//                 across the sweep over 64-row query tiles; in atomic mode
//                 each query tile's dQ contribution is added to an fp32
//                 buffer with red.global.add, and the next tile's Q and dO
//                 are fetched (cp.async) under that product.
//  3. dq (deterministic mode only): one CTA per query tile, sweeping the
//                 key tiles and accumulating dQ in registers, so no two CTAs
//                 ever add into the same element: bit-identical run to run.
//  4. finish_dq (atomic mode): fp32 dQ * scale -> dq's dtype.
//  5. reduce_dkdv (GQA/MQA only): sums the per-query-head fp32 dK/dV of
//                 each kv head's group in a fixed order.
//
// Both sweeps share one step, bwd_scores: for a (key tile x query tile)
// block it recomputes S^T = K Q^T and dP^T = V dO^T, forms P^T (dropped, scaled)
// and dS^T = P^T * (dP^T - D) and leaves both in shared memory, where the
// following products read them as A operands with whatever warp split
// suits them (rows x head_dim columns).
#pragma once

#include <cmath>

#include "../dispatch.h"
#include "../backward_aux.cuh"
#include "tile.cuh"

namespace flashattn::detail::sm80 {

// Shared-memory plan of the backward kernels (elements of T, then floats).
template <class T, int kD, int kBlockM, int kBlockN>
struct BwdSmem {
  static constexpr int kLd = kD + kPad;        // K, V, Q, dO rows
  static constexpr int kLdS = kBlockM + kPad;  // P^T, dS^T rows (one per key)
  static constexpr int kK = 0, kV = kK + kBlockN * kLd, kQ = kV + kBlockN * kLd, kDO = kQ + kBlockM * kLd;
  static constexpr int kPt = kDO + kBlockM * kLd, kDSt = kPt + kBlockN * kLdS, kEnd = kDSt + kBlockN * kLdS;
  static constexpr int bytes = kEnd * static_cast<int>(sizeof(T)) + 2 * kBlockM * static_cast<int>(sizeof(float));
};

// How the warps share each product of one (key tile x query tile) step.
//  - S^T, dP^T (keys x queries) and dK, dV (keys x head_dim): a grid of
//    kRowGroups x 2 warps; each owns kKeyMT 16-row tiles of keys and half
//    of the columns.
//  - dQ (queries x head_dim): kQRowGroups x kQColGroups warps, kQMT 16-row
//    tiles of queries each; two row tiles when the column slice stays a
//    whole number of n16 steps.
// Warp tiles of 32 x 32 or more keep ldmatrix traffic at <= 1 x4 load per
// 2 mma's; 16 x 32 tiles need 3 per 4 and make shared memory the limit.
template <int kD, int kBlockM, int kBlockN, int kWarps>
struct BwdSplit {
  static constexpr int kColGroups = 2, kRowGroups = kWarps / kColGroups;
  static constexpr int kKeyMT = kBlockN / (16 * kRowGroups);
  static constexpr int kQC = kBlockM / kColGroups;  // queries of a warp in S^T, dP^T
  static constexpr int kDC = kD / kColGroups;       // dK/dV columns of a warp
  static constexpr int kQMT = (kD / (kWarps / (kBlockM / 32))) % 16 == 0 ? 2 : 1;
  static constexpr int kQRowGroups = kBlockM / (16 * kQMT), kQColGroups = kWarps / kQRowGroups;
  static constexpr int kQDC = kD / kQColGroups;     // dQ columns of a warp
  static_assert(kKeyMT * 16 * kRowGroups == kBlockN && kQC % 16 == 0 && kDC % 16 == 0, "bad key split");
  static_assert(kQRowGroups * kQColGroups == kWarps && kQDC % 16 == 0, "bad dQ split");
};

// Recomputes P^T and dS^T of the (key tile n0) x (query tile m0) block into
// sPt / sdSt (see BwdSplit for which warp owns what). sLse holds
// LSE * log2(e) per query (+inf for rows with none: P = 0), sDsum holds D.
template <class T, int kD, int kBlockM, int kBlockN, int kWarps>
__device__ __forceinline__ void bwd_scores(const Params& p, const SeqInfo& seq, std::uint32_t bh, int m0, int n0,
                                           bool need_mask, bool window, const T* sK, const T* sV, const T* sQ,
                                           const T* sdO, const float* sLse, const float* sDsum, T* sPt, T* sdSt,
                                           int warp, int lane) {
  using S = BwdSmem<T, kD, kBlockM, kBlockN>;
  using W = BwdSplit<kD, kBlockM, kBlockN, kWarps>;
  constexpr int kMT = W::kKeyMT, kQC = W::kQC;
  const int rg = warp % W::kRowGroups, cg = warp / W::kRowGroups;
  const int key0 = rg * 16 * kMT;  // first key (in the tile) of this warp

  float s[kMT][kQC / 8][4], dp[kMT][kQC / 8][4];
  zero(s);
  zero(dp);
  warp_gemm<T, kMT, kQC, kD, false, false>(s, sK + key0 * S::kLd, S::kLd, sQ + cg * kQC * S::kLd, S::kLd, lane);
  warp_gemm<T, kMT, kQC, kD, false, false>(dp, sV + key0 * S::kLd, S::kLd, sdO + cg * kQC * S::kLd, S::kLd, lane);

  // Dropout keep bits (bit 4 (kQC/8 mi + t) + 2 half + e), in a rolled loop
  // (too much code to unroll next to the live fragments). One Philox call
  // covers 4 of a thread's elements: query rows i and i + 8 (query tiles t,
  // t + 1) at keys j and j + 8 (half = 0, 1), words 2 (t & 1) + half, the
  // 16-bit half j & 1 (philox.h; the query and key tiles and the warp's
  // slices start at multiples of 16).
  static_assert(kMT * kQC / 2 <= 64, "keep bits must fit one 64-bit word");
  std::uint64_t keep_bits = ~0ull;
  if (p.has_dropout) {
    keep_bits = 0;
    const int l = lane >> 2;  // key within 8
    const std::uint32_t hs = l & 1;
#pragma unroll 1
    for (int it = 0; it < kMT * kQC / 8; ++it) {
      const int mi = it / (kQC / 8), tp = (it >> 1) % (kQC / 16), e = it & 1;
      const int i = m0 + cg * kQC + tp * 16 + 2 * (lane & 3) + e;  // query tile 2tp; 2tp + 1 is i + 8
      const int j0 = n0 + key0 + mi * 16 + l;                       // half 0; half 1 is j0 + 8
      const Philox4 r = p.dropout.words(bh, DropoutStream::row_pair_of(static_cast<std::uint32_t>(i)),
                                        DropoutStream::call_of(static_cast<std::uint32_t>(j0)));
      const int bit = mi * (kQC / 2) + tp * 8 + e;  // (t = 2tp, half 0); + 2 half, + 4 for t = 2tp + 1
      keep_bits |= static_cast<std::uint64_t>(p.dropout.keep_bits4(r, hs)) << bit;
    }
  }
  const float ks = p.has_dropout ? p.keep_scale : 1.f;

#pragma unroll
  for (int mi = 0; mi < kMT; ++mi)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int key_local = key0 + mi * 16 + (lane >> 2) + 8 * half;
      const int j = n0 + key_local;
#pragma unroll
      for (int t = 0; t < kQC / 8; ++t) {
        float pv[2], dsv[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int q_local = cg * kQC + t * 8 + 2 * (lane & 3) + e;
          const int i = m0 + q_local;
          bool visible = true;
          if (need_mask) visible = i < seq.sq && j < seq.sk && (!window || p.window.visible(i, j, seq.sq, seq.sk));
          // P <= 1, as the true value is: the saved LSE is rounded, and at
          // logits of 1e6 and more its rounding alone would make P huge.
          const float pe =
              visible ? ptx::exp2_approx(ptx::min_nan(s[mi][t][2 * half + e] * p.scale_log2 - sLse[q_local], 0.f)) : 0.f;
          const bool keep = (keep_bits >> ((mi * (kQC / 8) + t) * 4 + 2 * half + e)) & 1u;
          pv[e] = pe * (keep ? ks : 0.f);  // times 0, not 0: a NaN P stays NaN
          dsv[e] = pe * (dp[mi][t][2 * half + e] * (keep ? ks : 0.f) - sDsum[q_local]);
        }
        const int off = key_local * S::kLdS + cg * kQC + t * 8 + 2 * (lane & 3);
        *reinterpret_cast<std::uint32_t*>(sPt + off) = pack2<T>(pv[0], pv[1]);
        *reinterpret_cast<std::uint32_t*>(sdSt + off) = pack2<T>(dsv[0], dsv[1]);
      }
    }
}

// dst[0..3] += (x, y, z, w) in global memory (dst 16-byte aligned). The dQ
// atomics bound the backward's speed (L2 atomic throughput); sm_90 adds
// all four with one red.global.add.v4.f32.
__device__ __forceinline__ void add_quad(float* dst, float x, float y, float z, float w) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"l"(dst), "f"(x), "f"(y), "f"(z), "f"(w)
               : "memory");
#else
  atomicAdd(dst, x);
  atomicAdd(dst + 1, y);
  atomicAdd(dst + 2, z);
  atomicAdd(dst + 3, w);
#endif
}

// Loads Q, dO (async), LSE and D of query tile m0 into shared memory.
template <class T, int kD, int kBlockM, int kThreads>
__device__ __forceinline__ void load_query_tile(const Params& p, const SeqInfo& seq, int b, int h, int m0,
                                                const T* gQ, const T* gdO, T* sQ, T* sdO, float* sLse,
                                                float* sDsum, int tid) {
  load_tile<kBlockM, kD, kThreads>(sQ, gQ + m0 * p.q_ss, p.q_ss, seq.sq - m0, tid);
  load_tile<kBlockM, kD, kThreads>(sdO, gdO + m0 * p.do_ss, p.do_ss, seq.sq - m0, tid);
  ptx::cp_async_commit();
  for (int r = tid; r < kBlockM; r += kThreads) {
    const int i = m0 + r;
    float lse = INFINITY, d = 0.f;
    if (i < seq.sq) {
      const std::int64_t row = q_row(p, seq, b, h, i);
      lse = p.lse[row];
      // An empty row (LSE = -inf) must give P = 0, not exp(+inf).
      lse = lse == -INFINITY ? INFINITY : lse * 1.4426950408889634f;
      d = p.dsum[row];
    }
    sLse[r] = lse;
    sDsum[r] = d;
  }
}

template <class T, int kD, int kBlockM, int kBlockN, int kWarps, int kCtasPerSm>
__global__ void __launch_bounds__(kWarps * 32, kCtasPerSm) dkdv_kernel(const __grid_constant__ Params p) {
  using S = BwdSmem<T, kD, kBlockM, kBlockN>;
  constexpr int kThreads = kWarps * 32;
  using W = BwdSplit<kD, kBlockM, kBlockN, kWarps>;
  constexpr int kMT = W::kKeyMT, kDC = W::kDC, kQMT = W::kQMT, kQDC = W::kQDC;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sm = reinterpret_cast<T*>(smem_raw);
  T *sK = sm + S::kK, *sV = sm + S::kV, *sQ = sm + S::kQ, *sdO = sm + S::kDO, *sPt = sm + S::kPt,
    *sdSt = sm + S::kDSt;
  float* sLse = reinterpret_cast<float*>(sm + S::kEnd);
  float* sDsum = sLse + kBlockM;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int b = blockIdx.z, h = blockIdx.y, n0 = blockIdx.x * kBlockN;
  const SeqInfo seq = resolve_seq(p, b);
  if (n0 >= seq.sk) return;
  const int hk = h / p.group;
  const int sq = seq.sq, sk = seq.sk;
  const T* gQ = static_cast<const T*>(p.q) + b * p.q_sb + seq.q_start * p.q_ss + h * p.q_sh;
  const T* gdO = static_cast<const T*>(p.dout) + b * p.do_sb + seq.q_start * p.do_ss + h * p.do_sh;
  const T* gK = static_cast<const T*>(p.k) + b * p.k_sb + (seq.k_start + n0) * p.k_ss + hk * p.k_sh;
  const T* gV = static_cast<const T*>(p.v) + b * p.v_sb + (seq.k_start + n0) * p.v_ss + hk * p.v_sh;
  const std::uint32_t bh = dropout_bh(p, b, h);

  load_tile<kBlockN, kD, kThreads>(sK, gK, p.k_ss, sk - n0, tid);
  load_tile<kBlockN, kD, kThreads>(sV, gV, p.v_ss, sk - n0, tid);
  ptx::cp_async_commit();

  // The query tiles that see this key tile (the dense window range or the
  // transposed block lists: ../key_tiles.cuh).
  const QueryTiles<kBlockM, kBlockN> tiles(p, b, h, n0, seq);
  const int n_steps = tiles.count();

  const int rg = warp % W::kRowGroups, cg = warp / W::kRowGroups;
  const int key0 = rg * 16 * kMT;  // first key (in the tile) of this warp
  float dk[kMT][kDC / 8][4], dv[kMT][kDC / 8][4];
  zero(dk);
  zero(dv);

  if (n_steps > 0)
    load_query_tile<T, kD, kBlockM, kThreads>(p, seq, b, h, tiles.at(0).m0, gQ, gdO, sQ, sdO, sLse, sDsum, tid);

  for (int step = 0; step < n_steps; ++step) {
    const QueryTile qt = tiles.at(step);
    const int m0 = qt.m0;
    const bool window = qt.window, need_mask = qt.need_mask;

    ptx::cp_async_wait<0>();
    __syncthreads();  // Q, dO (and at first K, V) landed; the last dQ product is done with sdSt
    bwd_scores<T, kD, kBlockM, kBlockN, kWarps>(p, seq, bh, m0, n0, need_mask, window, sK, sV, sQ, sdO, sLse,
                                                sDsum, sPt, sdSt, warp, lane);
    __syncthreads();  // P^T and dS^T complete
    // dV += P^T dO, dK += dS^T Q (this warp: 16 kMT keys x kDC columns).
    warp_gemm<T, kMT, kDC, kBlockM, false, true>(dv, sPt + key0 * S::kLdS, S::kLdS, sdO + cg * kDC, S::kLd, lane);
    warp_gemm<T, kMT, kDC, kBlockM, false, true>(dk, sdSt + key0 * S::kLdS, S::kLdS, sQ + cg * kDC, S::kLd, lane);
    __syncthreads();  // every warp is done with sQ, sdO, sLse, sDsum: prefetch the next tile under the dQ product
    if (step + 1 < n_steps)
      load_query_tile<T, kD, kBlockM, kThreads>(p, seq, b, h, tiles.at(step + 1).m0, gQ, gdO, sQ, sdO, sLse, sDsum,
                                                tid);
    if (p.dq_atomic) {
      // dQ_tile += dS K: A = dS (queries x keys) is dS^T read transposed.
      const int qrg = warp % W::kQRowGroups, qcg = warp / W::kQRowGroups;
      float dq[kQMT][kQDC / 8][4];
      zero(dq);
      warp_gemm<T, kQMT, kQDC, kBlockN, true, true>(dq, sdSt + qrg * 16 * kQMT, S::kLdS, sK + qcg * kQDC, S::kLd,
                                                    lane);
      // Lanes 2k and 2k+1 hold columns c..c+1 and c+2..c+3 of rows r and
      // r + 8; one exchange gives the even lane row r and the odd lane row
      // r + 8, each with four consecutive columns: one vector atomic each.
      const bool odd = lane & 1;
      const int col = qcg * kQDC + 2 * (lane & 3) - (odd ? 2 : 0);
#pragma unroll
      for (int mi = 0; mi < kQMT; ++mi) {
        const int i = m0 + (qrg * kQMT + mi) * 16 + (lane >> 2) + (odd ? 8 : 0);
        float* dst = p.dq_accum + q_row(p, seq, b, h, i) * kD + col;
#pragma unroll
        for (int t = 0; t < kQDC / 8; ++t) {
          const float r0 = __shfl_xor_sync(0xffffffffu, odd ? dq[mi][t][0] : dq[mi][t][2], 1);
          const float r1 = __shfl_xor_sync(0xffffffffu, odd ? dq[mi][t][1] : dq[mi][t][3], 1);
          if (i < sq) {
            if (odd) add_quad(dst + t * 8, r0, r1, dq[mi][t][2], dq[mi][t][3]);
            else add_quad(dst + t * 8, dq[mi][t][0], dq[mi][t][1], r0, r1);
          }
        }
      }
    }
  }
  ptx::cp_async_wait<0>();  // no copy may outlive the CTA (tile range can be empty)

  // dK carries the softmax scale (S = scale Q K^T).
#pragma unroll
  for (int mi = 0; mi < kMT; ++mi) {
    bool bad[2];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int j = n0 + key0 + mi * 16 + (lane >> 2) + 8 * half;
      float sum = 0.f;
#pragma unroll
      for (int t = 0; t < kDC / 8; ++t) sum += dk[mi][t][2 * half] + dk[mi][t][2 * half + 1] + dv[mi][t][2 * half] +
                                               dv[mi][t][2 * half + 1];
      bad[half] = j < sk && exact::not_finite(sum);
      if (j >= sk) continue;
      const int col = cg * kDC + 2 * (lane & 3);
      if (p.group > 1) {
        const std::int64_t row = kv_row(p, seq, b, h, j) * kD + col;
#pragma unroll
        for (int t = 0; t < kDC / 8; ++t) {
          *reinterpret_cast<float2*>(p.dk_accum + row + t * 8) =
              make_float2(dk[mi][t][2 * half] * p.scale, dk[mi][t][2 * half + 1] * p.scale);
          *reinterpret_cast<float2*>(p.dv_accum + row + t * 8) = make_float2(dv[mi][t][2 * half], dv[mi][t][2 * half + 1]);
        }
      } else {
        T* gdK = static_cast<T*>(p.dk) + b * p.dk_sb + (seq.k_start + j) * p.dk_ss + h * p.dk_sh + col;
        T* gdV = static_cast<T*>(p.dv) + b * p.dv_sb + (seq.k_start + j) * p.dv_ss + h * p.dv_sh + col;
#pragma unroll
        for (int t = 0; t < kDC / 8; ++t) {
          *reinterpret_cast<std::uint32_t*>(gdK + t * 8) =
              pack2<T>(dk[mi][t][2 * half] * p.scale, dk[mi][t][2 * half + 1] * p.scale);
          *reinterpret_cast<std::uint32_t*>(gdV + t * 8) = pack2<T>(dv[mi][t][2 * half], dv[mi][t][2 * half + 1]);
        }
      }
    }
    // The NaN rule's slow path (../exact_rows.cuh): a key row that is not
    // finite is recomputed (this warp's kDC columns).
    exact::for_flagged_rows(bad, [&](int rw) {
      const int j = n0 + key0 + mi * 16 + rw;
      float rk[exact::kCols<kD>], rv[exact::kCols<kD>];
      exact::dkdv_row<T, kD>(p, seq, b, h, j, lane, rk, rv);
      exact::store_dkdv_row<T, kD>(p, seq, b, h, j, lane, rk, rv, cg * kDC, cg * kDC + kDC);
    });
  }
}

// Deterministic dQ: one CTA per query tile sweeps its key tiles in a fixed
// order and owns its dQ rows outright.
template <class T, int kD, int kBlockM, int kBlockN, int kWarps, int kCtasPerSm>
__global__ void __launch_bounds__(kWarps * 32, kCtasPerSm) dq_kernel(const __grid_constant__ Params p) {
  using S = BwdSmem<T, kD, kBlockM, kBlockN>;
  constexpr int kThreads = kWarps * 32;
  using W = BwdSplit<kD, kBlockM, kBlockN, kWarps>;
  constexpr int kQMT = W::kQMT, kQDC = W::kQDC;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sm = reinterpret_cast<T*>(smem_raw);
  T *sK = sm + S::kK, *sV = sm + S::kV, *sQ = sm + S::kQ, *sdO = sm + S::kDO, *sPt = sm + S::kPt,
    *sdSt = sm + S::kDSt;
  float* sLse = reinterpret_cast<float*>(sm + S::kEnd);
  float* sDsum = sLse + kBlockM;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int b = blockIdx.z, h = blockIdx.y, m0 = blockIdx.x * kBlockM;
  const SeqInfo seq = resolve_seq(p, b);
  if (m0 >= seq.sq) return;
  const int hk = h / p.group;
  const T* gQ = static_cast<const T*>(p.q) + b * p.q_sb + seq.q_start * p.q_ss + h * p.q_sh;
  const T* gdO = static_cast<const T*>(p.dout) + b * p.do_sb + seq.q_start * p.do_ss + h * p.do_sh;
  const T* gK = static_cast<const T*>(p.k) + b * p.k_sb + seq.k_start * p.k_ss + hk * p.k_sh;
  const T* gV = static_cast<const T*>(p.v) + b * p.v_sb + seq.k_start * p.v_ss + hk * p.v_sh;
  const std::uint32_t bh = dropout_bh(p, b, h);

  load_query_tile<T, kD, kBlockM, kThreads>(p, seq, b, h, m0, gQ, gdO, sQ, sdO, sLse, sDsum, tid);
  const KeyTiles<kBlockM, kBlockN> tiles(p, b, h, m0, seq);
  const int n_steps = tiles.count();
  const int qrg = warp % W::kQRowGroups, qcg = warp / W::kQRowGroups;
  float dq[kQMT][kQDC / 8][4];
  zero(dq);

  for (int step = 0; step < n_steps; ++step) {
    const KeyTile cur = tiles.at(step);
    // The key tile of the backward may cross the query tile's bounds even
    // when the forward's (larger) tile did not: recheck the rows.
    const bool need_mask = cur.need_mask || m0 + kBlockM > seq.sq;
    __syncthreads();  // the previous tile's dQ product is done with sK, sPt, sdSt
    load_tile<kBlockN, kD, kThreads>(sK, gK + cur.n0 * p.k_ss, p.k_ss, seq.sk - cur.n0, tid);
    load_tile<kBlockN, kD, kThreads>(sV, gV + cur.n0 * p.v_ss, p.v_ss, seq.sk - cur.n0, tid);
    ptx::cp_async_commit();
    ptx::cp_async_wait<0>();
    __syncthreads();
    bwd_scores<T, kD, kBlockM, kBlockN, kWarps>(p, seq, bh, m0, cur.n0, need_mask, cur.window, sK, sV, sQ, sdO,
                                                sLse, sDsum, sPt, sdSt, warp, lane);
    __syncthreads();
    warp_gemm<T, kQMT, kQDC, kBlockN, true, true>(dq, sdSt + qrg * 16 * kQMT, S::kLdS, sK + qcg * kQDC, S::kLd,
                                                  lane);
  }
  ptx::cp_async_wait<0>();

#pragma unroll
  for (int mi = 0; mi < kQMT; ++mi) {
    bool bad[2];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int i = m0 + (qrg * kQMT + mi) * 16 + (lane >> 2) + 8 * half;
      float sum = 0.f;
#pragma unroll
      for (int t = 0; t < kQDC / 8; ++t) sum += dq[mi][t][2 * half] + dq[mi][t][2 * half + 1];
      bad[half] = i < seq.sq && exact::not_finite(sum);
      if (i >= seq.sq) continue;
      T* dst = static_cast<T*>(p.dq) + b * p.dq_sb + (seq.q_start + i) * p.dq_ss + h * p.dq_sh + qcg * kQDC +
               2 * (lane & 3);
#pragma unroll
      for (int t = 0; t < kQDC / 8; ++t)
        *reinterpret_cast<std::uint32_t*>(dst + t * 8) =
            pack2<T>(dq[mi][t][2 * half] * p.scale, dq[mi][t][2 * half + 1] * p.scale);
    }
    // The NaN rule's slow path (../exact_rows.cuh): a row that is not
    // finite is recomputed (this warp's kQDC columns).
    exact::for_flagged_rows(bad, [&](int rw) {
      const int i = m0 + (qrg * kQMT + mi) * 16 + rw;
      float rq[exact::kCols<kD>];
      exact::dq_row<T, kD>(p, seq, b, h, i, lane, rq);
      T* dst = static_cast<T*>(p.dq) + b * p.dq_sb + (seq.q_start + i) * p.dq_ss + h * p.dq_sh;
#pragma unroll
      for (int u = 0; u < exact::kCols<kD>; ++u) {
        const int c = lane + 32 * u;
        if (c >= qcg * kQDC && c < qcg * kQDC + kQDC && c < kD) dst[c] = from_float<T>(rq[u]);
      }
    });
  }
}

template <class T, int kD>
void launch_backward(const Params& p, cudaStream_t stream) {
  constexpr TileConfig c = sm80_tiles(kD);
  static_assert(c.head_dim == kD, "head_dim missing from the dispatch table");
  constexpr int kBM = c.bwd_block_m, kBN = c.bwd_block_n, kW = c.bwd_warps, kCtas = c.bwd_ctas_per_sm;
  const int smem = BwdSmem<T, kD, kBM, kBN>::bytes;

  launch_dot_do_o<T, kD>(p, stream);
  if (p.seqlen_k > 0) {
    auto dkdv = dkdv_kernel<T, kD, kBM, kBN, kW, kCtas>;
    set_max_dynamic_smem(dkdv, smem, "cudaFuncSetAttribute(dkdv)");
    dkdv<<<dim3((p.seqlen_k + kBN - 1) / kBN, p.heads_q, p.batch), kW * 32, smem, stream>>>(p);
    check(cudaGetLastError(), "dkdv kernel launch");
  }
  if (p.dq_atomic) {
    launch_finish_dq<T, kD>(p, stream);
  } else if (p.seqlen_q > 0) {
    auto dq = dq_kernel<T, kD, kBM, kBN, kW, kCtas>;
    set_max_dynamic_smem(dq, smem, "cudaFuncSetAttribute(dq)");
    dq<<<dim3((p.seqlen_q + kBM - 1) / kBM, p.heads_q, p.batch), kW * 32, smem, stream>>>(p);
    check(cudaGetLastError(), "dq kernel launch");
  }
  launch_reduce_dkdv<T, kD>(p, stream);
}

}  // namespace flashattn::detail::sm80
