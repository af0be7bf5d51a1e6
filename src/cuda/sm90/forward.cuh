// FlashAttention forward for Hopper (sm_90a): TMA loads, wgmma, warp
// specialisation. Verified on an H200 by scripts/gpu-check (docs/hopper.md
// has the pipeline, the barriers and the measurements).
//
// A CTA computes O and LSE for query tiles of 128 rows of one (batch,
// head): one, or with the persistent launch (kPersistent, problems without
// a mask; dispatch.h) a CTA an SM takes every gridDim.x-th tile, so that
// the next tile's Q and first K/V tiles load under this one's last steps
// and epilogue instead of after a new CTA's launch. It has three
// warpgroups:
//  - warpgroup 0, the producer: one thread issues every TMA copy. For each
//    query tile Q (two 64-row halves), then K_j and V_j for each key tile j
//    the mask allows, into a ring of two stages that runs on across query
//    tiles. It gives most of its registers back (setmaxnreg.dec) since it
//    holds no tiles.
//  - warpgroups 1 and 2, the consumers: each owns 64 query rows (wgmma's M)
//    and runs the FlashAttention-2 loop on them: S = Q K_j^T (wgmma, both
//    operands in shared memory), online softmax in registers (exp2 domain),
//    O += P V_j (wgmma, P from registers), then frees the stage.
// Barriers (mbarriers in shared memory; named barriers 3 and 4 for the
// consumers' turns, 1 and 2 for each consumer's epilogue):
//   q_full         producer expect_tx -> TMA completes -> consumers wait (once)
//   k_full[s]      producer expect_tx -> TMA completes -> consumers wait, then S
//   v_full[s]      likewise for V; separate from K so S and the softmax of
//                  tile j can start before V_j has landed
//   k_empty[s]     each of the 256 consumer threads arrives once S_j (the only
//                  reader of K_j) completed -> the producer waits before
//                  copying K_j+2 into stage s
//   v_empty[s]     likewise once P_j V_j completed, before V_j+2
//   q_empty        each consumer thread arrives once its last S of the query
//                  tile completed (without kPersistent: once it has read O
//                  back from Q's buffer) -> the producer waits before copying
//                  the next tile's Q
// q_full / q_empty complete once a query tile (parity = the CTA's tile
// count & 1).
// Stage s = j % 2 is used for the (j / 2)-th time, so full barriers are
// waited with parity (j / 2) & 1 and the producer waits the empty ones with
// the opposite parity (the first round passes at once).
// Overlap: a consumer's loop runs one tile ahead of its P V product: turn j
// issues S_j and P_{j-1} V_{j-1} together, then the softmax of tile j runs
// while P_{j-1} V_{j-1} is still on the tensor cores. The two consumers take
// these turns alternately (named barriers 3 and 4: one waits, the other
// arrives), so that one's softmax falls under the other's matrix products
// instead of both softmaxes falling at the same time (FlashAttention-3's
// ping-pong schedule). V_j is therefore free only in turn j + 1, a turn
// after K_j: with one empty barrier per stage (until 0c8e9be) the copy of
// K_j+2 waited for P_j V_j and had only a softmax's time to land, which
// cost 4-26% of the forward (d 128 at 1K, d 256: docs/hopper.md).
#pragma once

#include <cmath>

#include "../dispatch.h"
#include "../ptx/ptx.cuh"
#include "../ptx/sm90.cuh"
#include "../key_tiles.cuh"
#include "roles.h"

namespace flashattn::detail::sm90 {

using namespace flashattn::detail::cuda;
namespace x = flashattn::detail::ptx::sm90;

// Registers (roles.h): the consumers' 240 hold O (up to 128 fp32 at
// d = 256), S, the P in flight and the softmax state (d = 128 spills 12
// bytes outside the key loop: the softmax under P V, below).

// Byte offsets inside the (1024-aligned) dynamic shared memory. Every tile
// is a whole number of 1024-byte swizzle atoms, so all stay aligned.
template <int kD, int kBlockN, bool kPersistent>
struct SmemLayout {
  static constexpr int kBlockM = 128;
  static constexpr int kChunks = kD / 64;                // 64-column (128-byte) boxes per row
  static constexpr int kQHalf = 64 * kD * 2;             // one consumer's 64 Q rows (or O rows)
  static constexpr int kKV = kBlockN * kD * 2;           // one K or V tile
  static constexpr int kQ = 0;
  static constexpr int kK = kQ + 2 * kQHalf;             // K stage s at kK + s kKV
  static constexpr int kV = kK + 2 * kKV;                // V stage s at kV + s kKV
  // O staging of consumer w at kO + w kQHalf: its own buffer when the CTA
  // loops over tiles (the next tile's Q is loading into Q's), else Q's.
  static constexpr int kO = kPersistent ? kV + 2 * kKV : kQ;
  static constexpr int kBars = kPersistent ? kO + 2 * kQHalf : kV + 2 * kKV;
  // q_full, k_full[2], v_full[2], k_empty[2], v_empty[2], q_empty
  static constexpr int kBytes = kBars + 10 * 8;
  static constexpr int kAlloc = kBytes + 1024;           // slack to align the base
  static_assert(kQHalf % 1024 == 0 && kKV % 1024 == 0, "tiles must be whole swizzle atoms");
  static_assert(kAlloc <= 227 * 1024, "over the shared memory of one CTA");
};

// The query tiles of a launch, in the order CTAs take them: tile t is query
// tile (t % nm) of head (t / nm) % heads of sequence t / (nm heads), so
// that the CTAs running at one time share K and V of few heads in L2 (as a
// grid with blockIdx.x over the query tiles did), with the query tiles
// reversed so that, under a causal mask, the ones with the most key tiles
// start first.
struct QueryTile {
  int m0, h, b;
};
__device__ __forceinline__ QueryTile query_tile_of(const Params& p, int t) {
  const int nm = (p.seqlen_q + 127) / 128;
  const int hb = t / nm;
  return {(nm - 1 - t % nm) * 128, hb % p.heads_q, hb / p.heads_q};
}

// kDropout: a template parameter for the reason given at the backward kernel.
// A CTA takes the query tiles blockIdx.x, blockIdx.x + gridDim.x, ... of
// query_tile_of: one unless the launch is persistent (launch_forward).
template <class T, int kD, int kBlockN, bool kPersistent, bool kDropout>
__global__ void __launch_bounds__(kThreads, 1)
    forward_kernel(const __grid_constant__ Params p, const __grid_constant__ CUtensorMap tma_q,
                   const __grid_constant__ CUtensorMap tma_k, const __grid_constant__ CUtensorMap tma_v,
                   const __grid_constant__ CUtensorMap tma_o) {
#if FA_SM90_DEVICE
  using L = SmemLayout<kD, kBlockN, kPersistent>;
  constexpr int kBlockM = L::kBlockM;
  constexpr int kSN = kBlockN / 8;  // 8-column tiles of S a thread holds parts of
  constexpr int kON = kD / 8;       // likewise for O

  extern __shared__ unsigned char smem_raw[];
  // The 128B swizzle pattern repeats every 1024 bytes of *address*: TMA and
  // wgmma agree only on 1024-aligned tiles, so align the base by hand.
  const std::uint32_t raw = x::smem_u32(smem_raw);
  const std::uint32_t base = (raw + 1023u) & ~1023u;
  unsigned char* smem = smem_raw + (base - raw);
  const std::uint32_t q_full = base + L::kBars;
  auto k_full = [&](int s) { return base + L::kBars + 8 * (1 + s); };
  auto v_full = [&](int s) { return base + L::kBars + 8 * (3 + s); };
  auto k_empty = [&](int s) { return base + L::kBars + 8 * (5 + s); };
  auto v_empty = [&](int s) { return base + L::kBars + 8 * (7 + s); };
  const std::uint32_t q_empty = base + L::kBars + 8 * 9;

  const int tid = threadIdx.x;
  const int num_tiles = (p.seqlen_q + 127) / 128 * p.heads_q * p.batch;

  if (tid == 0) {
    x::mbar_init(q_full, 1);
    x::mbar_init(q_empty, kConsumers * kWarpgroup);
    for (int s = 0; s < 2; ++s) {
      x::mbar_init(k_full(s), 1);
      x::mbar_init(v_full(s), 1);
      x::mbar_init(k_empty(s), kConsumers * kWarpgroup);
      x::mbar_init(v_empty(s), kConsumers * kWarpgroup);
    }
    x::fence_mbar_init();
  }
  __syncthreads();

  if (tid < kWarpgroup) {
    // ------------------------------------------------------ producer ---
    x::setmaxnreg_dec<kProducerRegs>();
    if (tid == 0) {
      x::tma_prefetch_map(&tma_q);
      x::tma_prefetch_map(&tma_k);
      x::tma_prefetch_map(&tma_v);
      x::tma_prefetch_map(&tma_o);
      // g counts the K/V tiles of the CTA's whole run (the ring continues
      // across query tiles): tile g uses stage g % 2 for the (g / 2)-th time.
      int g = 0, round = 0;
      for (int tile = blockIdx.x; tile < num_tiles; tile += gridDim.x, ++round) {
        const QueryTile qt = query_tile_of(p, tile);
        const SeqInfo seq = resolve_seq(p, qt.b);  // dense only on this path: the lengths, starts 0
        const KeyTiles<kBlockM, kBlockN> tiles(p, qt.b, qt.h, qt.m0, seq);
        const int n_steps = tiles.count();
        const int hk = qt.h / p.group;
        // Q always, even when no key tile is visible: the consumers wait for
        // it, and (without kPersistent) stage O through its buffer, which no
        // late copy may race. But not a half that lies wholly past seqlen_q:
        // a partly out-of-bounds box counts its whole size on the barrier, a
        // wholly out-of-bounds one is not documented either way (a wrong
        // expect_tx is a hang), and the rows of that half are never stored
        // (docs/hopper.md, review notes). Into Q's buffer once both consumers
        // are done with the previous tile's Q (q_empty; the first round
        // passes at once).
        x::mbar_wait(q_empty, (round & 1) ^ 1u);
        const int q_halves = qt.m0 + 64 < seq.sq ? 2 : 1;
        x::mbar_arrive_expect_tx(q_full, q_halves * L::kQHalf);
        for (int half = 0; half < q_halves; ++half)
#pragma unroll
          for (int c = 0; c < L::kChunks; ++c)
            x::tma_load_4d(base + L::kQ + half * L::kQHalf + c * 64 * 128, &tma_q, q_full, c * 64,
                           qt.m0 + 64 * half, qt.h, qt.b);
        for (int step = 0; step < n_steps; ++step, ++g) {
          const int s = g & 1;
          const std::uint32_t round_parity = (g >> 1) & 1;
          const int n0 = tiles.at(step).n0;
          x::mbar_wait(k_empty(s), round_parity ^ 1u);
          x::mbar_arrive_expect_tx(k_full(s), L::kKV);
#pragma unroll
          for (int c = 0; c < L::kChunks; ++c)
            x::tma_load_4d(base + L::kK + s * L::kKV + c * kBlockN * 128, &tma_k, k_full(s), c * 64, n0, hk, qt.b);
          x::mbar_wait(v_empty(s), round_parity ^ 1u);
          x::mbar_arrive_expect_tx(v_full(s), L::kKV);
#pragma unroll
          for (int c = 0; c < L::kChunks; ++c)
            x::tma_load_4d(base + L::kV + s * L::kKV + c * kBlockN * 128, &tma_v, v_full(s), c * 64, n0, hk, qt.b);
        }
      }
    }
  } else {
    // ------------------------------------------------------ consumer ---
    x::setmaxnreg_inc<kConsumerRegs>();
    // Which 64 query rows. Broadcast from lane 0 so that the compiler knows
    // it is warp-uniform: its branches (the turns, the epilogue's barriers)
    // are then uniform ones, and inside the tile loop ptxas kept the main
    // loop's addresses, descriptors and barrier parities on the uniform
    // datapath only with it (without: 70 more instructions a step at d 64).
    const int cw = __shfl_sync(0xffffffffu, tid / kWarpgroup - 1, 0);
    const int t = tid % kWarpgroup, warp = t / 32, lane = t % 32;
    const std::uint32_t sQ = base + L::kQ + cw * L::kQHalf;
    // This thread's two rows (accumulator layout) within the 128-row tile.
    auto row_of = [&](int half) { return cw * 64 + warp * 16 + lane / 4 + 8 * half; };
    const int col_in_tile = 2 * (lane % 4);
    const bool prescale = !(p.scale_log2 > 0.f);
    const float post_scale = prescale ? 1.f : p.scale_log2;

    // The loop is software-pipelined by one tile and the two consumers take
    // turns at the tensor cores (see "Overlap" at the top of this file):
    // turn j issues S_j = Q K_j^T and O += P_{j-1} V_{j-1}; the softmax of
    // tile j then runs while P_{j-1} V_{j-1} and the other consumer's turn
    // are on the tensor cores. O is rescaled by tile j's correction only
    // once P_{j-1} V_{j-1} has completed, and P_j is packed into pa only
    // then (the RS wgmma reads pa until it completes).
    // At every head_dim since c71baec: until then d = 128 had the softmax
    // wait for P V (S, P in flight, O and the softmax's temporaries did not
    // fit 240 registers: ptxas spilled 48 bytes inside the loop). With the
    // TMA store of O it spills 12 bytes at d = 128, all in the per-tile
    // code around the key loop.

    // Turns: consumer 0 waits on barrier 3 and passes to barrier 4,
    // consumer 1 the other way round. Each consumer takes n_steps + 1 turns
    // a query tile. Consumer 1 pre-arrives on 3 so that consumer 0 goes
    // first; its last pass of a tile is consumer 0's first turn of the
    // next (so consumer 0 starts that tile while consumer 1 is still in its
    // epilogue), and is skipped after the CTA's last tile with a turn, so
    // that no arrival is left pending at exit. c1_passed: consumer 1's last
    // pass of the previous tile is pending on barrier 3.
    auto turn_wait = [&] {
      if (cw == 0) x::named_barrier_sync<3>(2 * kWarpgroup);
      else x::named_barrier_sync<4>(2 * kWarpgroup);
    };
    auto turn_pass = [&](bool skip) {
      if (cw == 0) x::named_barrier_arrive<4>(2 * kWarpgroup);
      else if (!skip) x::named_barrier_arrive<3>(2 * kWarpgroup);
    };
    bool c1_passed = false;
    int g = 0, round = 0;  // K/V tiles consumed so far, query tiles done (as the producer's)

    // One query tile. A lambda so that a kernel without kPersistent runs it
    // once, without the loop: the loop's state as constants (d = 256 spilled
    // 52 bytes inside the loop).
    auto consume_tile = [&](const int tile) {
      const QueryTile qt = query_tile_of(p, tile);
      const int g0 = g, rnd = round;
      const int b = qt.b, h = qt.h, m0 = qt.m0;
      const std::uint32_t bh = dropout_bh(p, b, h);
      const SeqInfo seq = resolve_seq(p, b);
      const KeyTiles<kBlockM, kBlockN> tiles(p, b, h, m0, seq);
      const int n_steps = tiles.count();
      // Whether consumer 1's last pass of this tile opens a next one.
      bool pass_on = false;
      if (kPersistent && cw == 1 && tile + static_cast<int>(gridDim.x) < num_tiles) {
        const QueryTile nt = query_tile_of(p, tile + gridDim.x);
        pass_on = KeyTiles<kBlockM, kBlockN>(p, nt.b, nt.h, nt.m0, resolve_seq(p, nt.b)).count() > 0;
      }

      float o[kD / 2];
#pragma unroll
      for (int i = 0; i < kD / 2; ++i) o[i] = 0.f;
      float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};  // max in log2 units
      float sc[kBlockN / 2];
      std::uint32_t pa[kBlockN / 16][4];
      float corr[2] = {1.f, 1.f};
      if (n_steps > 0 && cw == 1 && !c1_passed) x::named_barrier_arrive<3>(2 * kWarpgroup);

      auto issue_s = [&](int step) {
        const int st = (g0 + step) & 1;
        const std::uint32_t sK = base + L::kK + st * L::kKV;
        x::mbar_wait(k_full(st), ((g0 + step) >> 1) & 1);
        x::wgmma_fence();  // after the wait loop too: otherwise ptxas injects one (C7519)
        // S = Q K_j^T, K = head_dim in steps of 16 (32 bytes inside a
        // 128-byte swizzled row; a new 64-column box every 4 steps). The
        // k-steps' descriptors by one add each from the tile's (desc_advance).
        const std::uint64_t q_desc = x::desc_sw128(sQ, 16, 1024), k_desc = x::desc_sw128(sK, 16, 1024);
#pragma unroll
        for (int kk = 0; kk < kD / 16; ++kk) {
          const std::uint32_t koff = (kk % 4) * 32;
          x::wgmma_ss(sc, x::desc_advance(q_desc, (kk / 4) * 64 * 128 + koff),
                      x::desc_advance(k_desc, (kk / 4) * kBlockN * 128 + koff), kk > 0 ? 1 : 0, T{});
        }
        x::wgmma_commit();
      };
      auto issue_pv = [&](int step) {
        const int st = (g0 + step) & 1;
        const std::uint32_t sV = base + L::kV + st * L::kKV;
        x::mbar_wait(v_full(st), ((g0 + step) >> 1) & 1);
        x::wgmma_fence();
        // O += P V_j, K = keys in steps of 16 rows (2048 bytes), N = head_dim
        // across the 64-column boxes (LBO = one box).
        const std::uint64_t v_desc = x::desc_sw128(sV, kBlockN * 128, 1024);
#pragma unroll
        for (int kk = 0; kk < kBlockN / 16; ++kk)
          x::wgmma_rs_bt(o, pa[kk], x::desc_advance(v_desc, kk * 16 * 128), 1, T{});
        x::wgmma_commit();
      };
      auto fence_pa = [&] {
#pragma unroll
        for (int kk = 0; kk < kBlockN / 16; ++kk)
#pragma unroll
          for (int q = 0; q < 4; ++q) x::fence_operand(pa[kk][q]);
      };
      // This thread has read Q of the tile for the last time (its last S is
      // complete): with kPersistent the producer may load the next tile's.
      // Without, Q's buffer stages O, so the arrival waits for the epilogue.
      auto release_q_after_s = [&](int step) {
        if (kPersistent && step == n_steps - 1) x::mbar_arrive(q_empty);
      };
      // Online softmax of tile `step` on sc, as the sm80 kernel
      // (sm80/forward.cuh): with a positive scale the order of the raw scores
      // is that of the scaled ones, so mask and max on raw scores and fold the
      // scale into the exponent's FFMA; otherwise scale first. Leaves P in sc
      // and the correction of the running O in corr (O itself is in flight).
      auto softmax = [&](int step) {
        const KeyTile cur = tiles.at(step);
        if (prescale) {
#pragma unroll
          for (int i = 0; i < kBlockN / 2; ++i) sc[i] *= p.scale_log2;
        }
        if (cur.need_mask) {
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            const int i = m0 + row_of(half);
            const std::int64_t lo = cur.window ? p.window.first_key(i, seq.sq, seq.sk) : 0;
            const std::int64_t hi = cur.window ? p.window.last_key(i, seq.sq, seq.sk) : seq.sk - 1;
#pragma unroll
            for (int tt = 0; tt < kSN; ++tt)
#pragma unroll
              for (int e = 0; e < 2; ++e) {
                const int j = cur.n0 + tt * 8 + col_in_tile + e;
                if (j < lo || j > hi) sc[4 * tt + 2 * half + e] = -INFINITY;
              }
          }
        }
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          float mx = -INFINITY;
#pragma unroll
          for (int tt = 0; tt < kSN; ++tt) mx = fmaxf(mx, fmaxf(sc[4 * tt + 2 * half], sc[4 * tt + 2 * half + 1]));
          // The four lanes of a quad hold the same row.
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
          mx *= post_scale;
          mx = fmaxf(mx, row_max[half]);
          // Nothing visible yet: subtract 0, so exp2(-inf) is 0, not NaN.
          const float base_exp = mx == -INFINITY ? 0.f : mx;
          corr[half] = ptx::exp2_approx(row_max[half] - base_exp);
          row_max[half] = mx;
          float sum = 0.f;
#pragma unroll
          for (int tt = 0; tt < kSN; ++tt)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const float pe = ptx::exp2_approx(fmaf(sc[4 * tt + 2 * half + e], post_scale, -base_exp));
              sc[4 * tt + 2 * half + e] = pe;
              sum += pe;
            }
          row_sum[half] = row_sum[half] * corr[half] + sum;
        }
      };
      // P of tile `step` to 16 bits in pa (the A-fragment layout of k16 slice
      // kk), with dropout: one Philox call covers this thread's 8 elements of
      // the 16-column slice kk (rows r and r + 8 of its two 8-column tiles;
      // philox.h; m0, the warp's rows and the key tiles start at multiples of
      // 16), and its four 32-bit words are those of pa[kk]'s four registers,
      // each half the mask of one 16-bit P, so an AND drops them (a 16-bit
      // zero is +0). l above is the un-dropped sum (LSE ignores dropout); the
      // epilogue scales O by 1 / (1 - p).
      auto pack_p = [&](int step) {
#pragma unroll
        for (int kk = 0; kk < kBlockN / 16; ++kk) {
          pa[kk][0] = pack2<T>(sc[8 * kk + 0], sc[8 * kk + 1]);
          pa[kk][1] = pack2<T>(sc[8 * kk + 2], sc[8 * kk + 3]);
          pa[kk][2] = pack2<T>(sc[8 * kk + 4], sc[8 * kk + 5]);
          pa[kk][3] = pack2<T>(sc[8 * kk + 6], sc[8 * kk + 7]);
        }
        if constexpr (kDropout) {
          const int n0 = tiles.at(step).n0;
          const std::uint32_t pair = DropoutStream::row_pair_of(static_cast<std::uint32_t>(m0 + row_of(0)));
#pragma unroll
          for (int kk = 0; kk < kBlockN / 16; ++kk) {
            const Philox4 r = p.dropout.words(
                bh, pair, DropoutStream::call_of(static_cast<std::uint32_t>(n0 + 16 * kk + col_in_tile)));
            pa[kk][0] &= p.dropout.keep_mask(r.x);  // row r,     columns 16 kk + 2u, + 1
            pa[kk][1] &= p.dropout.keep_mask(r.z);  // row r + 8, the same columns
            pa[kk][2] &= p.dropout.keep_mask(r.y);  // row r,     8 columns further
            pa[kk][3] &= p.dropout.keep_mask(r.w);  // row r + 8, 8 columns further
          }
        }
      };
      auto rescale_o = [&] {
#pragma unroll
        for (int tt = 0; tt < kON; ++tt)
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            o[4 * tt + 2 * half] *= corr[half];
            o[4 * tt + 2 * half + 1] *= corr[half];
          }
      };

      x::mbar_wait(q_full, rnd & 1);
      if (n_steps > 0) {
        // Turn 0: S_0 alone.
        turn_wait();
        x::wgmma_fence();
        issue_s(0);
        turn_pass(false);
        x::wgmma_wait<0>();
        x::fence_operands(sc);
        x::mbar_arrive(k_empty(g0 & 1));
        release_q_after_s(0);
        softmax(0);
        rescale_o();  // O = 0: corr only matters for the bookkeeping above
        pack_p(0);
      } else if (kPersistent) {
        x::mbar_arrive(q_empty);  // no S reads Q
      }
      for (int step = 1; step < n_steps; ++step) {
        // Turn `step`: S_step and P_{step-1} V_{step-1}. Registers of o and pa
        // were last written by ordinary instructions: fence before the issue.
        turn_wait();
        x::fence_operands(o);
        fence_pa();
        x::wgmma_fence();
        issue_s(step);
        issue_pv(step - 1);
        turn_pass(false);
        x::wgmma_wait<1>();  // S_step complete (groups complete in order); P V may still run
        x::fence_operands(sc);
        x::mbar_arrive(k_empty((g0 + step) & 1));  // K_step is read: the producer may refill it now
        release_q_after_s(step);
        softmax(step);
        x::wgmma_wait<0>();  // P_{step-1} V_{step-1} complete: o and pa are free
        x::fence_operands(o);
        fence_pa();
        x::mbar_arrive(v_empty((g0 + step - 1) & 1));
        rescale_o();
        pack_p(step);
      }
      if (n_steps > 0) {
        // Last turn: the last P V.
        turn_wait();
        x::fence_operands(o);
        fence_pa();
        x::wgmma_fence();
        issue_pv(n_steps - 1);
        turn_pass(!pass_on);
        if (cw == 1) c1_passed = pass_on;
        x::wgmma_wait<0>();
        x::fence_operands(o);
        x::mbar_arrive(v_empty((g0 + n_steps - 1) & 1));
      }
      g += n_steps;

      // Epilogue: O / l, LSE = ln(sum exp(scaled scores)); O staged through
      // this warpgroup's staging rows (L::kO: its own Q rows, which no wgmma
      // reads any more, or with kPersistent a buffer of its own) as the O
      // map's boxes (64 rows x 64 columns, 128B swizzle: 16-byte chunk
      // ^ row % 8, conflict-free for the fragment writes), then written to
      // global memory by TMA, one thread issuing the warpgroup's boxes: no
      // thread copies the staging rows itself, and rows >= seqlen_q fall
      // outside the map and are never stored. Barrier 1 / 2 (this
      // warpgroup's): first, the previous tile's store has finished reading
      // the staging (its issuing thread waited for that); second, every
      // thread's staging writes are fenced before the store is issued.
      unsigned char* stage = smem + L::kO + cw * L::kQHalf;
      auto epilogue_sync = [&] {
        if (cw == 0) x::named_barrier_sync<1>(kWarpgroup);
        else x::named_barrier_sync<2>(kWarpgroup);
      };
      if (kPersistent && rnd > 0) {
        if (t == 0) x::bulk_wait_read<0>();
        epilogue_sync();
      }
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        float l = row_sum[half];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        const float inv = l > 0.f ? p.keep_scale / l : 0.f;  // keep_scale = 1 / (1 - p), 1 without dropout
        const int r_tile = row_of(half), r = r_tile - cw * 64;
        if (p.lse != nullptr && lane % 4 == 0 && m0 + r_tile < seq.sq)
          p.lse[q_row(p, seq, b, h, m0 + r_tile)] =
              l > 0.f ? row_max[half] * 0.69314718055994531f + logf(l) : -INFINITY;
#pragma unroll
        for (int tt = 0; tt < kON; ++tt) {
          const int chunk = (tt % 8) ^ (r % 8);  // 8-column tile tt is chunk tt % 8 of box tt / 8
          *reinterpret_cast<std::uint32_t*>(stage + (tt / 8) * (64 * 128) + r * 128 + chunk * 16 + col_in_tile * 2) =
              pack2<T>(o[4 * tt + 2 * half] * inv, o[4 * tt + 2 * half + 1] * inv);
        }
      }
      x::fence_proxy_async_smem();  // ordinary stores, read next by the copy engine
      epilogue_sync();
      if (t == 0) {
#pragma unroll
        for (int c = 0; c < L::kChunks; ++c)
          x::tma_store_4d(&tma_o, base + L::kO + cw * L::kQHalf + c * 64 * 128, c * 64, m0 + cw * 64, h, b);
        x::bulk_commit();
      }
      // Without kPersistent, Q's buffer was the staging: released once the
      // store has read it (a launch of that kernel has one tile a CTA, but
      // the protocol does not depend on it).
      if constexpr (!kPersistent) {
        if (t == 0) x::bulk_wait_read<0>();
        epilogue_sync();
        x::mbar_arrive(q_empty);
      }
    };
    if constexpr (kPersistent) {
      for (int tile = blockIdx.x; tile < num_tiles; tile += gridDim.x, ++round) consume_tile(tile);
    } else if (static_cast<int>(blockIdx.x) < num_tiles) {
      consume_tile(blockIdx.x);
    }
    // The shared memory the last stores read stays the CTA's until they are done.
    if (t == 0) x::bulk_wait_all();
  }
#else
  // Built for another architecture: the dispatch never launches this.
  __trap();
#endif
}

template <class T, int kD>
void launch_forward(const Params& p, cudaStream_t stream) {
  constexpr Sm90FwdTile c = sm90_fwd_tile(kD);
  static_assert(c.head_dim == kD && c.block_m == 128 && c.stages == 2, "row missing from kSm90FwdTiles");
  static_assert(c.block_m == 128, "query_tile_of's query tiles are 128 rows");
  using L = SmemLayout<kD, c.block_n, c.persistent>;
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  // One CTA a query tile, or (persistent, problems without a mask: every
  // tile the same length, so a static round-robin is balanced) one an SM.
  const std::int64_t tiles = static_cast<std::int64_t>((p.seqlen_q + c.block_m - 1) / c.block_m) * p.heads_q * p.batch;
  if (tiles > 0x7fffffff) throw Error("q: expected fewer than 2^31 query tiles of 128 rows (batch x heads x tiles)");
  std::int64_t ctas = tiles;
  if (c.persistent && p.window.unbounded()) ctas = std::min<std::int64_t>(tiles, device_sm_count());
  if (ctas == 0) return;  // no query rows: nothing to map (q, out may be null)
  const CUtensorMap tq = x::make_tensor_map_bshd(p.q, kBf16, kD, p.seqlen_q, p.heads_q, p.batch, p.q_ss, p.q_sh,
                                                 p.q_sb, 64, "q");
  // With no keys the K/V maps are never read (every query tile has zero key
  // steps), but an empty tensor may come with a null pointer, which the
  // encoder need not accept: map Q's (non-null, 16-byte aligned) address.
  const void* k_data = p.seqlen_k > 0 ? p.k : p.q;
  const void* v_data = p.seqlen_k > 0 ? p.v : p.q;
  const CUtensorMap tk = x::make_tensor_map_bshd(k_data, kBf16, kD, p.seqlen_k, p.heads_k, p.batch, p.k_ss, p.k_sh,
                                                 p.k_sb, c.block_n, "k");
  const CUtensorMap tv = x::make_tensor_map_bshd(v_data, kBf16, kD, p.seqlen_k, p.heads_k, p.batch, p.v_ss, p.v_sh,
                                                 p.v_sb, c.block_n, "v");
  const CUtensorMap to = x::make_tensor_map_bshd(p.out, kBf16, kD, p.seqlen_q, p.heads_q, p.batch, p.o_ss, p.o_sh,
                                                 p.o_sb, 64, "out");
  auto kernel = p.has_dropout ? forward_kernel<T, kD, c.block_n, c.persistent, true>
                               : forward_kernel<T, kD, c.block_n, c.persistent, false>;
  set_max_dynamic_smem(kernel, L::kAlloc, "cudaFuncSetAttribute(sm90 forward)");
  kernel<<<static_cast<unsigned>(ctas), kThreads, L::kAlloc, stream>>>(p, tq, tk, tv, to);
  check(cudaGetLastError(), "sm90 forward kernel launch");
}

}  // namespace flashattn::detail::sm90
