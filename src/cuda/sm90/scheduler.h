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

// The forward's query tiles, numbered t = 0 .. count() - 1 in the order
// CTAs take them: tile t is query tile (t % nm) of head (t / nm) % heads of
// sequence t / (nm heads), so that the CTAs running at one time share K
// and V of few heads in L2, with each head's query tiles reversed so that,
// under a causal mask, the ones with the most key tiles start first.
// Varlen batches number nm tiles of the longest sequence for every
// sequence; a tile past its sequence's end has no rows (the consumers skip
// it).
//
// A CTA takes tiles blockIdx.x, blockIdx.x + gridDim.x, ...: a persistent
// launch is one CTA an SM (problems whose tiles are all alike), any other
// one CTA a tile (the hardware's block scheduler balances unequal tiles).
//
// Everything derives from the kernel parameters on demand (they sit in the
// constant bank, free to re-read): values computed once would take
// registers for the whole kernel, which the consumers do not have.
template <int kBlockM>
struct FwdTileScheduler {
  const Params& p;

  __device__ __forceinline__ int tiles_per_head() const { return (p.seqlen_q + kBlockM - 1) / kBlockM; }
  __device__ __forceinline__ int count() const { return tiles_per_head() * p.heads_q * p.batch; }
  __device__ __forceinline__ int first() const { return static_cast<int>(blockIdx.x); }
  // One CTA a tile (grid = count()) or persistent (grid = one CTA an SM):
  // either way the CTA's next tile is gridDim.x further.
  __device__ __forceinline__ int next(int t) const { return t + static_cast<int>(gridDim.x); }
  __device__ __forceinline__ WorkTile tile(int t) const {
    const int nm = tiles_per_head();
    const int hb = t / nm;
    return {(nm - 1 - t % nm) * kBlockM, hb % p.heads_q, hb / p.heads_q};
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
