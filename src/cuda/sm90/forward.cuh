// FlashAttention forward for Hopper (sm_90a): TMA loads, wgmma, warp
// specialisation (docs/hopper.md has the pipeline, the barriers and the
// register budget). The kernel is composed of roles, each below in its
// own section:
//   scheduler (scheduler.h)  which query tiles a CTA takes: one, or with the
//                            persistent launch (kPersistent, problems
//                            without a mask; dispatch.h) every
//                            gridDim.x-th, so that the next tile's Q and
//                            first K/V tiles load under this one's last
//                            steps and epilogue
//   producer                 warpgroup 0, one thread: every TMA copy (Q,
//                            then K_j and V_j of each key tile the mask
//                            allows, ../key_tiles.cuh) into rings of
//                            stages (pipeline.h) that run on across tiles
//   mainloop                 warpgroups 1 and 2, the consumers, 64 query
//                            rows each (wgmma's M): S = Q K_j^T (both
//                            operands in shared memory), O += P V_j (P from
//                            registers)
//   softmax                  the online softmax between the two, on the
//                            registers of S (../tile_ops.cuh)
//   epilogue                 O / l and LSE, O out by TMA store
// Barriers (mbarriers in shared memory, as three rings; named barriers 3
// and 4 for the consumers' turns, 1 and 2 for each consumer's epilogue):
//   q_full / q_empty   a ring of one stage: Q of a query tile landed / both
//                      consumers are done with it (its last S completed;
//                      where O is staged in Q's buffer (L::kOwnO false):
//                      O was stored)
//   k_full / k_empty   a ring of two stages: K_j landed / every consumer
//                      thread's S_j (the only reader of K_j) completed
//   v_full / v_empty   likewise for V_j, released once P_j V_j completed;
//                      separate from K so that S and the softmax of tile j
//                      can start before V_j has landed, and K_j+2 can load
//                      a turn before V_j is free
// FP8 (e4m3 Q, K, V; bf16 O): the same kernel on bytes (In =
// __nv_fp8_e4m3). wgmma is then k32 with both operands K-major, so V comes
// from a transposed copy (fp8_vt.h) and P is packed to e4m3 in the order
// that copy stores its keys (tile::pack_a_e4m3); the descales fold into
// the score scale (Q, K) and O's final factor (V); O has its own staging
// buffer (Q's tile is half its size).
// Dense launches (kVarlen false) compile out the sequence lookups, the
// skipped tiles and the row-by-row epilogue of packed varlen batches.
// Overlap: a consumer's loop runs one tile ahead of its P V product: turn j
// issues S_j and P_{j-1} V_{j-1} together, then the softmax of tile j runs
// while P_{j-1} V_{j-1} is still on the tensor cores. The two consumers take
// these turns alternately (named barriers 3 and 4: one waits, the other
// arrives), so that one's softmax falls under the other's matrix products
// instead of both softmaxes falling at the same time (FlashAttention-3's
// ping-pong schedule).
#pragma once

#include <cmath>

#include "../dispatch.h"
#include "../ptx/ptx.cuh"
#include "../ptx/sm90.cuh"
#include "../exact_rows.cuh"
#include "../key_tiles.cuh"
#include "../tile_ops.cuh"
#include "fp8_vt.cuh"
#include "maps.h"
#include "pipeline.h"
#include "roles.h"
#include "scheduler.h"

namespace flashattn::detail::sm90 {

using namespace flashattn::detail::cuda;
namespace x = flashattn::detail::ptx::sm90;

// Registers (roles.h): the consumers' 240 hold O (up to 128 fp32 at
// d = 256), S, the P in flight and the softmax state (d = 128 spills 12
// bytes outside the key loop: the softmax under P V, below).

// The element types of one instantiation: In (Q, K, V) and Out (O).
template <class In>
struct FwdTypes {
  using Out = In;
  static constexpr bool kFp8 = false;
};
template <>
struct FwdTypes<__nv_fp8_e4m3> {
  using Out = __nv_bfloat16;
  static constexpr bool kFp8 = true;
};

// Byte offsets inside the (1024-aligned) dynamic shared memory. Every tile
// is a whole number of 1024-byte swizzle atoms, so all stay aligned. Q and
// K tiles are boxes of kRowBytes a row (128: one 128-byte swizzle row; 64
// for e4m3 at d = 64, 64-byte swizzle), kBoxCols elements; the FP8 V^T
// tile is head_dim rows of kBlockN key bytes (one box); O is staged as
// 16-bit boxes of 64 columns.
template <class In, int kD, int kBlockN, bool kPersistent>
struct SmemLayout {
  static constexpr bool kFp8 = FwdTypes<In>::kFp8;
  static constexpr int kBlockM = 128;
  static constexpr int kInBytes = kFp8 ? 1 : 2;
  static constexpr int kRowBytes = kD * kInBytes < 128 ? kD * kInBytes : 128;
  static constexpr int kBoxCols = kRowBytes / kInBytes;
  static constexpr int kChunks = kD / kBoxCols;          // Q / K boxes per row
  static constexpr int kOChunks = kD / 64;               // 64-column (128-byte) O boxes per row
  static constexpr int kQHalf = 64 * kD * kInBytes;      // one consumer's 64 Q rows
  static constexpr int kOHalf = 64 * kD * 2;             // one consumer's 64 O rows (16-bit)
  static constexpr int kKV = kBlockN * kD * kInBytes;    // one K or V (V^T) tile
  static constexpr int kQ = 0;
  static constexpr int kK = kQ + 2 * kQHalf;             // K stage s at kK + s kKV
  static constexpr int kV = kK + 2 * kKV;                // V stage s at kV + s kKV
  // O staging of consumer w at kO + w kOHalf: its own buffer when the CTA
  // loops over tiles (the next tile's Q is loading into Q's) or Q's is too
  // small (e4m3), else Q's.
  static constexpr bool kOwnO = kPersistent || kFp8;
  static constexpr int kO = kOwnO ? kV + 2 * kKV : kQ;
  static constexpr int kBars = kOwnO ? kO + 2 * kOHalf : kV + 2 * kKV;
  // q_full, k_full[2], v_full[2], k_empty[2], v_empty[2], q_empty
  static constexpr int kBytes = kBars + 10 * 8;
  static constexpr int kAlloc = kBytes + 1024;           // slack to align the base
  static_assert(kD % kBoxCols == 0 && kD % 64 == 0, "head_dim in whole boxes");
  static_assert(kQHalf % 1024 == 0 && kKV % 1024 == 0, "tiles must be whole swizzle atoms");
  static_assert(!kFp8 || kBlockN == 128 || kBlockN == 64, "a V^T row of 128 or 64 key bytes (its swizzle)");
  static_assert(kAlloc <= 227 * 1024, "over the shared memory of one CTA");
};

// The forward's barriers (see the top of this file) as rings: Q of one
// stage (a query tile at a time), K and V of two that share stage numbers
// (K_j and V_j in stage j % 2).
// Block layout (L::kBars): q_full, k_full[2], v_full[2], k_empty[2],
// v_empty[2], q_empty.
template <class L>
struct FwdPipes {
  Ring<1, 0, 72> q;
  Ring<2, 8, 40> k;
  Ring<2, 24, 56> v;

  __device__ __forceinline__ explicit FwdPipes(std::uint32_t base)
      : q{base + L::kBars}, k{base + L::kBars}, v{base + L::kBars} {}

  // One thread. Full barriers: the producer's arrival plus the copies'
  // bytes; empty ones: every consumer thread.
  __device__ __forceinline__ void init() const {
    x::mbar_init(q.full_bar(0), 1);
    x::mbar_init(q.empty_bar(0), kConsumers * kWarpgroup);
    for (int s = 0; s < 2; ++s) {
      x::mbar_init(k.full_bar(s), 1);
      x::mbar_init(v.full_bar(s), 1);
      x::mbar_init(k.empty_bar(s), kConsumers * kWarpgroup);
      x::mbar_init(v.empty_bar(s), kConsumers * kWarpgroup);
    }
    x::fence_mbar_init();
  }
};

// The TMA maps of one forward launch (kernel parameters: __grid_constant__);
// v maps V^T (fp8_vt.h) with e4m3 inputs.
struct FwdMaps {
  const CUtensorMap *q, *k, *v, *o;
};

// Sequence b's lengths and starts: resolve_seq, or for a dense launch the
// problem's lengths (constants of the parameter block).
template <bool kVarlen>
__device__ __forceinline__ SeqInfo fwd_seq(const Params& p, int b) {
  if constexpr (kVarlen) return resolve_seq(p, b);
  SeqInfo s;
  s.sq = p.seqlen_q;
  s.sk = p.seqlen_k;
  return s;
}
template <bool kVarlen>
__device__ __forceinline__ SeqCoords fwd_coords(const Params& p, const SeqInfo& s, int b) {
  if constexpr (kVarlen) return seq_coords(p, s, b);
  return {0, 0, b};
}

// ---------------------------------------------------------- producer ---
// One thread issues every copy: for each query tile of the schedule, Q
// (two 64-row halves) once both consumers are done with the previous
// tile's, then K_j and V_j of each key tile the mask allows, each into its
// stage once the consumers released that stage's previous use. The K/V
// ring runs on across query tiles.
template <class L, int kBlockM, int kBlockN, bool kVarlen, class Scheduler>
__device__ __forceinline__ void fwd_producer(const Params& p, const Scheduler& sched, const FwdPipes<L>& pipes,
                                             std::uint32_t base, const FwdMaps& maps) {
  x::tma_prefetch_map(maps.q);
  x::tma_prefetch_map(maps.k);
  x::tma_prefetch_map(maps.v);
  x::tma_prefetch_map(maps.o);
  PipelineState<1> q_state;
  PipelineState<2> kv_state;
  for (int tile = sched.first(); tile < sched.count(); tile = sched.next(tile)) {
    const WorkTile qt = sched.tile(tile);
    const SeqInfo seq = fwd_seq<kVarlen>(p, qt.b);
    if (kVarlen && qt.m0 >= seq.sq) continue;  // a tile past its sequence's end: no rows (the consumers skip it too)
    const SeqCoords at = fwd_coords<kVarlen>(p, seq, qt.b);
    const KeyTiles<kBlockM, kBlockN> tiles(p, qt.b, qt.h, qt.m0, seq);
    const int n_steps = tiles.count();
    const int hk = qt.h / p.group;
    // Q always, even when no key tile is visible: the consumers wait for
    // it, and (without L::kOwnO) stage O through its buffer, which no
    // late copy may race. But not a half that lies wholly past seqlen_q:
    // a partly out-of-bounds box counts its whole size on the barrier, a
    // wholly out-of-bounds one is not documented either way (a wrong
    // expect_tx is a hang), and the rows of that half are never stored.
    pipes.q.acquire(q_state);
    const int q_halves = qt.m0 + 64 < seq.sq ? 2 : 1;
    x::mbar_arrive_expect_tx(pipes.q.full(q_state), q_halves * L::kQHalf);
    for (int half = 0; half < q_halves; ++half)
#pragma unroll
      for (int c = 0; c < L::kChunks; ++c)
        x::tma_load_4d(base + L::kQ + half * L::kQHalf + c * 64 * L::kRowBytes, maps.q, pipes.q.full(q_state),
                       c * L::kBoxCols, at.q_row0 + qt.m0 + 64 * half, qt.h, at.batch);
    for (int step = 0; step < n_steps; ++step, ++kv_state) {
      const int s = kv_state.stage();
      // A listed key tile wholly past seqlen_k (an index out of range, or a
      // block past a short varlen sequence's end) copies the sequence's
      // first keys instead: they are all masked there (the tile's keys are
      // >= seqlen_k), and no box lies wholly outside the tensor.
      const int n_first = tiles.at(step).n0;
      const int n0 = n_first < seq.sk ? n_first : 0;
      pipes.k.acquire(kv_state);
      x::mbar_arrive_expect_tx(pipes.k.full(kv_state), L::kKV);
#pragma unroll
      for (int c = 0; c < L::kChunks; ++c)
        x::tma_load_4d(base + L::kK + s * L::kKV + c * kBlockN * L::kRowBytes, maps.k, pipes.k.full(kv_state),
                       c * L::kBoxCols, at.k_row0 + n0, hk, at.batch);
      pipes.v.acquire(kv_state);
      x::mbar_arrive_expect_tx(pipes.v.full(kv_state), L::kKV);
      if constexpr (L::kFp8) {
        // V^T: one box of kBlockN keys x head_dim rows.
        x::tma_load_4d(base + L::kV + s * L::kKV, maps.v, pipes.v.full(kv_state),
                       static_cast<int>(fp8_vt_key0(kVarlen, seq.k_start, qt.b)) + n0, 0, hk, at.batch);
      } else {
#pragma unroll
        for (int c = 0; c < L::kChunks; ++c)
          x::tma_load_4d(base + L::kV + s * L::kKV + c * kBlockN * 128, maps.v, pipes.v.full(kv_state), c * 64,
                         at.k_row0 + n0, hk, at.batch);
      }
    }
    ++q_state;
  }
}


// ---------------------------------------------------------- mainloop ---
// The consumer's two products with K_j and V_j of one ring use, each one
// commit group, waiting first for its stage to be full.
template <class In, int kD, int kBlockN, class L>
struct FwdMainloop {
  FwdPipes<L> pipes;
  std::uint32_t base, sQ;  // shared-memory base; this consumer's 64 Q rows

  // S = Q K_j^T, K = head_dim in steps of 32 bytes (k16 of 16-bit values,
  // k32 of e4m3) inside a box row of kRowBytes; a new box every
  // kRowBytes / 32 steps. The k-steps' descriptors by one add each from
  // the tile's (desc_advance).
  __device__ __forceinline__ void issue_s(float (&sc)[kBlockN / 2], PipelineState<2> kv) const {
    constexpr int kStepsPerBox = L::kRowBytes / 32;
    const std::uint32_t sK = base + L::kK + kv.stage() * L::kKV;
    pipes.k.wait(kv);
    x::wgmma_fence();  // after the wait loop too: otherwise ptxas injects one (C7519)
    const std::uint64_t q_desc = x::desc_k_major<L::kRowBytes>(sQ), k_desc = x::desc_k_major<L::kRowBytes>(sK);
#pragma unroll
    for (int kk = 0; kk < kD * L::kInBytes / 32; ++kk) {
      const std::uint32_t koff = (kk % kStepsPerBox) * 32, box = kk / kStepsPerBox;
      x::wgmma_ss(sc, x::desc_advance(q_desc, box * 64 * L::kRowBytes + koff),
                  x::desc_advance(k_desc, box * kBlockN * L::kRowBytes + koff), kk > 0 ? 1 : 0, In{});
    }
    x::wgmma_commit();
  }
  // O += P V_j. 16-bit: K = keys in steps of 16 rows (2048 bytes), N =
  // head_dim across the 64-column boxes (LBO = one box). e4m3: V_j^T is
  // K-major (head_dim rows of kBlockN key bytes), K = keys in steps of 32
  // bytes, N = head_dim in one instruction.
  __device__ __forceinline__ void issue_pv(float (&o)[kD / 2], std::uint32_t (&pa)[kBlockN * L::kInBytes / 32][4],
                                           PipelineState<2> kv) const {
    const std::uint32_t sV = base + L::kV + kv.stage() * L::kKV;
    pipes.v.wait(kv);
    x::wgmma_fence();
    if constexpr (L::kFp8) {
      const std::uint64_t vt_desc = x::desc_k_major<kBlockN>(sV);
#pragma unroll
      for (int kk = 0; kk < kBlockN / 32; ++kk) x::wgmma_rs(o, pa[kk], x::desc_advance(vt_desc, kk * 32), 1, In{});
    } else {
      const std::uint64_t v_desc = x::desc_sw128(sV, kBlockN * 128, 1024);
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk)
        x::wgmma_rs_bt(o, pa[kk], x::desc_advance(v_desc, kk * 16 * 128), 1, In{});
    }
    x::wgmma_commit();
  }
};

// P of one key tile to 16 bits in pa (the A-fragment layout of k16 slice
// kk), with dropout: one Philox call covers this thread's 8 elements of the
// 16-column slice kk (rows r and r + 8 of its two 8-column groups;
// philox.h; the tile's rows and the key tiles start at multiples of 16),
// and its four 32-bit words are those of pa[kk]'s four registers, each half
// the mask of one 16-bit P, so an AND drops them (a 16-bit zero is +0). The
// softmax's sum is the un-dropped one (LSE ignores dropout); the epilogue
// scales O by 1 / (1 - p).
// e4m3 (no dropout there): tile::pack_a_e4m3's k32 slices.
template <class T, bool kDropout, int kN, int kSlices>
__device__ __forceinline__ void pack_p(std::uint32_t (&pa)[kSlices][4], const float (&sc)[kN], const Params& p,
                                       std::uint32_t bh, int row0, int n0, int col_in_tile) {
  if constexpr (std::is_same_v<T, __nv_fp8_e4m3>) {
    static_assert(!kDropout, "the FP8 forward has no dropout");
    tile::pack_a_e4m3(pa, sc);
  } else {
    tile::pack_a<T>(pa, sc);
  }
  if constexpr (kDropout) {
    const std::uint32_t pair = DropoutStream::row_pair_of(static_cast<std::uint32_t>(row0));
#pragma unroll
    for (int kk = 0; kk < kN / 8; ++kk) {
      const Philox4 r =
          p.dropout.words(bh, pair, DropoutStream::call_of(static_cast<std::uint32_t>(n0 + 16 * kk + col_in_tile)));
      pa[kk][0] &= p.dropout.keep_mask(r.x);  // row r,     columns 16 kk + 2u, + 1
      pa[kk][1] &= p.dropout.keep_mask(r.z);  // row r + 8, the same columns
      pa[kk][2] &= p.dropout.keep_mask(r.y);  // row r,     8 columns further
      pa[kk][3] &= p.dropout.keep_mask(r.w);  // row r + 8, 8 columns further
    }
  }
}

// The online softmax of one key tile on S (sc), as the sm80 kernel: with a
// positive scale the order of the raw scores is that of the scaled ones, so
// mask and take the max on raw scores and fold the scale into the
// exponent's FFMA (post_scale); otherwise scale first. scale_log2: the
// softmax scale in log2 units (times Q's and K's descales for e4m3). Leaves P in sc and
// the correction of the running O in corr; returns whether a row's base moved
// (OnlineSoftmax::update).
template <int kFmaExp2, int kStaleMax, int kN>
__device__ __forceinline__ bool fwd_softmax(float (&sc)[kN], tile::OnlineSoftmax& sm, float (&corr)[2],
                                            const Params& p, const SeqInfo& seq, const KeyTile& kt, int row0,
                                            int col_in_tile, bool prescale, float scale_log2, float post_scale) {
  if (prescale) tile::scale(sc, scale_log2);
  if (kt.need_mask) {
    // Opaque: the rows' window bounds are then computed here, for masked
    // tiles only, not hoisted out of the key loop into registers it needs.
    const int r0 = row0;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int i = r0 + 8 * half;
      const std::int64_t lo = kt.window ? p.window.first_key(i, seq.sq, seq.sk) : 0;
      const std::int64_t hi = kt.window ? p.window.last_key(i, seq.sq, seq.sk) : seq.sk - 1;
      tile::mask_outside(sc, half, kt.n0 + col_in_tile, lo, hi);
    }
  }
  return sm.update<kFmaExp2, kStaleMax>(sc, post_scale, corr);
}

// ---------------------------------------------------------- epilogue ---
// O / l and LSE = ln(sum exp(scaled scores)) of this consumer's 64 rows.
// O goes through the warpgroup's staging rows (L::kO: its own Q rows,
// which no wgmma reads any more, or with L::kOwnO a buffer of its own)
// as the O map's boxes (64 rows x 64 columns, 128B swizzle: 16-byte chunk
// ^ row % 8, conflict-free for the fragment writes), then to global memory
// by TMA, one thread issuing the warpgroup's boxes: rows >= seqlen_q fall
// outside the map and are never stored. Barrier 1 / 2 (this warpgroup's):
// first, the previous tile's store has finished reading the staging (its
// issuing thread waited for that); second, every thread's staging writes
// are fenced before the store is issued.
// T: O's type; In: the inputs' (the slow path reads them).
template <class T, class In, int kD, class L, bool kPersistent, bool kVarlen>
struct FwdEpilogue {
  unsigned char* smem;
  std::uint32_t base;
  int cw, t, warp, lane;
  const CUtensorMap* maps_o;

  __device__ __forceinline__ void sync() const {
    if (cw == 0) x::named_barrier_sync<1>(kWarpgroup);
    else x::named_barrier_sync<2>(kWarpgroup);
  }

  // The rows m_first.. below seq.sq of the staging (as the O map's boxes)
  // to out, 16 bytes a thread at a time.
  __device__ __forceinline__ void copy_rows_out(const Params& p, const SeqInfo& seq, const WorkTile& qt, int m_first,
                                                const unsigned char* stage) const {
    constexpr int kRowChunks = kD / 8;  // 16-byte chunks a row
    const int rows = seq.sq - m_first;
    T* out = static_cast<T*>(p.out) + (seq.q_start + m_first) * p.o_ss + qt.h * p.o_sh;
    for (int idx = t; idx < rows * kRowChunks; idx += kWarpgroup) {
      const int r = idx / kRowChunks, k = idx % kRowChunks;
      const uint4 v =
          *reinterpret_cast<const uint4*>(stage + (k / 8) * (64 * 128) + r * 128 + ((k % 8) ^ (r % 8)) * 16);
      *reinterpret_cast<uint4*>(out + r * p.o_ss + k * 8) = v;
    }
  }

  // rnd: the CTA's query tiles before this one. o_scale: O's factor
  // besides 1 / l (1 / (1 - p) with dropout, V's descale for e4m3).
  // Returns whether this warp's rows of the tile hold a NaN or inf.
  __device__ __forceinline__ bool store(const float (&o)[kD / 2], const tile::OnlineSoftmax& sm, float o_scale,
                                        const Params& p, const SeqInfo& seq, const WorkTile& qt, int rnd,
                                        const FwdPipes<L>& pipes, PipelineState<1> q_state) const {
    unsigned char* stage = smem + L::kO + cw * L::kOHalf;
    if (L::kOwnO && rnd > 0) {
      if (t == 0) x::bulk_wait_read<0>();
      sync();
    }
    // The staging addresses depend on the thread only: the compiler would
    // compute all 2 x kD / 8 of them once, before the tile loop, and keep
    // them through it (at d = 128, spilled). Opaque: per-tile arithmetic.
    const int ln = ptx::opaque(lane);
    const int col_in_tile = tile::lane_col(ln);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const float l = sm.total_sum(half);
      // l == 0: no visible key (O = 0); a NaN l stays NaN.
      const float inv = l == 0.f ? 0.f : o_scale / l;
      const int r = warp * 16 + tile::lane_row(ln, half), r_tile = cw * 64 + r;
      if (p.lse != nullptr && ln % 4 == 0 && qt.m0 + r_tile < seq.sq)
        p.lse[q_row(p, seq, qt.b, qt.h, qt.m0 + r_tile)] = sm.lse(half, l);
#pragma unroll
      for (int tt = 0; tt < kD / 8; ++tt) {
        const int chunk = (tt % 8) ^ (r % 8);  // 8-column group tt is chunk tt % 8 of box tt / 8
        *reinterpret_cast<std::uint32_t*>(stage + (tt / 8) * (64 * 128) + r * 128 + chunk * 16 + col_in_tile * 2) =
            pack2<T>(o[tile::acc_index(tt, half, 0)] * inv, o[tile::acc_index(tt, half, 1)] * inv);
      }
    }
    // The NaN rule (../exact_rows.cuh): whether this warp's rows of the
    // staging hold a NaN or inf. Only the check runs here; the rows are
    // recomputed after the tile loop (fwd_consumer), where the slow path
    // takes no registers from the loop (here it made ptxas spill in it).
    __syncwarp();
    const int row0 = qt.m0 + cw * 64 + warp * 16;  // the sequence row of this warp's slice
    unsigned bad = exact::nonfinite_rows16<T, kD>(lane, [&](int r, int k) {
      return stage + (k / 8) * (64 * 128) + (warp * 16 + r) * 128 + ((k % 8) ^ (r % 8)) * 16;
    });
    if (row0 + 16 > seq.sq) bad &= row0 >= seq.sq ? 0u : (1u << (seq.sq - row0)) - 1u;
    x::fence_proxy_async_smem();  // ordinary stores, read next by the copy engine
    sync();
    // A box whose rows run past a varlen sequence's end would write the
    // next sequence's rows (the map ends only at the last sequence's end):
    // such a half-tile is copied row by row instead, the valid rows only.
    const int m_first = qt.m0 + cw * 64;
    if (kVarlen && m_first + 64 > seq.sq) {
      copy_rows_out(p, seq, qt, m_first, stage);
    } else if (t == 0) {
      const SeqCoords at = fwd_coords<kVarlen>(p, seq, qt.b);
#pragma unroll
      for (int c = 0; c < L::kOChunks; ++c)
        x::tma_store_4d(maps_o, base + L::kO + cw * L::kOHalf + c * 64 * 128, c * 64, at.q_row0 + m_first, qt.h,
                        at.batch);
      x::bulk_commit();
    }
    // Without a buffer of its own, Q's was the staging: released once the
    // store has read it (a launch of that kernel has one tile a CTA, but
    // the protocol does not depend on it).
    if constexpr (!L::kOwnO) {
      if (t == 0) x::bulk_wait_read<0>();
      sync();
      pipes.q.release(q_state);
    }
    return bad != 0u;
  }

  // The NaN rule's slow path, once every store of the CTA has landed: the
  // rows of this warp's slice of tile qt whose stored O holds a NaN or inf
  // are recomputed from the inputs (../exact_rows.cuh) and stored again,
  // with their LSE.
  __device__ __forceinline__ void fix_rows(const Params& p, const WorkTile& qt) const {
    const SeqInfo seq = fwd_seq<kVarlen>(p, qt.b);
    const int row0 = qt.m0 + cw * 64 + warp * 16;
    if (row0 >= seq.sq) return;
    T* out = static_cast<T*>(p.out) + qt.b * p.o_sb + (seq.q_start + row0) * p.o_ss + qt.h * p.o_sh;
    unsigned bad = exact::nonfinite_rows16<T, kD>(lane, [&](int r, int k) {
      return reinterpret_cast<const unsigned char*>(out + min(r, seq.sq - 1 - row0) * p.o_ss + 8 * k);
    });
    if (row0 + 16 > seq.sq) bad &= (1u << (seq.sq - row0)) - 1u;
    exact::for_rows(bad, [&](int r) {
      float ov[exact::kCols<kD>], lse;
      exact::forward_row<In, kD>(p, seq, qt.b, qt.h, row0 + r, lane, ov, lse);
#pragma unroll
      for (int u = 0; u < exact::kCols<kD>; ++u)
        if (lane + 32 * u < kD) out[r * p.o_ss + lane + 32 * u] = from_float<T>(ov[u]);
      if (p.lse != nullptr && lane == 0) p.lse[q_row(p, seq, qt.b, qt.h, row0 + r)] = lse;
    });
  }
};

// ---------------------------------------------------------- consumer ---
// Runs the FlashAttention-2 loop on its 64 query rows of each scheduled
// tile, software-pipelined by one key tile and in turns with the other
// consumer (see "Overlap" at the top of this file): turn j issues S_j and
// P_{j-1} V_{j-1}; the softmax of tile j then runs while P_{j-1} V_{j-1}
// and the other consumer's turn are on the tensor cores. O is rescaled by
// tile j's correction only once P_{j-1} V_{j-1} has completed, and P_j is
// packed into pa only then (the RS wgmma reads pa until it completes).
template <class In, int kD, int kBlockN, bool kPersistent, int kFmaExp2, int kStaleMax, bool kDropout, bool kVarlen,
          class L, class Scheduler>
__device__ __forceinline__ void fwd_consumer(const Params& p, const Scheduler& sched, const FwdPipes<L>& pipes,
                                             unsigned char* smem, std::uint32_t base, const FwdMaps& maps) {
  using Out = typename FwdTypes<In>::Out;
  constexpr int kBlockM = L::kBlockM;
  constexpr int kSlices = kBlockN * L::kInBytes / 32;  // k slices of P (16 keys, or 32 for e4m3)
  // Which 64 query rows. Broadcast from lane 0 so that the compiler knows
  // it is warp-uniform: its branches (the turns, the epilogue's barriers)
  // are then uniform ones, and inside the tile loop ptxas kept the main
  // loop's addresses, descriptors and barrier parities on the uniform
  // datapath only with it (without: 70 more instructions a step at d 64).
  const int cw = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x) / kWarpgroup - 1, 0);
  const int t = static_cast<int>(threadIdx.x) % kWarpgroup, warp = t / 32, lane = t % 32;
  const FwdMainloop<In, kD, kBlockN, L> mainloop{pipes, base, base + L::kQ + cw * L::kQHalf};
  const FwdEpilogue<Out, In, kD, L, kPersistent, kVarlen> epilogue{smem, base, cw, t, warp, lane, maps.o};
  // This thread's first row (accumulator layout) within the 128-row tile.
  const int row_in_tile = cw * 64 + warp * 16 + tile::lane_row(lane, 0);
  const int col_in_tile = tile::lane_col(lane);

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
  bool any_bad = false;       // some tile's rows of this warp hold a NaN or inf
  PipelineState<2> kv_state;  // K/V ring uses so far, as the producer's
  PipelineState<1> q_state;   // query tiles done so far
  int round = 0;

  // One query tile. A lambda so that a kernel without kPersistent runs it
  // once, without the loop: the loop's state as constants (d = 256 spilled
  // 52 bytes inside the loop).
  // Returns false for a varlen tile past its sequence's end (no rows: the
  // producer skips it too).
  auto consume_tile = [&](const int tile_idx) {
    const WorkTile qt = sched.tile(tile_idx);
    const SeqInfo seq = fwd_seq<kVarlen>(p, qt.b);
    if (kVarlen && qt.m0 >= seq.sq) return false;
    const PipelineState<2> kv0 = kv_state;
    const PipelineState<1> qs = q_state;
    const int rnd = round;
    const std::uint32_t bh = dropout_bh(p, qt.b, qt.h);
    const KeyTiles<kBlockM, kBlockN> tiles(p, qt.b, qt.h, qt.m0, seq);
    const int n_steps = tiles.count();
    const int row0 = qt.m0 + row_in_tile;
    // The scores' scale in log2 units and O's factor: e4m3 folds the
    // descales of this (sequence, KV head) in.
    float scale_log2 = p.scale_log2, o_scale = p.keep_scale;
    if constexpr (L::kFp8) {
      const int hk = qt.h / p.group;
      scale_log2 *= descale(p.q_descale, p, qt.b, hk) * descale(p.k_descale, p, qt.b, hk);
      o_scale = descale(p.v_descale, p, qt.b, hk);
    }
    const bool prescale = !(scale_log2 > 0.f);
    const float post_scale = prescale ? 1.f : scale_log2;
    // Whether consumer 1's last pass of this tile opens a next one.
    bool pass_on = false;
    if (kPersistent && cw == 1 && sched.next(tile_idx) < sched.count()) {
      const WorkTile nt = sched.tile(sched.next(tile_idx));
      pass_on = KeyTiles<kBlockM, kBlockN>(p, nt.b, nt.h, nt.m0, fwd_seq<kVarlen>(p, nt.b)).count() > 0;
    }

    float o[kD / 2];
#pragma unroll
    for (int i = 0; i < kD / 2; ++i) o[i] = 0.f;
    tile::OnlineSoftmax sm;
    float sc[kBlockN / 2];
    std::uint32_t pa[kSlices][4];
    bool moved = true;  // whether a row's base moved in the last softmax
    if (n_steps > 0 && cw == 1 && !c1_passed) x::named_barrier_arrive<3>(2 * kWarpgroup);

    auto fence_pa = [&] {
#pragma unroll
      for (int kk = 0; kk < kSlices; ++kk)
#pragma unroll
        for (int q = 0; q < 4; ++q) x::fence_operand(pa[kk][q]);
    };
    // This thread has read Q of the tile for the last time (its last S is
    // complete): with O staged apart the producer may load the next tile's.
    // Otherwise Q's buffer stages O, so the release waits for the epilogue.
    auto release_q_after_s = [&](int step) {
      if (L::kOwnO && step == n_steps - 1) pipes.q.release(qs);
    };
    auto softmax = [&](int step, float (&corr)[2]) {
      moved = fwd_softmax<kFmaExp2, kStaleMax>(sc, sm, corr, p, seq, tiles.at(step), row0, col_in_tile, prescale,
                                               scale_log2, post_scale);
    };
    auto pack = [&](int step) { pack_p<In, kDropout>(pa, sc, p, bh, row0, tiles.at(step).n0, col_in_tile); };

    pipes.q.wait(qs);
    if (n_steps > 0) {
      // Turn 0: S_0 alone.
      turn_wait();
      x::wgmma_fence();
      mainloop.issue_s(sc, kv0);
      turn_pass(false);
      x::wgmma_wait<0>();
      x::fence_operands(sc);
      pipes.k.release(kv0);
      release_q_after_s(0);
      float corr[2];
      softmax(0, corr);
      tile::rescale_rows(o, corr);  // O = 0: corr only matters for the bookkeeping above
      pack(0);
    } else if (L::kOwnO) {
      pipes.q.release(qs);  // no S reads Q
    }
    for (int step = 1; step < n_steps; ++step) {
      // Turn `step`: S_step and P_{step-1} V_{step-1}. Registers of o and pa
      // were last written by ordinary instructions: fence before the issue.
      turn_wait();
      x::fence_operands(o);
      fence_pa();
      x::wgmma_fence();
      mainloop.issue_s(sc, kv0 + step);
      mainloop.issue_pv(o, pa, kv0 + (step - 1));
      turn_pass(false);
      x::wgmma_wait<1>();  // S_step complete (groups complete in order); P V may still run
      x::fence_operands(sc);
      pipes.k.release(kv0 + step);  // K_step is read: the producer may refill it now
      release_q_after_s(step);
      // A step's own: declared for the whole tile, the d = 64 kernel kept
      // it on the stack and stored it every step (17M local-store sectors a
      // call, ncu); declared here it stays in registers.
      float corr[2];
      softmax(step, corr);
      x::wgmma_wait<0>();  // P_{step-1} V_{step-1} complete: o and pa are free
      x::fence_operands(o);
      fence_pa();
      pipes.v.release(kv0 + (step - 1));
      tile::rescale_rows_if_moved<kStaleMax>(o, corr, moved);
      pack(step);
    }
    if (n_steps > 0) {
      // Last turn: the last P V.
      turn_wait();
      x::fence_operands(o);
      fence_pa();
      x::wgmma_fence();
      mainloop.issue_pv(o, pa, kv0 + (n_steps - 1));
      turn_pass(!pass_on);
      if (cw == 1) c1_passed = pass_on;
      x::wgmma_wait<0>();
      x::fence_operands(o);
      pipes.v.release(kv0 + (n_steps - 1));
    }
    kv_state = kv0 + n_steps;
    any_bad |= epilogue.store(o, sm, o_scale, p, seq, qt, rnd, pipes, qs);
    return true;
  };
  if constexpr (kPersistent) {
    for (int tile_idx = sched.first(); tile_idx < sched.count(); tile_idx = sched.next(tile_idx)) {
      if (consume_tile(tile_idx)) {
        ++round;
        ++q_state;
      }
    }
  } else if (sched.first() < sched.count()) {
    consume_tile(sched.first());
  }
  // The shared memory the last stores read stays the CTA's until they are
  // done; the NaN rule's slow path then reads what they wrote.
  if (t == 0) {
    x::bulk_wait_all();
    x::fence_proxy_async_global();
  }
  epilogue.sync();
  if (any_bad) {
    for (int tile_idx = sched.first(); tile_idx < sched.count(); tile_idx = sched.next(tile_idx)) {
      epilogue.fix_rows(p, sched.tile(tile_idx));
      if (!kPersistent) break;
    }
  }
}

// kDropout: a template parameter for the reason given at the backward
// kernel; kVarlen: see the top of this file.
template <class In, int kD, int kBlockN, bool kPersistent, int kFmaExp2, int kStaleMax, bool kDropout, bool kVarlen>
__global__ void __launch_bounds__(kThreads, 1)
    forward_kernel(const __grid_constant__ Params p, const __grid_constant__ CUtensorMap tma_q,
                   const __grid_constant__ CUtensorMap tma_k, const __grid_constant__ CUtensorMap tma_v,
                   const __grid_constant__ CUtensorMap tma_o) {
#if FA_SM90_DEVICE
  using L = SmemLayout<In, kD, kBlockN, kPersistent>;
  extern __shared__ unsigned char smem_raw[];
  // The 128B swizzle pattern repeats every 1024 bytes of *address*: TMA and
  // wgmma agree only on 1024-aligned tiles, so align the base by hand.
  const std::uint32_t raw = x::smem_u32(smem_raw);
  const std::uint32_t base = (raw + 1023u) & ~1023u;
  unsigned char* smem = smem_raw + (base - raw);
  const FwdPipes<L> pipes(base);
  const FwdTileScheduler<L::kBlockM> sched{p};
  const FwdMaps maps{&tma_q, &tma_k, &tma_v, &tma_o};

  if (threadIdx.x == 0) pipes.init();
  __syncthreads();

  if (threadIdx.x < kWarpgroup) {
    // The producer holds no tiles: it gives most of its registers back.
    x::setmaxnreg_dec<kProducerRegs>();
    if (threadIdx.x == 0) fwd_producer<L, L::kBlockM, kBlockN, kVarlen>(p, sched, pipes, base, maps);
  } else {
    x::setmaxnreg_inc<kConsumerRegs>();
    fwd_consumer<In, kD, kBlockN, kPersistent, kFmaExp2, kStaleMax, kDropout, kVarlen, L>(p, sched, pipes, smem, base,
                                                                                       maps);
  }
#else
  // Built for another architecture: the dispatch never launches this.
  __trap();
#endif
}

// The launch of one table row c (kSm90FwdTiles, or kSm90Fp8FwdTiles for
// e4m3) on the maps of Q, K, V (V^T for e4m3) and O.
template <class In, int kD, Sm90FwdTile c>
void launch_forward_kernel(const Params& p, const CUtensorMap& tq, const CUtensorMap& tk, const CUtensorMap& tv,
                           const CUtensorMap& to, std::int64_t ctas, cudaStream_t stream) {
  using L = SmemLayout<In, kD, c.block_n, c.persistent>;
  static_assert(c.head_dim == kD && c.block_m == L::kBlockM && c.stages == 2, "the layout's tiles are the table's");
  auto pick = [&]<bool kDropout>() {
    return p.is_varlen() ? forward_kernel<In, kD, c.block_n, c.persistent, c.fma_exp2, c.stale_max, kDropout, true>
                         : forward_kernel<In, kD, c.block_n, c.persistent, c.fma_exp2, c.stale_max, kDropout, false>;
  };
  auto kernel = pick.template operator()<false>();
  if constexpr (!FwdTypes<In>::kFp8)
    if (p.has_dropout) kernel = pick.template operator()<true>();
  set_max_dynamic_smem(kernel, L::kAlloc, "cudaFuncSetAttribute(sm90 forward)");
  Params lp = p;
  lp.tile_pairs = fwd_tile_pairs(p, c.persistent) ? 1 : 0;
  kernel<<<static_cast<unsigned>(ctas), kThreads, L::kAlloc, stream>>>(lp, tq, tk, tv, to);
  check(cudaGetLastError(), "sm90 forward kernel launch");
}

// One CTA a query tile, or (persistent rows, dense problems of fixed
// length) one an SM: each takes every gridDim.x-th tile when there is no
// mask (all tiles alike), every gridDim.x-th pair of tiles under a window
// mask (scheduler.h). 0: nothing to launch.
inline std::int64_t forward_ctas(const Params& p, const Sm90FwdTile& c) {
  const std::int64_t tiles = static_cast<std::int64_t>((p.seqlen_q + c.block_m - 1) / c.block_m) * p.heads_q * p.batch;
  // Below 2^30: the scheduler's next tile may lie up to 2 gridDim.x past one.
  if (tiles >= (std::int64_t{1} << 30))
    throw Error("q: expected fewer than 2^30 query tiles of 128 rows (batch x heads x tiles)");
  if (fwd_tile_pairs(p, c.persistent)) return std::min<std::int64_t>((tiles + 1) / 2, device_sm_count());
  if (c.persistent && p.window.unbounded() && !p.is_varlen() && !p.is_sparse())
    return std::min<std::int64_t>(tiles, device_sm_count());
  return tiles;
}

template <class T, int kD>
void launch_forward(const Params& p, cudaStream_t stream) {
  constexpr Sm90FwdTile c = sm90_fwd_tile(kD);
  const std::int64_t ctas = forward_ctas(p, c);
  if (ctas == 0) return;  // no query rows: nothing to map (q, out may be null)
  // With no keys the K/V maps are never read (every query tile has zero key
  // steps), but an empty tensor may come with a null pointer, which the
  // encoder need not accept: Q's (non-null, 16-byte aligned) address
  // stands in.
  const CUtensorMap tq = make_operand_map<T, kD>(p, Side::q, p.q, p.q, p.heads_q, p.q_ss, p.q_sh, p.q_sb, 64, "q");
  const CUtensorMap tk =
      make_operand_map<T, kD>(p, Side::k, p.k, p.q, p.heads_k, p.k_ss, p.k_sh, p.k_sb, c.block_n, "k");
  const CUtensorMap tv =
      make_operand_map<T, kD>(p, Side::k, p.v, p.q, p.heads_k, p.v_ss, p.v_sh, p.v_sb, c.block_n, "v");
  const CUtensorMap to =
      make_operand_map<T, kD>(p, Side::q, p.out, p.out, p.heads_q, p.o_ss, p.o_sh, p.o_sb, 64, "out");
  launch_forward_kernel<T, kD, c>(p, tq, tk, tv, to, ctas, stream);
}

// e4m3 Q, K, V, bf16 O: V^T into p.vt first (fp8_vt.cuh), then the kernel
// with V^T's map in place of V's.
template <int kD>
void launch_forward_e4m3(const Params& p, cudaStream_t stream) {
  using In = __nv_fp8_e4m3;
  constexpr Sm90FwdTile c = sm90_fp8_fwd_tile(kD);
  const std::int64_t ctas = forward_ctas(p, c);
  if (ctas == 0) return;
  const CUtensorMap tq = make_operand_map<In, kD>(p, Side::q, p.q, p.q, p.heads_q, p.q_ss, p.q_sh, p.q_sb, 64, "q");
  const CUtensorMap tk =
      make_operand_map<In, kD>(p, Side::k, p.k, p.q, p.heads_k, p.k_ss, p.k_sh, p.k_sb, c.block_n, "k");
  const CUtensorMap to = make_operand_map<__nv_bfloat16, kD>(p, Side::q, p.out, p.out, p.heads_q, p.o_ss, p.o_sh,
                                                             p.o_sb, 64, "out");
  // V^T: (keys, head_dim rows, heads_k, batch), boxes of block_n keys x kD rows.
  const bool varlen = p.is_varlen();
  const std::int64_t vt_batch = varlen ? 1 : p.batch;
  const void* vt = p.vt != nullptr ? static_cast<const void*>(p.vt) : p.q;  // no keys: never read
  const CUtensorMap tv = ptx::sm90::make_tensor_map_bshd(
      vt, ptx::sm90::tma_elem<In>(), p.vt_len > 0 ? p.vt_len : 16, kD, p.heads_k, vt_batch, p.vt_len,
      p.vt_len * kD, p.vt_len * kD * p.heads_k, c.block_n, kD, "v (transposed copy)");
  if (p.vt != nullptr) launch_fp8_transpose_v<kD>(p, stream);
  launch_forward_kernel<In, kD, c>(p, tq, tk, tv, to, ctas, stream);
}

}  // namespace flashattn::detail::sm90
