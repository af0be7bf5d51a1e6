// FlashAttention forward for Hopper (sm_90a): TMA loads, wgmma, warp
// specialisation. Verified on an H200 by scripts/gpu-check (docs/hopper.md
// has the pipeline, the barriers and the measurements).
//
// A CTA computes O and LSE for query tiles of 128 rows of one (batch,
// head): one, or with the persistent launch (kPersistent, problems without
// a mask; dispatch.h) a CTA an SM takes every gridDim.x-th tile and runs
// them as one pipeline: the next tile's Q loads into a second buffer while
// this one's is read, and its first S = Q K^T is issued in this tile's last
// turn, next to the last P V (so the pipeline neither drains nor refills
// between tiles). It has three warpgroups:
//  - warpgroup 0, the producer: one thread issues every TMA copy. For each
//    query tile Q (two 64-row halves) into a ring of kQBufs buffers, then
//    K_j and V_j for each key tile j the mask allows, into a ring of two
//    stages; both rings run on across query tiles. It gives most of its
//    registers back (setmaxnreg.dec) since it holds no tiles.
//  - warpgroups 1 and 2, the consumers: each owns 64 query rows (wgmma's M)
//    and runs the FlashAttention-2 loop on them: S = Q K_j^T (wgmma, both
//    operands in shared memory), online softmax in registers (exp2 domain),
//    O += P V_j (wgmma, P from registers), then frees the stage.
// Barriers (mbarriers in shared memory; named barriers 3 and 4 for the
// consumers' turns, 1 and 2 for each consumer's epilogue):
//   q_full[b]      producer expect_tx -> TMA of Q completes -> consumers wait
//   k_full[s]      producer expect_tx -> TMA completes -> consumers wait, then S
//   v_full[s]      likewise for V; separate from K so S and the softmax of
//                  tile j can start before V_j has landed
//   k_empty[s]     each of the 256 consumer threads arrives once S_j (the only
//                  reader of K_j) completed -> the producer waits before
//                  copying K_j+2 into stage s
//   v_empty[s]     likewise once P_j V_j completed, before V_j+2
//   q_empty[b]     each consumer thread arrives once the epilogue has read O
//                  back from Q buffer b, where it was staged -> the producer
//                  waits before copying a later tile's Q into it
// The CTA's r-th query tile uses Q buffer r % kQBufs for the
// (r / kQBufs)-th time; its K/V tiles are the CTA's g-th, g+1-th, ... (a
// count over the whole run), stage g % 2 used for the (g / 2)-th time. So
// full barriers are waited with the parity of that use count and the
// producer waits the empty ones with the opposite parity (the first round
// passes at once).
// Overlap: a consumer's loop runs one tile ahead of its P V product: turn j
// issues S_j and P_{j-1} V_{j-1} together, then the softmax of tile j runs
// while P_{j-1} V_{j-1} is still on the tensor cores. The two consumers take
// these turns alternately (named barriers 3 and 4: one waits, the other
// arrives), so that one's softmax falls under the other's matrix products
// instead of both softmaxes falling at the same time (FlashAttention-3's
// ping-pong schedule). V_j is therefore free only in turn j + 1, a turn
// after K_j: with one empty barrier per stage (until 0c8e9be) the copy of
// K_j+2 waited for P_j V_j and had only a softmax's time to land, which
// cost 4-26% of the forward (d 128 at 1K, d 256: docs/hopper.md). The last
// turn of a query tile issues its last P V and, when the CTA has a next
// tile with keys, that tile's S_0; the epilogue of this tile then runs
// under the other consumer's turn, before the next tile's first softmax.
#pragma once

#include <cmath>

#include "../dispatch.h"
#include "../ptx/ptx.cuh"
#include "../ptx/sm90.cuh"
#include "../sm80/tile.cuh"  // KeyTiles: the key-tile schedule of a query tile (shared with sm80)

namespace flashattn::detail::sm90 {

using namespace flashattn::detail::cuda;
namespace x = flashattn::detail::ptx::sm90;

constexpr int kWarpgroup = 128;
constexpr int kConsumers = 2;
constexpr int kThreads = kWarpgroup * (1 + kConsumers);
// 128 x 24 + 256 x 240 = 64512 <= 65536 registers (as the backward). The
// producer's loop (tile schedule, coordinates) fits in 24; 240 holds a
// consumer's O (up to 128 fp32 at d = 256), S, the P in flight and the
// softmax state without spilling (232 spilled at d = 128 with the
// one-tile-ahead loop; see kSoftmaxUnderPV).
constexpr int kProducerRegs = 24, kConsumerRegs = 240;

// Byte offsets inside the (1024-aligned) dynamic shared memory. Every tile
// is a whole number of 1024-byte swizzle atoms, so all stay aligned. Q has
// two buffers when the CTA loops over query tiles (the next tile's Q lands
// while this one's is still read; the epilogue stages O in its own tile's
// buffer), else one (O staged in Q's rows).
template <int kD, int kBlockN, bool kPersistent>
struct SmemLayout {
  static constexpr int kBlockM = 128;
  static constexpr int kChunks = kD / 64;                // 64-column (128-byte) boxes per row
  static constexpr int kQHalf = 64 * kD * 2;             // one consumer's 64 Q rows (or O rows)
  static constexpr int kQTile = 2 * kQHalf;
  static constexpr int kQBufs = kPersistent ? 2 : 1;
  static constexpr int kKV = kBlockN * kD * 2;           // one K or V tile
  static constexpr int kQ = 0;                           // Q buffer b at kQ + b kQTile
  static constexpr int kK = kQ + kQBufs * kQTile;        // K stage s at kK + s kKV
  static constexpr int kV = kK + 2 * kKV;                // V stage s at kV + s kKV
  static constexpr int kBars = kV + 2 * kKV;
  // q_full[2], k_full[2], v_full[2], k_empty[2], v_empty[2], q_empty[2]
  static constexpr int kBytes = kBars + 12 * 8;
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

// One query tile of a CTA's run: where it is and the key tiles it visits
// (producer and consumers derive it the same way).
template <int kBlockN>
struct TileWork {
  QueryTile qt;
  SeqInfo seq;
  sm80::KeyTiles<128, kBlockN> keys;
  int n_steps;
};
template <int kBlockN>
__device__ __forceinline__ TileWork<kBlockN> tile_work(const Params& p, int tile) {
  const QueryTile qt = query_tile_of(p, tile);
  const SeqInfo seq = resolve_seq(p, qt.b);  // dense only on this path: the lengths, starts 0
  const sm80::KeyTiles<128, kBlockN> keys(p, qt.b, qt.h, qt.m0, seq);
  return {qt, seq, keys, keys.count()};
}

// kDropout: a template parameter for the reason given at the backward kernel.
// A CTA takes the query tiles blockIdx.x, blockIdx.x + gridDim.x, ... of
// query_tile_of: one unless the launch is persistent (launch_forward).
template <class T, int kD, int kBlockN, bool kPersistent, bool kDropout>
__global__ void __launch_bounds__(kThreads, 1)
    forward_kernel(const __grid_constant__ Params p, const __grid_constant__ CUtensorMap tma_q,
                   const __grid_constant__ CUtensorMap tma_k, const __grid_constant__ CUtensorMap tma_v) {
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
  // Q's buffer and barriers of the CTA's round-th query tile, and the parity
  // of their phase for it.
  auto q_buf = [&](int round) { return base + L::kQ + (round % L::kQBufs) * L::kQTile; };
  auto q_full = [&](int round) { return base + L::kBars + 8 * (round % L::kQBufs); };
  auto q_empty = [&](int round) { return base + L::kBars + 8 * (10 + round % L::kQBufs); };
  auto q_parity = [](int round) { return static_cast<std::uint32_t>(round / L::kQBufs) & 1u; };
  auto k_full = [&](int s) { return base + L::kBars + 8 * (2 + s); };
  auto v_full = [&](int s) { return base + L::kBars + 8 * (4 + s); };
  auto k_empty = [&](int s) { return base + L::kBars + 8 * (6 + s); };
  auto v_empty = [&](int s) { return base + L::kBars + 8 * (8 + s); };

  const int tid = threadIdx.x;
  const int num_tiles = (p.seqlen_q + 127) / 128 * p.heads_q * p.batch;
  // The launch never makes more CTAs than tiles; a CTA without a tile would
  // leave its consumers waiting for a Q that never comes.
  if (static_cast<int>(blockIdx.x) >= num_tiles) return;

  if (tid == 0) {
    for (int b = 0; b < L::kQBufs; ++b) {
      x::mbar_init(q_full(b), 1);
      x::mbar_init(q_empty(b), kConsumers * kWarpgroup);
    }
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
      // Q of the CTA's round-th query tile, into its buffer once both
      // consumers have staged and stored the O of the tile that used it
      // before (q_empty; the first use passes at once). Q always, even when
      // no key tile is visible: the consumers wait for it and stage O
      // through its buffer, which no late copy may race. But not a half
      // that lies wholly past seqlen_q: a partly out-of-bounds box counts
      // its whole size on the barrier, a wholly out-of-bounds one is not
      // documented either way (a wrong expect_tx is a hang), and the rows of
      // that half are never stored (docs/hopper.md, review notes).
      auto load_q = [&](int tile, int round) {
        const QueryTile qt = query_tile_of(p, tile);
        x::mbar_wait(q_empty(round), q_parity(round) ^ 1u);
        const int q_halves = qt.m0 + 64 < resolve_seq(p, qt.b).sq ? 2 : 1;
        x::mbar_arrive_expect_tx(q_full(round), q_halves * L::kQHalf);
        for (int half = 0; half < q_halves; ++half)
#pragma unroll
          for (int c = 0; c < L::kChunks; ++c)
            x::tma_load_4d(q_buf(round) + half * L::kQHalf + c * 64 * 128, &tma_q, q_full(round), c * 64,
                           qt.m0 + 64 * half, qt.h, qt.b);
      };
      // g counts the K/V tiles of the CTA's whole run (the ring continues
      // across query tiles): tile g uses stage g % 2 for the (g / 2)-th time.
      int g = 0, round = 0;
      load_q(blockIdx.x, 0);
      for (int tile = blockIdx.x; tile < num_tiles; tile += gridDim.x, ++round) {
        const TileWork<kBlockN> w = tile_work<kBlockN>(p, tile);
        const int hk = w.qt.h / p.group;
        // The next tile's Q goes in early, after this tile's second K/V
        // copy: the next tile's first S is issued in this tile's last turn,
        // and Q comes from DRAM (each tile's Q is read once). Not before the
        // second copy: its buffer is freed by the epilogue of the tile
        // before this one, which runs after this tile's first turn, and the
        // wait must not hold back the K/V copies that turn needs.
        const int next = tile + static_cast<int>(gridDim.x);
        const bool has_next = kPersistent && next < num_tiles;
        const int q_after = min(1, w.n_steps - 1);
        if (has_next && w.n_steps == 0) load_q(next, round + 1);
        for (int step = 0; step < w.n_steps; ++step, ++g) {
          const int s = g & 1;
          const std::uint32_t round_parity = (g >> 1) & 1;
          const int n0 = w.keys.at(step).n0;
          x::mbar_wait(k_empty(s), round_parity ^ 1u);
          x::mbar_arrive_expect_tx(k_full(s), L::kKV);
#pragma unroll
          for (int c = 0; c < L::kChunks; ++c)
            x::tma_load_4d(base + L::kK + s * L::kKV + c * kBlockN * 128, &tma_k, k_full(s), c * 64, n0, hk, w.qt.b);
          x::mbar_wait(v_empty(s), round_parity ^ 1u);
          x::mbar_arrive_expect_tx(v_full(s), L::kKV);
#pragma unroll
          for (int c = 0; c < L::kChunks; ++c)
            x::tma_load_4d(base + L::kV + s * L::kKV + c * kBlockN * 128, &tma_v, v_full(s), c * 64, n0, hk, w.qt.b);
          if (has_next && step == q_after) load_q(next, round + 1);
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
    // At d = 128 the softmax waits for P V instead: S, P (in flight), O and
    // the softmax's temporaries do not fit 240 registers together (ptxas
    // spilled 48 bytes); the turns between the consumers remain.
    constexpr bool kSoftmaxUnderPV = kD != 128;

    // Turns: consumer 0 waits on barrier 3 and passes to barrier 4,
    // consumer 1 the other way round. Consumer 1 pre-arrives on 3 so that
    // consumer 0 goes first. A run of query tiles whose last turns each
    // issue the next tile's S_0 is one stream of turns; consumer 1 skips
    // its pass after the last turn of such a run, so that no arrival is
    // left pending at exit, and pre-arrives again before the next run.
    auto turn_wait = [&] {
      if (cw == 0) x::named_barrier_sync<3>(2 * kWarpgroup);
      else x::named_barrier_sync<4>(2 * kWarpgroup);
    };
    auto turn_pass = [&](bool skip) {
      if (cw == 0) x::named_barrier_arrive<4>(2 * kWarpgroup);
      else if (!skip) x::named_barrier_arrive<3>(2 * kWarpgroup);
    };

    float o[kD / 2];
    float row_max[2], row_sum[2];  // max in log2 units
    float sc[kBlockN / 2];
    std::uint32_t pa[kBlockN / 16][4];
    float corr[2] = {1.f, 1.f};

    // S = Q K^T with the CTA's g-th K/V tile and this consumer's rows of the
    // Q buffer at sQ.
    auto issue_s = [&](int g, std::uint32_t sQ) {
      const int st = g & 1;
      const std::uint32_t sK = base + L::kK + st * L::kKV;
      x::mbar_wait(k_full(st), (g >> 1) & 1);
      x::wgmma_fence();  // after the wait loop too: otherwise ptxas injects one (C7519)
      // K = head_dim in steps of 16 (32 bytes inside a 128-byte swizzled
      // row; a new 64-column box every 4 steps). The k-steps' descriptors
      // by one add each from the tile's (desc_advance).
      const std::uint64_t q_desc = x::desc_sw128(sQ, 16, 1024), k_desc = x::desc_sw128(sK, 16, 1024);
#pragma unroll
      for (int kk = 0; kk < kD / 16; ++kk) {
        const std::uint32_t koff = (kk % 4) * 32;
        x::wgmma_ss(sc, x::desc_advance(q_desc, (kk / 4) * 64 * 128 + koff),
                    x::desc_advance(k_desc, (kk / 4) * kBlockN * 128 + koff), kk > 0 ? 1 : 0, T{});
      }
      x::wgmma_commit();
    };
    // O += P V with the CTA's g-th K/V tile.
    auto issue_pv = [&](int g) {
      const int st = g & 1;
      const std::uint32_t sV = base + L::kV + st * L::kKV;
      x::mbar_wait(v_full(st), (g >> 1) & 1);
      x::wgmma_fence();
      // K = keys in steps of 16 rows (2048 bytes), N = head_dim across the
      // 64-column boxes (LBO = one box).
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
    // s0_issued: the tile in hand's S_0 went into the previous tile's last
    // turn. c1_passed: consumer 1's last pass of the previous tile is
    // pending on barrier 3 (no pre-arrival needed).
    bool s0_issued = false, c1_passed = false;
    // g0: the CTA's K/V tiles before this query tile (as the producer's g);
    // round: its query tiles before this one.
    int g0 = 0;
    for (int tile = blockIdx.x, round = 0;; ++round) {
      const TileWork<kBlockN> cur = tile_work<kBlockN>(p, tile);
      const int n_steps = cur.n_steps;
      const std::uint32_t sQ = q_buf(round) + cw * L::kQHalf;
      // The CTA's next query tile, and whether its S_0 joins this tile's
      // last turn (it has keys; with kPersistent every tile has the same
      // key tiles, so either all or none do).
      const int next = tile + static_cast<int>(gridDim.x);
      const bool has_next = kPersistent && next < num_tiles;
      bool chain = false;
      if (has_next && n_steps > 0) {
        const QueryTile nt = query_tile_of(p, next);
        chain = sm80::KeyTiles<kBlockM, kBlockN>(p, nt.b, nt.h, nt.m0, resolve_seq(p, nt.b)).count() > 0;
      }

      // Online softmax of key tile `step` of the tile in hand on sc, as the
      // sm80 kernel (sm80/forward.cuh): with a positive scale the order of the
      // raw scores is that of the scaled ones, so mask and max on raw scores
      // and fold the scale into the exponent's FFMA; otherwise scale first.
      // Leaves P in sc and the correction of the running O in corr (O itself
      // is in flight).
      auto softmax = [&](int step) {
        const sm80::KeyTile kt = cur.keys.at(step);
        if (prescale) {
#pragma unroll
          for (int i = 0; i < kBlockN / 2; ++i) sc[i] *= p.scale_log2;
        }
        if (kt.need_mask) {
          const int sq = cur.seq.sq, sk = cur.seq.sk;
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            const int i = cur.qt.m0 + row_of(half);
            const std::int64_t lo = kt.window ? p.window.first_key(i, sq, sk) : 0;
            const std::int64_t hi = kt.window ? p.window.last_key(i, sq, sk) : sk - 1;
#pragma unroll
            for (int tt = 0; tt < kSN; ++tt)
#pragma unroll
              for (int e = 0; e < 2; ++e) {
                const int j = kt.n0 + tt * 8 + col_in_tile + e;
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
      // P of key tile `step` to 16 bits in pa (the A-fragment layout of k16
      // slice kk), with dropout: one Philox call covers this thread's 8
      // elements of the 16-column slice kk (rows r and r + 8 of its two
      // 8-column tiles; philox.h; m0, the warp's rows and the key tiles start
      // at multiples of 16), and its four 32-bit words are those of pa[kk]'s
      // four registers, each half the mask of one 16-bit P, so an AND drops
      // them (a 16-bit zero is +0). l above is the un-dropped sum (LSE ignores
      // dropout); the epilogue scales O by 1 / (1 - p).
      auto pack_p = [&](int step) {
#pragma unroll
        for (int kk = 0; kk < kBlockN / 16; ++kk) {
          pa[kk][0] = pack2<T>(sc[8 * kk + 0], sc[8 * kk + 1]);
          pa[kk][1] = pack2<T>(sc[8 * kk + 2], sc[8 * kk + 3]);
          pa[kk][2] = pack2<T>(sc[8 * kk + 4], sc[8 * kk + 5]);
          pa[kk][3] = pack2<T>(sc[8 * kk + 6], sc[8 * kk + 7]);
        }
        if constexpr (kDropout) {
          const std::uint32_t bh = dropout_bh(p, cur.qt.b, cur.qt.h);
          const int n0 = cur.keys.at(step).n0;
          const std::uint32_t pair = DropoutStream::row_pair_of(static_cast<std::uint32_t>(cur.qt.m0 + row_of(0)));
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
      // Epilogue of the tile in hand: O / l, LSE = ln(sum exp(scaled scores)).
      // O is staged in this warpgroup's rows of the tile's Q buffer (no wgmma
      // reads them any more: its last S completed) in a 16-byte-chunk XOR
      // layout (chunk ^ row % 8: conflict-free both for the fragment writes
      // and for the row-contiguous reads), then stored in 16-byte pieces so
      // the global writes coalesce. Rows >= seqlen_q are never stored. Then
      // the buffer is released for the CTA's query tile after next.
      auto store_o = [&] {
        const int b = cur.qt.b, h = cur.qt.h, m0 = cur.qt.m0;
        constexpr int kPitch = kD * 2;
        unsigned char* stage = smem + (q_buf(round) - base) + cw * L::kQHalf;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          float l = row_sum[half];
          l += __shfl_xor_sync(0xffffffffu, l, 1);
          l += __shfl_xor_sync(0xffffffffu, l, 2);
          const float inv = l > 0.f ? p.keep_scale / l : 0.f;  // keep_scale = 1 / (1 - p), 1 without dropout
          const int r_tile = row_of(half), r = r_tile - cw * 64;
          if (p.lse != nullptr && lane % 4 == 0 && m0 + r_tile < cur.seq.sq)
            p.lse[q_row(p, cur.seq, b, h, m0 + r_tile)] =
                l > 0.f ? row_max[half] * 0.69314718055994531f + logf(l) : -INFINITY;
#pragma unroll
          for (int tt = 0; tt < kON; ++tt) {
            const int chunk = tt ^ (r % 8);
            *reinterpret_cast<std::uint32_t*>(stage + r * kPitch + chunk * 16 + col_in_tile * 2) =
                pack2<T>(o[4 * tt + 2 * half] * inv, o[4 * tt + 2 * half + 1] * inv);
          }
        }
        if (cw == 0) x::named_barrier_sync<1>(kWarpgroup);
        else x::named_barrier_sync<2>(kWarpgroup);
        T* gO = static_cast<T*>(p.out) + b * p.o_sb + h * p.o_sh + static_cast<std::int64_t>(m0 + cw * 64) * p.o_ss;
        const int rows_valid = cur.seq.sq - (m0 + cw * 64);
        constexpr int kRowChunks = kD / 8;
        for (int c = t; c < 64 * kRowChunks; c += kWarpgroup) {
          const int r = c / kRowChunks, ch = c % kRowChunks;
          if (r < rows_valid)
            *reinterpret_cast<uint4*>(gO + r * p.o_ss + ch * 8) =
                *reinterpret_cast<const uint4*>(stage + r * kPitch + (ch ^ (r % 8)) * 16);
        }
        // The producer's next copy into this buffer (async proxy) must follow
        // these ordinary reads and writes: fence, then release it. (Every
        // later write of this warpgroup to the buffer comes after a wait on
        // its q_full, hence after all 256 arrivals: no barrier is needed
        // before the staging writes.)
        if constexpr (kPersistent) x::fence_proxy_async_smem();
        x::mbar_arrive(q_empty(round));
      };


#pragma unroll
      for (int i = 0; i < kD / 2; ++i) o[i] = 0.f;
      row_max[0] = row_max[1] = -INFINITY;
      row_sum[0] = row_sum[1] = 0.f;
      if (!s0_issued) {
        x::mbar_wait(q_full(round), q_parity(round));
        if (n_steps > 0) {
          if (cw == 1 && !c1_passed) x::named_barrier_arrive<3>(2 * kWarpgroup);
          // Turn 0: S_0 alone.
          turn_wait();
          x::wgmma_fence();
          issue_s(g0, sQ);
          turn_pass(false);
          x::wgmma_wait<0>();
          x::fence_operands(sc);
          x::mbar_arrive(k_empty(g0 & 1));
        }
      }
      if (n_steps > 0) {
        softmax(0);  // O = 0: its correction does not matter
        pack_p(0);
      }
      for (int step = 1; step < n_steps; ++step) {
        // Turn `step`: S_step and P_{step-1} V_{step-1}. Registers of o and pa
        // were last written by ordinary instructions: fence before the issue.
        turn_wait();
        x::fence_operands(o);
        fence_pa();
        x::wgmma_fence();
        issue_s(g0 + step, sQ);
        issue_pv(g0 + step - 1);
        turn_pass(false);
        if constexpr (kSoftmaxUnderPV) {
          x::wgmma_wait<1>();  // S_step complete (groups complete in order); P V may still run
          x::fence_operands(sc);
          x::mbar_arrive(k_empty((g0 + step) & 1));  // K_step is read: the producer may refill it now
          softmax(step);
          x::wgmma_wait<0>();  // P_{step-1} V_{step-1} complete: o and pa are free
        } else {
          x::wgmma_wait<0>();
          x::fence_operands(sc);
          x::mbar_arrive(k_empty((g0 + step) & 1));
        }
        x::fence_operands(o);
        fence_pa();
        x::mbar_arrive(v_empty((g0 + step - 1) & 1));
        if constexpr (!kSoftmaxUnderPV) softmax(step);
        rescale_o();
        pack_p(step);
      }
      if (n_steps > 0) {
        // Last turn: the last P V and, if the next tile chains, its S_0 (its
        // Q is in the other buffer, loaded while this tile ran).
        turn_wait();
        x::fence_operands(o);
        fence_pa();
        x::wgmma_fence();
        if (chain) {
          x::mbar_wait(q_full(round + 1), q_parity(round + 1));
          issue_s(g0 + n_steps, q_buf(round + 1) + cw * L::kQHalf);
          issue_pv(g0 + n_steps - 1);
          turn_pass(false);
          x::wgmma_wait<0>();
          x::fence_operands(sc);
          x::mbar_arrive(k_empty((g0 + n_steps) & 1));
        } else {
          issue_pv(g0 + n_steps - 1);
          turn_pass(true);
          x::wgmma_wait<0>();
        }
        if (cw == 1) c1_passed = chain;
        x::fence_operands(o);
        x::mbar_arrive(v_empty((g0 + n_steps - 1) & 1));
      }
      store_o();
      if (!has_next) break;
      tile = next;
      g0 += n_steps;
      s0_issued = chain;
    }
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
  auto kernel = p.has_dropout ? forward_kernel<T, kD, c.block_n, c.persistent, true>
                               : forward_kernel<T, kD, c.block_n, c.persistent, false>;
  set_max_dynamic_smem(kernel, L::kAlloc, "cudaFuncSetAttribute(sm90 forward)");
  // One CTA a query tile, or (persistent, problems without a mask: every
  // tile the same length, so a static round-robin is balanced) one an SM.
  const std::int64_t tiles = static_cast<std::int64_t>((p.seqlen_q + c.block_m - 1) / c.block_m) * p.heads_q * p.batch;
  if (tiles > 0x7fffffff) throw Error("q: expected fewer than 2^31 query tiles of 128 rows (batch x heads x tiles)");
  std::int64_t ctas = tiles;
  if (c.persistent && p.window.unbounded()) ctas = std::min<std::int64_t>(tiles, device_sm_count());
  if (ctas == 0) return;
  kernel<<<static_cast<unsigned>(ctas), kThreads, L::kAlloc, stream>>>(p, tq, tk, tv);
  check(cudaGetLastError(), "sm90 forward kernel launch");
}

}  // namespace flashattn::detail::sm90
