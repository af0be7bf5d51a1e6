// Tile schedulers of the Hopper kernels: which work tiles a CTA takes and
// in what order. The key tiles a query tile visits are the key-tile
// schedule's (../key_tiles.cuh: dense window range or block-sparse lists).
#pragma once

#include "../common.cuh"

namespace flashattn::detail::sm90 {

using cuda::Params;

// One unit of the forward's work: query rows m0.. of query head h of
// sequence b.
struct WorkTile {
  int m0, h, b;
};

// Whether a forward launch takes its query tiles in pairs (below): a
// persistent row (dispatch.h) on a dense problem whose window mask (causal
// included) makes the tiles' lengths unequal. The host sizes the grid by
// it and passes it to the kernel as Params::tile_pairs.
inline bool fwd_tile_pairs(const Params& p, bool persistent) {
  return persistent && !p.is_varlen() && !p.is_sparse() && !p.window.unbounded();
}

// The forward's query tiles, numbered t = 0 .. count() - 1 in the order
// CTAs take them: tile t is query tile m(t % nm) of head (t / nm) % heads
// of sequence t / (nm heads), so that the CTAs running at one time share
// K and V of few heads in L2. m(k) = nm - 1 - k: each head's tiles
// reversed, so that under a mask the ones with the most key tiles start
// first. Varlen batches number nm tiles of the longest sequence for every
// sequence; a tile past its sequence's end has no rows (the consumers skip
// it).
//
// A CTA takes tiles blockIdx.x, blockIdx.x + gridDim.x, ...: a persistent
// launch of a problem whose tiles are all alike is one CTA an SM (a
// round-robin is balanced); a launch of one CTA a tile leaves the balance
// to the hardware's block scheduler.
//
// Pairs (p.tile_pairs, set from fwd_tile_pairs: a persistent launch under
// a window mask): under a causal mask query tile m has m + 1 key tiles, so
// a round-robin of single tiles is unbalanced, and one CTA a tile pays a
// launch, the first copies and an epilogue a tile that no other tile's
// work hides. So each head's tiles are numbered zigzag, m(k) = nm - 1 -
// k / 2 for even k and (k - 1) / 2 for odd k (longest, shortest, second
// longest, ...), and a CTA takes the pairs (2u, 2u + 1) for u =
// blockIdx.x, blockIdx.x + gridDim.x, ...: under a causal mask every pair
// of a head costs the same (nm + 1 key tiles), so a round-robin of pairs
// is balanced to within one pair a CTA, with no claims at run time (an
// atomic that returns a value, anywhere in the kernel, changed ptxas's
// allocation of the d = 128 key loop). With an odd nm a pair may straddle
// two heads, whose costs then differ by a tile or so.
//
// The order's arithmetic is FwdTileOrder, on the host too
// (tests/cuda_host); pairs is 0 or 1 and enters as arithmetic, not as a
// branch, which also changed ptxas's allocation of that loop (1142 ->
// 1310 instructions a key tile). FwdTileScheduler applies it to the
// kernel's parameters, deriving everything on demand (they sit in the
// constant bank, free to re-read): values computed once would take
// registers for the whole kernel, which the consumers do not have.
struct FwdTileOrder {
  // A CTA's first tile.
  static FA_HOST_DEVICE constexpr int first(int cta, int pairs) { return cta << pairs; }
  // t + grid; in pairs t + 1 after a pair's first tile, t + 2 grid - 1
  // after its second. Below 2^30 tiles (forward_ctas): no overflow.
  static FA_HOST_DEVICE constexpr int next(int t, int grid, int pairs) {
    return t + grid + pairs * (1 - grid) + (t & pairs) * (2 * grid - 2);
  }
  // The query tile (of nm) that a head's k-th tile in the order is.
  static FA_HOST_DEVICE constexpr int query_tile(int k, int nm, int pairs) {
    const int half = k >> pairs;
    return (k & pairs) ? half : nm - 1 - half;
  }
};

template <int kBlockM>
struct FwdTileScheduler {
  const Params& p;

  __device__ __forceinline__ int tiles_per_head() const { return (p.seqlen_q + kBlockM - 1) / kBlockM; }
  __device__ __forceinline__ int count() const { return tiles_per_head() * p.heads_q * p.batch; }
  __device__ __forceinline__ int first() const {
    return FwdTileOrder::first(static_cast<int>(blockIdx.x), p.tile_pairs);
  }
  __device__ __forceinline__ int next(int t) const {
    return FwdTileOrder::next(t, static_cast<int>(gridDim.x), p.tile_pairs);
  }
  __device__ __forceinline__ WorkTile tile(int t) const {
    const int nm = tiles_per_head();
    const int hb = t / nm;
    return {FwdTileOrder::query_tile(t % nm, nm, p.tile_pairs) * kBlockM, hb % p.heads_q, hb / p.heads_q};
  }
};

// Where sequence b's rows are in the TMA maps (make_operand_map): a dense
// tensor is mapped as (d, seqlen, heads, batch), so row i of sequence b is
// at (i, b); a packed varlen one as (d, total rows, heads, 1), so row i is
// at (start + i, 0). Rows past a varlen sequence's end are the next
// sequence's: the kernels mask them out of every visible score and never
// store them.
struct SeqCoords {
  int q_row0, k_row0, batch;
};
__device__ __forceinline__ SeqCoords seq_coords(const Params& p, const cuda::SeqInfo& s, int b) {
  if (p.is_varlen()) return {static_cast<int>(s.q_start), static_cast<int>(s.k_start), 0};
  return {0, 0, b};
}

}  // namespace flashattn::detail::sm90
