// FlashAttention backward for Hopper (sm_90a): TMA loads, wgmma, warp
// specialisation (docs/hopper.md, "The backward").
//
// Launch sequence (launch_backward below), the same as the sm80 path's in
// atomic mode, with the same kernels around the main one
// (../backward_aux.cuh):
//  1. dot_do_o_kernel     D = rowsum(dO * O) into the dsum scratch;
//  2. backward_kernel (here)    dK, dV of one key tile, dQ added in fp32 to
//                               the dq_accum scratch (bulk reductions);
//  3. finish_dq_kernel    dq = scale * dq_accum;
//  4. reduce_dkdv_kernel  (GQA/MQA) dk, dv = sums over the group.
//
// backward_kernel: a CTA owns 128 keys (kBlockN; 64 at d = 256, whose
// consumers split head_dim instead of the keys: consume_split_dims below)
// of one (batch, query head) and sweeps the 64-row query tiles (kBlockM)
// that can see any of them (QueryTiles: the dense window range or the
// block-sparse lists; fully masked tiles are never visited). Three warpgroups (as described here for d = 64 and 128):
//  - warpgroup 0, the producer. Warp 0 only: lane 0 issues every TMA copy
//    (K and V once, then Q_i and dO_i of each query tile into a ring of
//    kStages stages, kSm90BwdTiles); the 32 lanes load the tile's LSE and D rows with ordinary
//    loads (an LSE row of [batch, heads, seqlen_q] floats has no 16-byte
//    stride TMA could use) and store them next to the stage. It gives most
//    of its registers back (setmaxnreg.dec).
//  - warpgroups 1 and 2, the consumers: consumer w owns keys 64w..64w+63
//    (wgmma's M = 64). Per query tile i:
//      S^T  = K_w Q_i^T        wgmma SS (both K-major), 64 keys x 64 queries
//      dP^T = V_w dO_i^T       wgmma SS
//      P^T  = exp2(S^T scale log2e - LSE_i log2e), masked to 0
//      dS^T = P^T (dP^T - D_i)
//      dV  += P^T dO_i         wgmma RS: P^T is already in A-fragment layout
//      dK  += dS^T Q_i         wgmma RS (so neither P nor dS needs shared
//                              memory for these two: the accumulator layout
//                              of a 64-row tile is the A layout of the next)
//      dS^T -> shared memory (both consumers: all 128 keys), and one
//      step later (when the other consumer's half is surely there)
//      dQ_i = dS K             wgmma SS, A = dS^T read M-major
//                              (imm-trans-a), B = K read N-major; then
//                              staged in shared memory and added to
//                              dq_accum row by row by bulk reductions.
//    dK and dV stay in registers for the whole sweep; stored at the end
//    (dK times the softmax scale), to dk/dv or, under GQA, to the fp32
//    per-query-head dk_accum / dv_accum that reduce_dkdv sums.
//    dQ columns: at d = 128 consumer w computes the 64 columns of K's box w
//    every tile; at d = 64 (one box) the consumers take turns, consumer
//    (i % 2) computing all 64 columns of tile i, so every dQ element gets
//    exactly one reduction from this CTA.
//
// Turns. A consumer's tile is two batches of wgmmas with elementwise work
// after each: G1(i) = S^T, dP^T; E1(i) = P^T, dS^T, the dS^T stores;
// G2(i) = dV, dK of tile i and dQ of tile i - 1 (at d = 128 dQ first, so
// that its reductions, E2, run under dV and dK; at d = 64 last). The
// consumers issue their batches in strict alternation (named barriers 1
// and 2, one waits, the other arrives):
//     C0.G1(i)  C1.G2(i-1)  C0.G2(i)  C1.G1(i)  C0.G1(i+1)  C1.G2(i)  ...
// so one consumer's E1 runs while the other's GEMMs keep the tensor cores
// busy (in lockstep, both E1 phases fell together and the tensor cores
// idled through them). C1 opens with an empty turn (its "G2(-1)"); after
// the loop C0 takes an empty turn and then its dQ of the last tile, and C1
// does its own without a turn. dQ(i) waits a step because it needs both
// consumers' dS^T(i), and the turn order publishes them: a consumer stores
// and fences its dS^T(i) in E1(i), before its G2(i) turn ends, and every
// dQ(i) is issued in a later turn of the other consumer or in its own.
// The dS^T buffer of tile i is (i % 3): C0 stores dS^T(i) after C1's
// G1(i-1) turn, by which time C1's dQ(i-3) (in its G2(i-2)) has completed;
// C1's dQ(i-2) (in its G2(i-1)) may not have, hence three buffers.
//
// Barriers (mbarriers in shared memory, 8 bytes each):
//   kv_full        1 arrival (+ tx of K and V)     K, V landed before the first S^T
//   q_full[s]      32 arrivals (+ tx of Q_i)       Q_i and LSE_i landed (stage s)
//   do_full[s]     32 arrivals (+ tx of dO_i)      dO_i and D_i landed (stage s)
//   empty[s]       256 arrivals                    every consumer thread is done
//                                                  reading Q_i, dO_i, LSE_i, D_i of
//                                                  stage s: the producer may refill it
// The stages form rings walked with pipeline states (pipeline.h), as in
// the forward.
#pragma once

#include <cmath>
#include <type_traits>

#include "../dispatch.h"
#include "../ptx/ptx.cuh"
#include "../ptx/sm90.cuh"
#include "../backward_aux.cuh"  // dot_do_o, finish_dq, reduce_dkdv: the pre/post kernels of every backward
#include "backward_dq.cuh"        // the dQ pass (dq_pass rows of kSm90BwdTiles)
#include "maps.h"
#include "pipeline.h"
#include "roles.h"

namespace flashattn::detail::sm90 {

using namespace flashattn::detail::cuda;
namespace x = flashattn::detail::ptx::sm90;

namespace bwd {

// Registers (roles.h): a consumer holds dK and dV (2 x d / 2 fp32), S^T
// and dP^T (2 x 32) and the 16-bit P^T / dS^T fragments (2 x 16) at its
// peak: 224 of its 240 at d = 128 before addresses.
constexpr int kBlockM = 64;   // queries a step (wgmma N of S^T, K of dV / dK)

// Byte offsets inside the (1024-aligned) dynamic shared memory. Every tile
// is a whole number of 1024-byte swizzle atoms, so all stay aligned.
template <int kD, int kStages>
struct Smem {
  // Keys a CTA: 128 (64 a consumer: wgmma M) or, at d = 256, 64 that both
  // consumers share, each with half of head_dim (kSplitDims; dispatch.h).
  static constexpr int kBlockN = sm90_bwd_tile(kD).block_n;
  static constexpr bool kSplitDims = kBlockN == 64;
  // dS^T buffers. Split keys: consumer 0 writes tile i's while consumer 1's
  // dQ of tile i - 2 may still read buffer (i - 2) % 3 (see "Turns"); two
  // would race. Split dims: tile i's (and P^T's) are written after both
  // consumers have finished G2(i - 1) (see consume_split_dims), so (i - 2)'s
  // buffer is free.
  static constexpr int kDsBufs = kSplitDims ? 2 : 3;
  static constexpr int kPtBufs = kSplitDims ? 2 : 0;
  static constexpr int kNumStages = kStages;
  static constexpr int kChunks = kD / 64;        // 64-column (128-byte) boxes per row
  static constexpr int kKV = kBlockN * kD * 2;   // K or V: box c at c * kBlockN * 128
  static constexpr int kQT = kBlockM * kD * 2;   // one Q or dO tile: box c at c * kBlockM * 128
  static constexpr int kDS = kBlockN * kBlockM * 2;  // dS^T or P^T: a key row of 64 queries (128 B) each
  static constexpr int kK = 0;
  static constexpr int kV = kK + kKV;
  static constexpr int kQ = kV + kKV;            // Q stage s at kQ + s kQT
  static constexpr int kDO = kQ + kStages * kQT;  // dO stage s at kDO + s kQT
  static constexpr int kDSt = kDO + kStages * kQT;  // dS^T buffer b at kDSt + b kDS
  static constexpr int kPt = kDSt + kDsBufs * kDS;   // P^T buffer b at kPt + b kDS (split dims)
  // dQ staging (split keys only): a consumer's 64 x 64 fp32 partial as two
  // boxes of 32 columns (128-byte rows, 128B-swizzled as the dq_accum map
  // says), each added to dq_accum by one TMA reduction.
  static constexpr int kDqBox = kBlockM * 128;
  static constexpr int kDqBuf = 2 * kDqBox;
  static constexpr int kDqBufs = kSplitDims ? 0 : 2;  // one a consumer
  static constexpr int kDq = kPt + kPtBufs * kDS;     // consumer w's at kDq + w kDqBuf
  static constexpr int kRows = kDq + kDqBufs * kDqBuf;  // float lse2[kStages][64], then dsum[kStages][64]
  // int large[kStages]: some row of the stage has |LSE log2 e| >= 2^8 (probs_and_grads)
  static constexpr int kFlags = kRows + 2 * kStages * kBlockM * 4;
  static constexpr int kBars = kFlags + (kStages * 4 + 7) / 8 * 8;
  static constexpr int kBytes = kBars + (1 + 3 * kStages) * 8;  // kv_full, q_full[], do_full[], empty[]
  static constexpr int kAlloc = kBytes + 1024;   // slack to align the base
  static_assert(kKV % 1024 == 0 && kQT % 1024 == 0 && kDS % 1024 == 0, "tiles must be whole swizzle atoms");
  static_assert(kAlloc <= 227 * 1024, "over the shared memory of one CTA");
  static_assert(kDq % 1024 == 0 && kDqBox % 1024 == 0, "dQ staging boxes must be whole swizzle atoms");
};

// The dense schedule of a key tile: the query tiles [begin, begin + count)
// (of kBlockM rows) that can see a key of [n0, n0 + kBlockN) under the
// window rule (src/common/mask.h): the rows i with first_key(i) <= n_last
// and last_key(i) >= n0, as QueryTiles' dense range (../key_tiles.cuh).
// The kernel instantiated for dense problems (kSparse = false) uses it
// instead of QueryTiles, testing each tile's mask with tile_needs_mask:
// with the block-sparse path compiled in, even unexecuted, the dense
// sweep's main loop was 17% longer (d 128: 1960 against 1681 instructions).
template <int kBlockN>
__device__ __forceinline__ void query_tiles(const Params& p, const SeqInfo& seq, int n0, int* begin, int* end) {
  const int n_last = min(n0 + kBlockN, seq.sk) - 1;
  std::int64_t i_lo = 0, i_hi = seq.sq - 1;
  const std::int64_t shift = static_cast<std::int64_t>(seq.sk) - seq.sq;
  if (p.window.right >= 0) i_lo = max(i_lo, static_cast<std::int64_t>(n0) - shift - p.window.right);
  if (p.window.left >= 0) i_hi = min(i_hi, static_cast<std::int64_t>(n_last) - shift + p.window.left);
  *begin = static_cast<int>(i_lo / kBlockM);
  *end = i_hi < i_lo ? *begin : static_cast<int>(i_hi / kBlockM) + 1;
}

template <int kBlockN>
struct DenseQueryRange {
  static constexpr bool kSparse = false;
  int begin = 0, count_ = 0;
  __device__ __forceinline__ DenseQueryRange(const Params& p, int, int, int n0, const SeqInfo& seq) {
    int end;
    query_tiles<kBlockN>(p, seq, n0, &begin, &end);
    count_ = end - begin;
  }
  __device__ __forceinline__ int count() const { return count_; }
  __device__ __forceinline__ int m0(int step) const { return (begin + step) * kBlockM; }
};

// The block-sparse schedule of a key tile (QueryTiles with its lists).
template <int kBlockN>
struct SparseQueryTiles : QueryTiles<kBlockM, kBlockN> {
  static constexpr bool kSparse = true;
  using QueryTiles<kBlockM, kBlockN>::QueryTiles;
  __device__ __forceinline__ int m0(int step) const { return this->at(step).m0; }
};


// The backward's barriers (block at Smem::kBars): kv_full (K and V of
// the CTA, once), then the rings of the query tiles' stages: q_full[s] (Q
// and the LSE rows landed), do_full[s] (dO and the D rows), and one
// empty[s] for both (every consumer thread is done with stage s's Q, dO,
// LSE and D).
template <int kStages>
struct BwdPipes {
  std::uint32_t bars;
  Ring<kStages, 8, 8 * (1 + 2 * kStages)> q;
  Ring<kStages, 8 * (1 + kStages), 8 * (1 + 2 * kStages)> dO;

  __device__ __forceinline__ explicit BwdPipes(std::uint32_t bars_) : bars(bars_), q{bars_}, dO{bars_} {}
  __device__ __forceinline__ std::uint32_t kv_full() const { return bars; }
  // One thread. Full barriers: the producer warp's 32 arrivals (each lane
  // stores rows of the stage) plus the copies' bytes.
  __device__ __forceinline__ void init() const {
    x::mbar_init(kv_full(), 1);
    for (int s = 0; s < kStages; ++s) {
      x::mbar_init(q.full_bar(s), 32);
      x::mbar_init(dO.full_bar(s), 32);
      x::mbar_init(q.empty_bar(s), kConsumers * kWarpgroup);
    }
    x::fence_mbar_init();
  }
};

}  // namespace bwd

namespace bwd {

// Whether the tile of queries m0.. and keys n0.. (n_last its last key
// below seqlen_k) has an element the mask hides: a tail of either length,
// or a window that does not cover the whole tile. Unmasked tiles take
// probs_and_grads' branch-free path.
template <int kBlockN>
__device__ __forceinline__ bool tile_needs_mask(const Params& p, const SeqInfo& seq, int m0, int n0, int n_last,
                                                bool window) {
  const int m_last = min(m0 + kBlockM, seq.sq) - 1;
  return m0 + kBlockM > seq.sq || n0 + kBlockN > seq.sk ||
         (window && !window_covers(p.window, m0, m_last, n0, n_last, seq.sq, seq.sk));
}

// The mask flags of tile `step` of a schedule: from the lists (sparse:
// partial blocks apply the window rule, full ones do not), or from the
// kernel-wide window flag and tile_needs_mask (dense).
template <int kBlockN, class Tiles>
__device__ __forceinline__ void tile_flags(const Tiles& tiles, int step, const Params& p, const SeqInfo& seq, int m0,
                                           int n0, int n_last, bool window_all, bool* need_mask, bool* window) {
  if constexpr (Tiles::kSparse) {
    const QueryTile qt = tiles.at(step);
    *need_mask = qt.need_mask;
    *window = qt.window;
  } else {
    *window = window_all;
    *need_mask = tile_needs_mask<kBlockN>(p, seq, m0, n0, n_last, window_all);
  }
}

// dQ = dS K of one query tile, the same for both consumer layouts: K = the
// CTA's kBlockN keys in steps of 16 rows (2048 bytes in both operands),
// A = dS^T read M-major (ds_desc), B = K read N-major (k_desc); one commit
// group.
template <int kBlockN, int kN, class T>
__device__ __forceinline__ void dq_gemm(float (&dq)[kN], std::uint64_t ds_desc, std::uint64_t k_desc, T) {
#pragma unroll
  for (int kk = 0; kk < kBlockN / 16; ++kk)
    x::wgmma_ss_tt(dq, x::desc_advance(ds_desc, kk * 16 * 128), x::desc_advance(k_desc, kk * 16 * 128),
                   kk > 0 ? 1 : 0, T{});
  x::wgmma_commit();
}

// E1 of one tile, the same for both consumer layouts: in place, st = S^T ->
// P^T (P_d^T under dropout) and dpt = dP^T -> dS^T. Element
// [4 tt + 2 half + e] of this thread is key j_first + 8 half, query
// m_first + 8 tt + col_in_tile + e, for the kCols / 8 8-column query tiles
// tt of the accumulators (wgmma N = kCols). lse_s / dsum_s: the stage's
// LSE (times log2 e) and D rows from query m_first on. Waits for the two
// G1 commit groups itself (S^T, then dP^T), so that the keep bits and the
// row loads run while they are on the tensor cores.
template <int kCols, bool kDropout>
__device__ __forceinline__ void probs_and_grads(float (&st)[kCols / 2], float (&dpt)[kCols / 2], const Params& p,
                                                const SeqInfo& seq, const float* lse_s, const float* dsum_s,
                                                int m_first, int j_first, int col_in_tile, bool need_mask,
                                                bool window, std::uint32_t bh, bool large) {
  // Dropout keep bits (bit 4 tt + 2 half + e, as st), while S^T and
  // dP^T are on the tensor cores (they depend only on indices). One
  // Philox call covers 4 of this thread's elements: query rows i, i + 8
  // (tiles tt = 2tp, 2tp + 1) at keys j, j + 8 (half 0, 1), word
  // 2 (tt & 1) + half, 16-bit half j & 1 (philox.h; m_first and j_first
  // - lane / 4 are multiples of 16). Rolled: unrolled, the calls
  // would take registers next to dK, dV and the two accumulators.
  // (The other 4 words of each call are those of the lane with key
  // j ^ 1. A version that shared the calls through __shfl_xor_sync,
  // halving them, ran the gpu-check racecheck case at d 64 in 200 s
  // instead of 2.5 s, cause not isolated: not kept; docs/journal has it.)
  std::uint32_t keep_bits = ~0u;
  if constexpr (kDropout) {
    keep_bits = 0;
    const auto j0 = static_cast<std::uint32_t>(j_first);
    const std::uint32_t call = DropoutStream::call_of(j0), hs = j0 & 1u;
#pragma unroll 1
    for (int it = 0; it < kCols / 8; ++it) {
      const int tp = it >> 1, e = it & 1;
      const auto i0 = static_cast<std::uint32_t>(m_first + 16 * tp + col_in_tile + e);
      const Philox4 r = p.dropout.words(bh, DropoutStream::row_pair_of(i0), call);
      // bit 8 tp + e: (tt 2tp, half 0); + 2: half 1; + 4, + 6: tt 2tp + 1
      keep_bits |= p.dropout.keep_bits4(r, hs) << (8 * tp + e);
    }
  }

  // P^T (in place in st). LSE and D of this thread's query columns are read before the
  // waits for S^T and dP^T, so that the shared-memory latency (long
  // under the wgmma operand traffic) passes under the tensor cores'.
  float2 lse_c[kCols / 8], dsum_c[kCols / 8];
#pragma unroll
  for (int tt = 0; tt < kCols / 8; ++tt)
    lse_c[tt] = *reinterpret_cast<const float2*>(lse_s + 8 * tt + col_in_tile);
  x::wgmma_wait<1>();
  x::fence_operands(st);
  // Two loops, not one with the mask test inside: ptxas kept a branch
  // and a select per element in the unmasked tiles (4 issue slots each).
  // P <= 1, as the true value is: the saved LSE is rounded to a few ulps
  // of its own size, and at logits of 1e6 and more that rounding alone
  // makes 2^(S - LSE) far larger than 1. The bound costs an instruction an
  // element, so only the tiles of a stage the producer flagged as large
  // (some row's |LSE log2 e| >= 2^8, where an ulp is 2^-15; never in
  // ordinary training) take it, through the masked loop (the callers
  // pass need_mask for them). min_nan: a NaN stays NaN.
  if (!need_mask) {
#pragma unroll
    for (int tt = 0; tt < kCols / 8; ++tt) {
      const float2 l2 = lse_c[tt];
#pragma unroll
      for (int q = 0; q < 4; ++q)
        st[4 * tt + q] = ptx::exp2_approx(st[4 * tt + q] * p.scale_log2 - ((q & 1) ? l2.y : l2.x));
    }
  } else {
    auto masked = [&](auto bounded) {
#pragma unroll
      for (int tt = 0; tt < kCols / 8; ++tt) {
        const float2 l2 = lse_c[tt];
#pragma unroll
        for (int half = 0; half < 2; ++half)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float& v = st[4 * tt + 2 * half + e];
            float x = v * p.scale_log2 - (e ? l2.y : l2.x);
            if constexpr (decltype(bounded)::value) x = ptx::min_nan(x, 0.f);
            const float pe = ptx::exp2_approx(x);
            const int i = m_first + 8 * tt + col_in_tile + e, j = j_first + 8 * half;
            const bool visible = i < seq.sq && j < seq.sk && (!window || p.window.visible(i, j, seq.sq, seq.sk));
            v = visible ? pe : 0.f;
          }
      }
    };
    if (large) masked(std::true_type{});
    else masked(std::false_type{});
  }
  // dS^T = P^T (dP^T - D), in place in dpt. With dropout, dP^T is the
  // gradient of the dropped P_d = P Z / (1 - p), so dP^T is first taken
  // through the mask (D = rowsum(dO O) is already that of the dropped P),
  // and dV uses P_d^T.
#pragma unroll
  for (int tt = 0; tt < kCols / 8; ++tt)
    dsum_c[tt] = *reinterpret_cast<const float2*>(dsum_s + 8 * tt + col_in_tile);
  x::wgmma_wait<0>();
  x::fence_operands(dpt);
  if constexpr (kDropout) {
#pragma unroll
    for (int i = 0; i < kCols / 2; ++i) dpt[i] *= ((keep_bits >> i) & 1u) ? p.keep_scale : 0.f;
  }
#pragma unroll
  for (int tt = 0; tt < kCols / 8; ++tt) {
    const float2 d2 = dsum_c[tt];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      dpt[4 * tt + 2 * half] = st[4 * tt + 2 * half] * (dpt[4 * tt + 2 * half] - d2.x);
      dpt[4 * tt + 2 * half + 1] = st[4 * tt + 2 * half + 1] * (dpt[4 * tt + 2 * half + 1] - d2.y);
    }
  }

  if constexpr (kDropout) {
#pragma unroll
    for (int i = 0; i < kCols / 2; ++i) st[i] *= ((keep_bits >> i) & 1u) ? p.keep_scale : 0.f;
  }
}

// The epilogue of both consumer layouts: dK (times the softmax scale, S =
// scale Q K^T) and dV of this thread's key rows j_first, j_first + 8 and
// its kN / 4 8-column tiles from head_dim column col_first (accumulator
// layout), to dk / dv or, under GQA, to the fp32 per-query-head dk_accum /
// dv_accum that reduce_dkdv sums. Keys past seqlen_k are never stored. A
// key tile no query tile sees stores zeros (the gradients are outputs, not
// accumulations).
template <class T, int kD, int kN>
__device__ __forceinline__ void store_dk_dv(const float (&dk)[kN], const float (&dv)[kN], const Params& p,
                                            const SeqInfo& seq, int b, int h, int j_first, int col_first) {
  const int lane = threadIdx.x & 31;
  bool bad[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int j = j_first + 8 * half;
    float sum = 0.f;
#pragma unroll
    for (int tt = 0; tt < kN / 4; ++tt)
      sum += dk[4 * tt + 2 * half] + dk[4 * tt + 2 * half + 1] + dv[4 * tt + 2 * half] + dv[4 * tt + 2 * half + 1];
    bad[half] = j < seq.sk && exact::not_finite(sum);
    if (j >= seq.sk) continue;
    if (p.group > 1) {
      const std::int64_t row = kv_row(p, seq, b, h, j) * kD + col_first;
#pragma unroll
      for (int tt = 0; tt < kN / 4; ++tt) {
        *reinterpret_cast<float2*>(p.dk_accum + row + 8 * tt) =
            make_float2(dk[4 * tt + 2 * half] * p.scale, dk[4 * tt + 2 * half + 1] * p.scale);
        *reinterpret_cast<float2*>(p.dv_accum + row + 8 * tt) =
            make_float2(dv[4 * tt + 2 * half], dv[4 * tt + 2 * half + 1]);
      }
    } else {
      const std::int64_t row = seq.k_start + j;
      T* gdK = static_cast<T*>(p.dk) + b * p.dk_sb + row * p.dk_ss + h * p.dk_sh + col_first;
      T* gdV = static_cast<T*>(p.dv) + b * p.dv_sb + row * p.dv_ss + h * p.dv_sh + col_first;
#pragma unroll
      for (int tt = 0; tt < kN / 4; ++tt) {
        *reinterpret_cast<std::uint32_t*>(gdK + 8 * tt) =
            pack2<T>(dk[4 * tt + 2 * half] * p.scale, dk[4 * tt + 2 * half + 1] * p.scale);
        *reinterpret_cast<std::uint32_t*>(gdV + 8 * tt) = pack2<T>(dv[4 * tt + 2 * half], dv[4 * tt + 2 * half + 1]);
      }
    }
  }
  // The NaN rule's slow path (../exact_rows.cuh): a key row that is not
  // finite is recomputed (this thread's quad holds the whole row's columns
  // of this consumer: 2 kN from the quad's first column).
  const int c_lo = col_first - 2 * (lane % 4), j0 = j_first - lane / 4;
  exact::for_flagged_rows(bad, [&](int rw) {
    float rk[exact::kCols<kD>], rv[exact::kCols<kD>];
    exact::dkdv_row<T, kD>(p, seq, b, h, j0 + rw, lane, rk, rv);
    exact::store_dkdv_row<T, kD>(p, seq, b, h, j0 + rw, lane, rk, rv, c_lo, c_lo + 2 * kN);
  });
}
}  // namespace bwd

// The consumers at d = 256 (Smem::kSplitDims; docs/hopper.md, "The backward
// at d = 256"). dK and dV only: dQ comes from the dQ pass (dispatch.h's
// dq_pass, backward_dq.cuh: fp32 atomics from this sweep bound it). dK and dV of 64 keys x 256 columns would need
// 256 registers a thread in one warpgroup, so both consumers take the
// CTA's 64 keys and consumer w owns head_dim columns 128w..128w + 127 of
// dK and dV. Per query tile i (64 queries):
//   G1  S^T_w = K Q_w^T, dP^T_w = V dO_w^T    wgmma SS, 64 keys x the 32
//       queries 32w..32w + 31 (N = 32): the two consumers split G1 by
//       queries, so no product is computed twice
//   E1  P^T_w, dS^T_w (probs_and_grads) -> shared memory, both 16-bit
//       (every column of dV and dK needs all 64 queries: the other
//       consumer's half comes through shared memory)
//   --  named barrier 1 (both consumers): both halves of P^T(i), dS^T(i)
//       are stored and fenced
//   G2  dV_w += P^T dO[:, w]   wgmma SS, A = P^T K-major, B N-major, N = 128
//       dK_w += dS^T Q[:, w]   likewise; then stage s is released.
// The buffers of P^T and dS^T alternate (i % 2): a consumer writes tile
// i + 1's only after the barrier of tile i, which the other consumer
// reaches only after its G2(i - 1) (the last reader of buffer (i + 1) % 2)
// has completed.
// The two consumers run in lockstep (one barrier a tile), so E1 is not
// hidden under the other's GEMMs as in the split-keys layout: at d = 256
// the GEMMs are 4x longer than at d = 64 for the same E1.
template <class T, int kD, bool kDropout, class L, class Tiles>
__device__ __forceinline__ void consume_split_dims(const Params& p, const SeqInfo& seq, unsigned char* smem,
                                                   std::uint32_t base, int b, int h, int n0, const Tiles& tiles,
                                                   std::uint32_t bh) {
  using namespace bwd;
  constexpr int kBlockN = L::kBlockN, kStages = L::kNumStages;
  constexpr int kHalfD = kD / 2;       // dK, dV columns a consumer (wgmma N of G2)
  constexpr int kQCols = kBlockM / 2;  // queries of S^T, dP^T a consumer (wgmma N of G1)
  static_assert(kBlockN == 64 && kHalfD == 128, "the split-dims layout is that of d = 256");
  const int w = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x) / kWarpgroup - 1, 0);
  const int t = static_cast<int>(threadIdx.x) % kWarpgroup, warp = t / 32, lane = t % 32;
  const int col_in_tile = 2 * (lane % 4);
  const int key_row0 = 16 * warp + lane / 4;  // and + 8: this thread's keys within the 64
  const int n_steps = tiles.count();
  const bool window_all = !p.window.unbounded();
  const int n_last = min(n0 + kBlockN, seq.sk) - 1;
  const float* lse_rows = reinterpret_cast<const float*>(smem + L::kRows);
  const float* dsum_rows = lse_rows + kStages * kBlockM;
  const int* large_rows = reinterpret_cast<const int*>(smem + L::kFlags);
  const BwdPipes<kStages> pipes(base + L::kBars);

  float dk[kHalfD / 2], dv[kHalfD / 2];
#pragma unroll
  for (int i = 0; i < kHalfD / 2; ++i) dk[i] = dv[i] = 0.f;
  const std::uint32_t base_c = ptx::opaque(base);  // see the split-keys consumer
  if (n_steps > 0) x::mbar_wait(pipes.kv_full(), 0);

  for (PipelineState<kStages> st_state; st_state.count < n_steps; ++st_state) {
    const int step = st_state.count, s = st_state.stage();
    const int m0 = tiles.m0(step);
    bool need_mask, window;
    tile_flags<kBlockN>(tiles, step, p, seq, m0, n0, n_last, window_all, &need_mask, &window);
    const std::uint32_t sbase = ptx::opaque(base_c);
    const std::uint32_t sK = sbase + L::kK, sV = sbase + L::kV;
    const std::uint32_t sQ = sbase + L::kQ + s * L::kQT, sdO = sbase + L::kDO + s * L::kQT;

    // ---- G1: K = head_dim in steps of 16 (a new 64-column box every 4).
    // Q_w / dO_w: rows 32w.. of every box (4096 w bytes: whole swizzle atoms).
    float st[kQCols / 2], dpt[kQCols / 2];
    pipes.q.wait(st_state);
    pipes.dO.wait(st_state);
    const std::uint64_t k_desc = x::desc_sw128(sK, 16, 1024), v_desc = x::desc_sw128(sV, 16, 1024);
    const std::uint64_t q_desc = x::desc_sw128(sQ + w * kQCols * 128, 16, 1024);
    const std::uint64_t do_desc = x::desc_sw128(sdO + w * kQCols * 128, 16, 1024);
    x::wgmma_fence();  // st / dpt were last read by ordinary instructions
    auto g1_gemm = [&](float (&acc)[kQCols / 2], std::uint64_t a_desc, std::uint64_t b_desc) {
#pragma unroll
      for (int kk = 0; kk < kD / 16; ++kk) {
        const std::uint32_t aoff = (kk / 4) * kBlockN * 128 + (kk % 4) * 32;
        const std::uint32_t boff = (kk / 4) * kBlockM * 128 + (kk % 4) * 32;
        x::wgmma_ss(acc, x::desc_advance(a_desc, aoff), x::desc_advance(b_desc, boff), kk > 0 ? 1 : 0, T{});
      }
      x::wgmma_commit();
    };
    g1_gemm(st, k_desc, q_desc);
    g1_gemm(dpt, v_desc, do_desc);

    // ---- E1, then this consumer's 32 query columns of P^T and dS^T to
    // buffer (step % 2): row = key (128 bytes of 64 queries), this
    // thread's 4 bytes in 16-byte chunk 4w + tt of its row, stored at chunk
    // (4w + tt) ^ (row % 8) -- the 128B swizzle the descriptors undo. A
    // warp's store of one (tt, half) covers 8 rows in 8 distinct chunks:
    // all 32 banks.
    const bool large = large_rows[s] != 0;
    probs_and_grads<kQCols, kDropout>(st, dpt, p, seq, lse_rows + s * kBlockM + w * kQCols,
                                      dsum_rows + s * kBlockM + w * kQCols, m0 + w * kQCols, n0 + key_row0,
                                      col_in_tile, need_mask || large, window, bh, large);
    const int buf = step % L::kDsBufs;
    unsigned char* pt_s = smem + L::kPt + buf * L::kDS;
    unsigned char* ds_s = smem + L::kDSt + buf * L::kDS;
#pragma unroll
    for (int tt = 0; tt < kQCols / 8; ++tt)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int r = key_row0 + 8 * half;
        const int off = r * 128 + (((4 * w + tt) ^ (r % 8)) * 16) + col_in_tile * 2;
        *reinterpret_cast<std::uint32_t*>(pt_s + off) = pack2<T>(st[4 * tt + 2 * half], st[4 * tt + 2 * half + 1]);
        *reinterpret_cast<std::uint32_t*>(ds_s + off) = pack2<T>(dpt[4 * tt + 2 * half], dpt[4 * tt + 2 * half + 1]);
      }
    // Ordinary stores that wgmma (the async proxy) reads next: fence, then
    // the barrier that publishes them to the other consumer.
    x::fence_proxy_async_smem();
    x::named_barrier_sync<1>(kConsumers * kWarpgroup);

    // ---- G2. K = the 64 queries, in steps of 16 rows (2048 bytes); N = 128
    // columns, boxes 2w and 2w + 1 (LBO = one box). A (P^T, dS^T: K-major)
    // steps 32 bytes in its row.
    const std::uint32_t sPt = sbase + L::kPt + buf * L::kDS, sDs = sbase + L::kDSt + buf * L::kDS;
    const std::uint64_t pt_desc = x::desc_sw128(sPt, 16, 1024), ds_k_desc = x::desc_sw128(sDs, 16, 1024);
    const std::uint64_t dob_desc = x::desc_sw128(sdO + 2 * w * kBlockM * 128, kBlockM * 128, 1024);
    const std::uint64_t qb_desc = x::desc_sw128(sQ + 2 * w * kBlockM * 128, kBlockM * 128, 1024);
    x::fence_operands(dv);
    x::fence_operands(dk);
    x::wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBlockM / 16; ++kk)
      x::wgmma_ss_bt(dv, x::desc_advance(pt_desc, kk * 32), x::desc_advance(dob_desc, kk * 16 * 128), 1, T{});
#pragma unroll
    for (int kk = 0; kk < kBlockM / 16; ++kk)
      x::wgmma_ss_bt(dk, x::desc_advance(ds_k_desc, kk * 32), x::desc_advance(qb_desc, kk * 16 * 128), 1, T{});
    x::wgmma_commit();

    x::wgmma_wait<0>();
    x::fence_operands(dv);
    x::fence_operands(dk);
    // This thread no longer reads Q, dO, LSE or D of stage s.
    pipes.q.release(st_state);
  }

  store_dk_dv<T, kD>(dk, dv, p, seq, b, h, n0 + key_row0, w * kHalfD + col_in_tile);
}

// kDropout is a template parameter, not a run-time test of p.has_dropout:
// the dropout code (keep bits, its Philox state) then costs nothing in the
// kernel without dropout, whose consumers have no registers to spare. So is
// kSparse (block-sparse lists or the dense range: QueryTiles).
template <class T, int kD, bool kDropout, bool kSparse>
__global__ void __launch_bounds__(kThreads, 1)
    backward_kernel(const __grid_constant__ Params p, const __grid_constant__ CUtensorMap tma_q,
                    const __grid_constant__ CUtensorMap tma_k, const __grid_constant__ CUtensorMap tma_v,
                    const __grid_constant__ CUtensorMap tma_do, const __grid_constant__ CUtensorMap tma_dq) {
#if FA_SM90_DEVICE
  using namespace bwd;
  constexpr int kStages = sm90_bwd_tile(kD).stages;
  using L = Smem<kD, kStages>;
  constexpr int kBlockN = L::kBlockN, kDsBufs = L::kDsBufs;

  extern __shared__ unsigned char smem_raw[];
  // The 128B swizzle pattern repeats every 1024 bytes of *address*: TMA and
  // wgmma agree only on 1024-aligned tiles, so align the base by hand.
  const std::uint32_t raw = x::smem_u32(smem_raw);
  const std::uint32_t base = (raw + 1023u) & ~1023u;
  unsigned char* smem = smem_raw + (base - raw);
  const BwdPipes<kStages> pipes(base + L::kBars);
  float* lse_rows = reinterpret_cast<float*>(smem + L::kRows);        // [stage][64], LSE * log2(e)
  float* dsum_rows = lse_rows + kStages * kBlockM;                          // [stage][64], D
  int* large_rows = reinterpret_cast<int*>(smem + L::kFlags);               // [stage]: a row's |LSE log2 e| >= 2^8

  const int tid = threadIdx.x;
  const int b = blockIdx.z, h = blockIdx.y, n0 = blockIdx.x * kBlockN;
  const int hk = h / p.group;
  const std::uint32_t bh = dropout_bh(p, b, h);
  const SeqInfo seq = resolve_seq(p, b);
  // A varlen key tile past its sequence's end has no keys: nothing to do
  // (the grid covers the longest sequence). The whole CTA leaves together.
  if (n0 >= seq.sk) return;
  const SeqCoords at = seq_coords(p, seq, b);
  // The query tiles that see this key tile (../key_tiles.cuh).
  using Tiles = std::conditional_t<kSparse, SparseQueryTiles<kBlockN>, DenseQueryRange<kBlockN>>;
  const Tiles tiles(p, b, h, n0, seq);
  const int n_steps = tiles.count();

  if (tid == 0) pipes.init();
  __syncthreads();

  if (tid < kWarpgroup) {
    // ------------------------------------------------------ producer ---
    x::setmaxnreg_dec<kProducerRegs>();
    const int lane = tid % 32;
    // K/V are loaded only when some query tile consumes them: no copy may
    // still be writing this CTA's shared memory when it exits.
    if (tid < 32 && n_steps > 0) {
      if (lane == 0) {
        x::tma_prefetch_map(&tma_q);
        x::tma_prefetch_map(&tma_do);
        x::tma_prefetch_map(&tma_k);
        x::tma_prefetch_map(&tma_v);
        x::mbar_arrive_expect_tx(pipes.kv_full(), 2 * L::kKV);
#pragma unroll
        for (int c = 0; c < L::kChunks; ++c) {
          x::tma_load_4d(base + L::kK + c * kBlockN * 128, &tma_k, pipes.kv_full(), c * 64, at.k_row0 + n0, hk,
                         at.batch);
          x::tma_load_4d(base + L::kV + c * kBlockN * 128, &tma_v, pipes.kv_full(), c * 64, at.k_row0 + n0, hk,
                         at.batch);
        }
      }
      for (PipelineState<kStages> st_state; st_state.count < n_steps; ++st_state) {
        const int step = st_state.count, s = st_state.stage();
        const int m0 = tiles.m0(step);
        // A block-sparse tile past seqlen_q (the last block of a short
        // sequence) copies the sequence's first rows instead: its rows are
        // all masked, and no box lies wholly outside the tensor.
        const int m_copy = m0 < seq.sq ? m0 : 0;
        // Every lane waits: each of them overwrites its LSE / D rows of stage s.
        pipes.q.acquire(st_state);
        if (lane == 0) {
          // expect_tx without an arrival: the phase needs all 32 lanes'
          // arrivals below, lane 0's included, so it cannot complete before
          // this announcement nor before the copied bytes have landed.
          x::mbar_expect_tx(pipes.q.full(st_state), L::kQT);
#pragma unroll
          for (int c = 0; c < L::kChunks; ++c)
            x::tma_load_4d(base + L::kQ + s * L::kQT + c * kBlockM * 128, &tma_q, pipes.q.full(st_state), c * 64,
                           at.q_row0 + m_copy, h, at.batch);
          x::mbar_expect_tx(pipes.dO.full(st_state), L::kQT);
#pragma unroll
          for (int c = 0; c < L::kChunks; ++c)
            x::tma_load_4d(base + L::kDO + s * L::kQT + c * kBlockM * 128, &tma_do, pipes.dO.full(st_state), c * 64,
                           at.q_row0 + m_copy, h, at.batch);
        }
        // Rows past seqlen_q: LSE = +inf (P = 0) and D = 0. An empty row
        // (LSE = -inf, no visible key) must give P = 0 too, not exp(+inf).
        float lse2[2], dd[2];
#pragma unroll
        for (int k = 0; k < 2; ++k) {
          const int i = m0 + lane + 32 * k;
          lse2[k] = INFINITY;
          dd[k] = 0.f;
          if (i < seq.sq) {
            const std::int64_t row = q_row(p, seq, b, h, i);
            const float l = p.lse[row];
            lse2[k] = l == -INFINITY ? INFINITY : l * 1.4426950408889634f;
            dd[k] = p.dsum[row];
          }
        }
        // Each lane's arrival releases its own stores (mbarrier.arrive is
        // .release.cta); the consumers' try_wait acquires them.
        lse_rows[s * kBlockM + lane] = lse2[0];
        lse_rows[s * kBlockM + lane + 32] = lse2[1];
        const bool large = __any_sync(0xffffffffu, (fabsf(lse2[0]) >= 256.f && lse2[0] != INFINITY) ||
                                                       (fabsf(lse2[1]) >= 256.f && lse2[1] != INFINITY));
        if (lane == 0) large_rows[s] = large ? 1 : 0;
        x::mbar_arrive(pipes.q.full(st_state));
        dsum_rows[s * kBlockM + lane] = dd[0];
        dsum_rows[s * kBlockM + lane + 32] = dd[1];
        x::mbar_arrive(pipes.dO.full(st_state));
      }
    }
  } else {
    // ------------------------------------------------------ consumer ---
    x::setmaxnreg_inc<kConsumerRegs>();
    if constexpr (L::kSplitDims) {
      // dK, dV; dQ in the dQ pass after this kernel.
      static_assert(sm90_bwd_tile(kD).dq_pass, "the split-head_dim layout leaves dQ to the dQ pass");
      consume_split_dims<T, kD, kDropout, L>(p, seq, smem, base, b, h, n0, tiles, bh);
    } else {
      // Which 64 keys of the tile. Broadcast from lane 0 so that the compiler
      // knows it is warp-uniform: the d = 64 dQ branch below depends on it,
      // and a wgmma on a path ptxas thinks divergent gets serialised (C7518).
      const int w = __shfl_sync(0xffffffffu, tid / kWarpgroup - 1, 0);
      const int t = tid % kWarpgroup, warp = t / 32, lane = t % 32;
      const int col_in_tile = 2 * (lane % 4);
      // This thread's two key rows (accumulator layout: 16 warp + lane / 4,
      // + 8) within the 128-key tile.
      const int key_row0 = 64 * w + 16 * warp + lane / 4;
      const bool window_all = !p.window.unbounded();
      const int n_last = min(n0 + kBlockN, seq.sk) - 1;

      float dk[kD / 2], dv[kD / 2];
#pragma unroll
      for (int i = 0; i < kD / 2; ++i) dk[i] = dv[i] = 0.f;
      // The shared-memory base once, as an opaque value: a plain `base` was
      // rematerialised every tile from SR_CgaCtaId (S2UR, whose latency was
      // the consumers' largest single stall: 13% of the samples under ncu).
      // And opaque again where each tile uses it (sbase): otherwise the
      // 16 k-steps x 2 operands of 64-bit descriptors derived from it are
      // hoisted out of the loop, taking the registers dK and dV need
      // (ptxas spilled at d = 128).
      const std::uint32_t base_c = ptx::opaque(base);

      // Turns at the tensor cores (see "Turns" at the top of this file):
      // consumer 0 waits on named barrier 1, consumer 1 on 2; each turn ends
      // by arriving on the other's. Consumer 1 opens with an arrival, so
      // consumer 0 issues first.
      auto turn_wait = [&] {
        if (w == 0) x::named_barrier_sync<1>(kConsumers * kWarpgroup);
        else x::named_barrier_sync<2>(kConsumers * kWarpgroup);
      };
      auto turn_pass = [&] {
        if (w == 0) x::named_barrier_arrive<2>(kConsumers * kWarpgroup);
        else x::named_barrier_arrive<1>(kConsumers * kWarpgroup);
      };

      // dQ of query tile j (64 queries x 64 columns of box qbox) = dS_j K:
      // A = dS^T_j read M-major, B = K read N-major, K = the 128 keys in steps
      // of 16 rows (2048 bytes). M and N are one 64-element swizzle atom each,
      // so the MN-atom step (LBO) is never used (given SBO's value).
      // dQ columns: at d = 128 consumer w computes box w of every tile; at
      // d = 64 (one box) tile j is consumer (j % 2)'s.
      constexpr bool kSplit = L::kChunks == 2;
      const int qbox = kSplit ? w : 0;
      auto my_dq = [&](int j) { return kSplit || (j & 1) == w; };
      auto dq_issue = [&](float (&dq)[32], int j) {
        const std::uint32_t sbase = ptx::opaque(base_c);
        const std::uint64_t ds_desc = x::desc_sw128(sbase + L::kDSt + (j % kDsBufs) * L::kDS, 1024, 1024);
        const std::uint64_t k_desc = x::desc_sw128(sbase + L::kK + qbox * kBlockN * 128, 1024, 1024);
        x::wgmma_fence();  // dq was last read by the staging stores of the tile before
        dq_gemm<kBlockN>(dq, ds_desc, k_desc, T{});
      };
      // dQ's reductions into dq_accum. A thread holds columns c, c + 1 of rows
      // r and r + 8 in every 8-column tile tt. As red.global.add.v2 each
      // warp instruction was 8 one-sector L2 requests (ncu: 268M a d 128 8K
      // backward, L2 at 69%). Instead the consumer stages its 64 x 64 block
      // as two 128B-swizzled boxes of 32 columns, and thread 0 adds each box
      // with one TMA reduction. (A 256-byte bulk reduction a row, issued by
      // 64 threads, was worse: ptxas serialises a bulk copy with per-thread
      // addresses lane by lane, +18% instructions.) Order, on this
      // consumer's named barrier (3 + w, its 128 threads):
      //   1. thread 0 waits until its previous reductions have read the
      //      buffer (bulk_wait_read), and the barrier tells the others;
      //   2. every thread stores its dQ values, fences them for the async
      //      proxy, and the barrier publishes them to thread 0;
      //   3. thread 0 starts the two reductions.
      // Rows past the sequence: the map drops those past a dense tensor's
      // seqlen, but after a packed varlen sequence come the next one's rows,
      // so a sequence's last tile stages zeros there (dS is 0 on those rows,
      // but dS K is NaN where K holds an Inf).
      // At d = 128 dQ is issued first so that its reductions run under dV /
      // dK (measured with red.global reductions: +5-8% there). At d = 64
      // issuing it first was 4-8% slower with those, 20% with these.
      constexpr bool kDqFirst = kD == 128;
      const std::uint32_t dq_buf = base_c + L::kDq + w * L::kDqBuf;
      auto dq_sync = [&] {
        if (w == 0) x::named_barrier_sync<3>(kWarpgroup);
        else x::named_barrier_sync<4>(kWarpgroup);
      };
      auto dq_reduce = [&](float (&dq)[32], int j) {
        x::fence_operands(dq);
        if (t == 0) x::bulk_wait_read<0>();
        dq_sync();
        const int m0 = tiles.m0(j);
        const bool tail = m0 + kBlockM > seq.sq;
        unsigned char* buf = smem + L::kDq + w * L::kDqBuf;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          // Row r of the block; its 16-byte chunk k of a box lies at chunk
          // k ^ (r % 8) (the 128B swizzle). A warp's store of one (tt, half)
          // is 8 rows x 32 bytes over 16 distinct chunk slots: 2 wavefronts.
          const int r = 16 * warp + lane / 4 + 8 * half;
          const bool keep = !tail || m0 + r < seq.sq;
#pragma unroll
          for (int tt = 0; tt < 8; ++tt) {
            const int chunk = 2 * (tt % 4) + col_in_tile / 4;
            const float2 v = keep ? make_float2(dq[4 * tt + 2 * half], dq[4 * tt + 2 * half + 1]) : make_float2(0.f, 0.f);
            *reinterpret_cast<float2*>(buf + (tt / 4) * L::kDqBox + r * 128 + (chunk ^ (r % 8)) * 16 +
                                       (col_in_tile % 4) * 4) = v;
          }
        }
        x::fence_proxy_async_smem();
        dq_sync();
        if (t == 0 && m0 < seq.sq) {
          const int row = at.q_row0 + m0;
          x::tma_reduce_add_4d(&tma_dq, dq_buf, qbox * 64, row, h, at.batch);
          x::tma_reduce_add_4d(&tma_dq, dq_buf + L::kDqBox, qbox * 64 + 32, row, h, at.batch);
          x::bulk_commit();
        }
      };

      // At d = 64, K_w and V_w (64 keys x 64 columns, constant for the CTA)
      // are the A operands of S^T and dP^T from registers (16 each): the SS
      // form read them from shared memory again every tile, half of G1's
      // shared-memory operand traffic. (At d = 128 they would take 64
      // registers next to dK and dV.) ldmatrix.x4 of one k16 slice: lanes
      // 8m..8m+7 address the rows of 8x8 matrix m = (rows +8 if m odd,
      // columns +8 if m >= 2), which comes back in the wgmma A-fragment order.
      constexpr bool kKVRegs = kD == 64;
      std::uint32_t ka[kKVRegs ? 4 : 1][4], va[kKVRegs ? 4 : 1][4];
      auto load_kv_fragments = [&] {
        const int row = 16 * warp + (lane % 8) + 8 * ((lane / 8) % 2);
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
          const int chunk = 2 * kk + lane / 16;
          const std::uint32_t off = w * 64 * 128 + row * 128 + ((chunk ^ (row % 8)) * 16);
          ptx::ldmatrix_x4(ka[kk], base_c + L::kK + off);
          ptx::ldmatrix_x4(va[kk], base_c + L::kV + off);
        }
      };

      if (n_steps > 0) {
        x::mbar_wait(pipes.kv_full(), 0);
        if constexpr (kKVRegs) load_kv_fragments();
        // Consumer 1's turn 0 is empty (it has no tile before the first): it
        // only keeps the alternation, so that its G1 of tile i follows
        // consumer 0's G2 of tile i.
        if (w == 1) {
          x::named_barrier_arrive<1>(kConsumers * kWarpgroup);
          turn_wait();
          turn_pass();
        }
      }
      for (PipelineState<kStages> st_state; st_state.count < n_steps; ++st_state) {
        const int step = st_state.count, s = st_state.stage();
        const int m0 = tiles.m0(step);
        bool need_mask, window;
        tile_flags<kBlockN>(tiles, step, p, seq, m0, n0, n_last, window_all, &need_mask, &window);
        const std::uint32_t sbase = ptx::opaque(base_c);
        const std::uint32_t sKw = sbase + L::kK + w * 64 * 128, sVw = sbase + L::kV + w * 64 * 128;
        const std::uint32_t sQ = sbase + L::kQ + s * L::kQT, sdO = sbase + L::kDO + s * L::kQT;
        // (sKw, sVw: consumer w's 64 keys, rows 64w.. of every box: 8192 B,
        // whole swizzle atoms.)

        // ---- turn G1: S^T = K_w Q^T and dP^T = V_w dO^T. K = head_dim in
        // steps of 16 (32 bytes inside a 128-byte swizzled row; a new
        // 64-column box every 4 steps). Two commit groups, so the softmax part
        // of P^T can start while dP^T is still on the tensor cores.
        float st[kBlockM / 2], dpt[kBlockM / 2];
        pipes.q.wait(st_state);
        pipes.dO.wait(st_state);
        turn_wait();
        const std::uint64_t k_desc = x::desc_sw128(sKw, 16, 1024), q_desc = x::desc_sw128(sQ, 16, 1024);
        const std::uint64_t v_desc = x::desc_sw128(sVw, 16, 1024), do_desc = x::desc_sw128(sdO, 16, 1024);
        x::wgmma_fence();  // st / dpt were last read by ordinary instructions
        // One GEMM of G1: acc = A B^T over head_dim, A = K_w or V_w (from
        // registers at d = 64, else from a_desc), B = Q_i or dO_i (b_desc).
        auto g1_gemm = [&](float (&acc)[kBlockM / 2], const std::uint32_t (&a_regs)[kKVRegs ? 4 : 1][4],
                           std::uint64_t a_desc, std::uint64_t b_desc) {
#pragma unroll
          for (int kk = 0; kk < kD / 16; ++kk) {
            const std::uint32_t aoff = (kk / 4) * kBlockN * 128 + (kk % 4) * 32;
            const std::uint32_t boff = (kk / 4) * kBlockM * 128 + (kk % 4) * 32;
            if constexpr (kKVRegs) x::wgmma_rs(acc, a_regs[kk], x::desc_advance(b_desc, boff), kk > 0 ? 1 : 0, T{});
            else x::wgmma_ss(acc, x::desc_advance(a_desc, aoff), x::desc_advance(b_desc, boff), kk > 0 ? 1 : 0, T{});
          }
          x::wgmma_commit();
        };
        g1_gemm(st, ka, k_desc, q_desc);
        g1_gemm(dpt, va, v_desc, do_desc);
        turn_pass();

        // ---- E1, while the other consumer's G2 is on the tensor cores.
        const bool large = large_rows[s] != 0;
        probs_and_grads<kBlockM, kDropout>(st, dpt, p, seq, lse_rows + s * kBlockM, dsum_rows + s * kBlockM, m0,
                                           n0 + key_row0, col_in_tile, need_mask || large, window, bh, large);

        // P^T (P_d^T with dropout) and dS^T to 16 bits, already in the A-fragment layout of the
        // k16 slice kk (queries 16 kk..16 kk + 15): a[0] rows r, a[1] rows
        // r + 8, a[2], a[3] the same 8 columns further.
        std::uint32_t pa[kBlockM / 16][4], dsa[kBlockM / 16][4];
#pragma unroll
        for (int kk = 0; kk < kBlockM / 16; ++kk)
#pragma unroll
          for (int q = 0; q < 4; ++q) {
            pa[kk][q] = pack2<T>(st[8 * kk + 2 * q], st[8 * kk + 2 * q + 1]);
            dsa[kk][q] = pack2<T>(dpt[8 * kk + 2 * q], dpt[8 * kk + 2 * q + 1]);
          }

        // dS^T to shared memory buffer (step % kDsBufs) for dQ: row = key
        // (128 bytes of 64 queries), 16-byte chunk c of row r stored at chunk
        // c ^ (r % 8) -- the 128B swizzle TMA would have applied, which the
        // wgmma descriptor undoes. A warp's 32 stores of one (tt, half) hit
        // 8 rows x 16 bytes in 8 distinct chunks: all 32 banks, no conflict.
        // No barrier before the stores: the turns order them after both
        // consumers' dQ of tile step - kDsBufs (see "Turns" at the top).
        unsigned char* dS_s = smem + L::kDSt + (step % kDsBufs) * L::kDS;
#pragma unroll
        for (int tt = 0; tt < kBlockM / 8; ++tt)
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            const int r = key_row0 + 8 * half;
            *reinterpret_cast<std::uint32_t*>(dS_s + r * 128 + ((tt ^ (r % 8)) * 16) + col_in_tile * 2) =
                dsa[tt / 2][2 * (tt % 2) + half];
          }
        // Ordinary stores that wgmma (the async proxy) reads next: each
        // writing thread fences before the turn barrier that publishes them.
        x::fence_proxy_async_smem();

        // ---- turn G2: dV += P^T dO, dK += dS^T Q (K = the 64 queries in
        // steps of 16 rows, 2048 bytes; N = head_dim across the 64-column
        // boxes, LBO = one box of kBlockM rows), then dQ of the tile before.
        turn_wait();
        x::fence_operands(dv);
        x::fence_operands(dk);
        const std::uint64_t dob_desc = x::desc_sw128(sdO, kBlockM * 128, 1024);
        const std::uint64_t qb_desc = x::desc_sw128(sQ, kBlockM * 128, 1024);
        auto dvdk_issue = [&] {
          // In each path's own block: a fence before a branch to the wgmmas
          // did not count for ptxas, which injected one (C7519).
          x::wgmma_fence();  // pa / dsa were just written by ordinary instructions
#pragma unroll
          for (int kk = 0; kk < kBlockM / 16; ++kk)
            x::wgmma_rs_bt(dv, pa[kk], x::desc_advance(dob_desc, kk * 16 * 128), 1, T{});
#pragma unroll
          for (int kk = 0; kk < kBlockM / 16; ++kk)
            x::wgmma_rs_bt(dk, dsa[kk], x::desc_advance(qb_desc, kk * 16 * 128), 1, T{});
          x::wgmma_commit();
        };
        // Each branch holds a whole dQ path, issue to wait<0> (ptxas must see
        // the wait on every path that issued the dQ group, or it injects
        // waits). The empty arrival: this thread no longer reads Q, dO, LSE
        // or D of stage s, so the producer may refill it.
        const bool dq_first = kDqFirst && step > 0;
        if (!dq_first) dvdk_issue();
        if (dq_first) {
          // dQ(step - 1), then dV / dK: the dQ group completes first, and its
          // reductions run while dV / dK are on the tensor cores.
          float dq[32];
          dq_issue(dq, step - 1);
          dvdk_issue();
          turn_pass();
          x::wgmma_wait<1>();
          dq_reduce(dq, step - 1);
          x::wgmma_wait<0>();
          x::fence_operands(dv);
          x::fence_operands(dk);
          pipes.q.release(st_state);
        } else if (step > 0 && my_dq(step - 1)) {
          // dV / dK, then dQ(step - 1): stage s is released as soon as dV /
          // dK are complete, while dQ is still on the tensor cores.
          float dq[32];
          dq_issue(dq, step - 1);
          turn_pass();
          x::wgmma_wait<1>();
          x::fence_operands(dv);
          x::fence_operands(dk);
          pipes.q.release(st_state);
          x::wgmma_wait<0>();
          dq_reduce(dq, step - 1);
        } else {
          turn_pass();
          x::wgmma_wait<0>();
          x::fence_operands(dv);
          x::fence_operands(dk);
          pipes.q.release(st_state);
        }
      }
      // dQ of the last tile. Consumer 0 takes two more turns: an empty one,
      // then the dQ turn, which follows consumer 1's last G2, the turn that
      // published consumer 1's dS^T of that tile. Consumer 1's own last G2
      // came after consumer 0's last G2, so both halves are there for it.
      if (n_steps > 0) {
        const int j = n_steps - 1;
        if (w == 0) {
          turn_wait();
          turn_pass();
          turn_wait();
        }
        if (my_dq(j)) {
          float dq[32];
          dq_issue(dq, j);
          x::wgmma_wait<0>();
          dq_reduce(dq, j);
        }
      }

      // The reductions must have read the staging buffer before the CTA's
      // shared memory goes, and completed before the kernel ends.
      if (t == 0) x::bulk_wait_all();
      store_dk_dv<T, kD>(dk, dv, p, seq, b, h, n0 + key_row0, col_in_tile);
    }
  }
#else
  // Built for another architecture: the dispatch never launches this.
  __trap();
#endif
}

template <class T, int kD>
void launch_backward(const Params& p, cudaStream_t stream) {
  constexpr Sm90BwdTile c = sm90_bwd_tile(kD);
  using L = bwd::Smem<kD, c.stages>;
  static_assert(c.head_dim == kD && c.block_m == bwd::kBlockM && (c.block_n == 128 || c.block_n == 64) &&
                    c.stages >= 2,
                "row missing from kSm90BwdTiles");

  launch_dot_do_o<T, kD>(p, stream);
  // With no queries the Q/dO maps are never read (no query tile sees a
  // key), with no keys the K/V maps, but an empty tensor may come with a
  // null pointer, which the encoder need not accept: a non-null, 16-byte
  // aligned address of the other side stands in.
  const void* any = p.seqlen_q > 0 ? p.q : p.k;
  if (p.seqlen_k > 0 || (c.dq_pass && p.seqlen_q > 0)) {
    const CUtensorMap tq =
        make_operand_map<T, kD>(p, Side::q, p.q, any, p.heads_q, p.q_ss, p.q_sh, p.q_sb, c.block_m, "q");
    const CUtensorMap tdo = make_operand_map<T, kD>(p, Side::q, p.dout, any, p.heads_q, p.do_ss, p.do_sh,
                                                 p.do_sb, c.block_m, "dout");
    const CUtensorMap tk =
        make_operand_map<T, kD>(p, Side::k, p.k, any, p.heads_k, p.k_ss, p.k_sh, p.k_sb, c.block_n, "k");
    const CUtensorMap tv =
        make_operand_map<T, kD>(p, Side::k, p.v, any, p.heads_k, p.v_ss, p.v_sh, p.v_sb, c.block_n, "v");
    if (p.seqlen_k > 0) {
      auto kernel = p.is_sparse() ? (p.has_dropout ? backward_kernel<T, kD, true, true> : backward_kernel<T, kD, false, true>)
                                  : (p.has_dropout ? backward_kernel<T, kD, true, false>
                                                   : backward_kernel<T, kD, false, false>);
      set_max_dynamic_smem(kernel, L::kAlloc, "cudaFuncSetAttribute(sm90 backward)");
      // dq_accum as the Q side is mapped ((d, seqlen_q, heads_q, batch),
      // varlen (d, total_q, heads_q, 1): rows as q_row counts them), fp32,
      // boxes of 32 columns (128 bytes) x 64 rows. The dQ pass (d = 256)
      // has no scratch: q stands in for a map that is never used.
      const std::int64_t dq_rows = p.is_varlen() ? p.total_q : p.seqlen_q;
      const CUtensorMap tdq = ptx::sm90::make_tensor_map_bshd(
          c.dq_pass || p.dq_accum == nullptr ? any : p.dq_accum, ptx::sm90::tma_elem<float>(), kD, dq_rows, p.heads_q,
          p.is_varlen() ? 1 : p.batch, kD, dq_rows * kD, static_cast<std::int64_t>(p.heads_q) * dq_rows * kD, 32,
          bwd::kBlockM, "dq_accum");
      const dim3 grid((p.seqlen_k + c.block_n - 1) / c.block_n, p.heads_q, p.batch);
      kernel<<<grid, kThreads, L::kAlloc, stream>>>(p, tq, tk, tv, tdo, tdq);
      check(cudaGetLastError(), "sm90 backward kernel launch");
    }
    // The dQ pass writes dq itself, zeros where a query sees no key (an
    // output, not an accumulation): it runs without keys too.
    if constexpr (c.dq_pass) launch_dq_pass<T, kD>(p, tq, tk, tv, tdo, stream);
  }
  if constexpr (!c.dq_pass) launch_finish_dq<T, kD>(p, stream);
  launch_reduce_dkdv<T, kD>(p, stream);
}

}  // namespace flashattn::detail::sm90
