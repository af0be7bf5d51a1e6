// The tile schedules of the flash kernels, shared by both families:
//  - KeyTiles: the key tiles one query tile visits (the forwards, the sm80
//    deterministic dQ kernel, the sm90 dQ pass);
//  - QueryTiles: the query tiles one key tile is seen by (the dK/dV sweeps
//    of both backwards).
// Each is the dense window range, or the block-sparse lists, and for each
// tile whether any element of it needs the element mask.
#pragma once

#include "common.cuh"

namespace flashattn::detail::cuda {

// One key tile of a query tile's sweep.
struct KeyTile {
  int n0;            // first key (sequence position)
  bool need_mask;    // some element is outside the sequence or the window
  bool window;       // the window rule applies (dense or partial block)
};

// The key tiles one query tile [m0, m0 + block_m) visits, in order: dense
// problems visit the contiguous range the window allows (fully masked tiles
// are never visited); block-sparse ones visit the listed blocks (partial
// first, then full), each block cut into block_k / block_n tiles.
template <int kBlockM, int kBlockN>
struct KeyTiles {
  const Params* p;
  int sq, sk, m0, m_last;
  int first = 0, count_ = 0;                       // dense
  const std::int32_t *idx = nullptr, *fidx = nullptr;  // sparse
  int n_partial = 0, n_full = 0, per_block = 1;

  __device__ KeyTiles(const Params& params, int b, int h, int m0_, const SeqInfo& s)
      : p(&params), sq(s.sq), sk(s.sk), m0(m0_) {
    m_last = min(m0 + kBlockM, sq) - 1;
    if (sk <= 0 || m_last < m0) return;
    if (p->is_sparse()) {
      const std::int64_t row = mask_row(*p, b, h, m0 / p->block_q);
      idx = p->bm_idx + row * p->bm_nkb;
      n_partial = clamp_count(p->bm_count[row], p->bm_nkb);
      if (p->bm_fcount) {
        fidx = p->bm_fidx + row * p->bm_nkb;
        n_full = clamp_count(p->bm_fcount[row], p->bm_nkb);
      }
      per_block = p->block_k / kBlockN;
      return;
    }
    const std::int64_t lo = p->window.first_key(m0, sq, sk);
    const std::int64_t hi = p->window.last_key(m_last, sq, sk);
    if (hi < lo) return;
    first = static_cast<int>(lo / kBlockN);
    count_ = static_cast<int>(hi / kBlockN) - first + 1;
  }

  __device__ int count() const { return p->is_sparse() ? (n_partial + n_full) * per_block : count_; }

  __device__ KeyTile at(int step) const {
    KeyTile t;
    if (p->is_sparse()) {
      const int e = step / per_block, sub = step % per_block;
      const bool partial = e < n_partial;
      const int kb = partial ? idx[e] : fidx[e - n_partial];
      // An index outside [0, num_k_blocks) (contents are unchecked without
      // host copies) becomes a tile past the sequence: loaded as zeros, masked.
      t.n0 = kb >= 0 && kb < p->bm_nkb ? (kb * per_block + sub) * kBlockN : (sk + kBlockN - 1) / kBlockN * kBlockN;
      t.window = partial;
    } else {
      t.n0 = (first + step) * kBlockN;
      t.window = true;
    }
    t.window = t.window && !p->window.unbounded();
    const int n_last = t.n0 + kBlockN - 1;
    t.need_mask = n_last >= sk || (t.window && !window_covers(p->window, m0, m_last, t.n0, n_last, sq, sk));
    return t;
  }
};

// One query tile of a key tile's sweep.
struct QueryTile {
  int m0;            // first query row (sequence position)
  bool need_mask;    // some element is outside the sequence or the window
  bool window;       // the window rule applies (dense or partial block)
};

// The query tiles [m0, m0 + kBlockM) that see some key of the key tile
// [n0, n0 + kBlockN), in increasing order: dense problems the contiguous
// range of rows i with first_key(i) <= n_last and last_key(i) >= n0 (the
// window rule of src/common/mask.h); block-sparse ones the query blocks
// whose lists hold this key block (the transposed lists of Params), each
// cut into block_q / kBlockM tiles, with the window applied inside partial
// blocks only. A sparse tile may start past seqlen_q (the last query block
// of a sequence shorter than the mask's): its rows are all masked.
template <int kBlockM, int kBlockN>
struct QueryTiles {
  const Params* p;
  int sq, sk, n0, n_last;
  int first = 0, count_ = 0;         // dense
  const std::int32_t* idx = nullptr;  // sparse
  int per_block = 1;

  __device__ __forceinline__ QueryTiles(const Params& params, int b, int h, int n0_, const SeqInfo& s)
      : p(&params), sq(s.sq), sk(s.sk), n0(n0_) {
    n_last = min(n0 + kBlockN, sk) - 1;
    if (sq <= 0 || n_last < n0) return;
    if (sparse()) {
      const int bb = p->bm_batch == 1 ? 0 : b, hh = p->bm_heads == 1 ? 0 : h;
      const std::int64_t row = (static_cast<std::int64_t>(bb) * p->bm_heads + hh) * p->bm_nkb + n0 / p->block_k;
      idx = p->bm_t_idx + row * p->bm_nqb;
      per_block = p->block_q / kBlockM;
      count_ = clamp_count(p->bm_t_count[row], p->bm_nqb) * per_block;
      return;
    }
    std::int64_t i_lo = 0, i_hi = sq - 1;
    const std::int64_t shift = static_cast<std::int64_t>(sk) - sq;
    if (p->window.right >= 0) i_lo = max(i_lo, static_cast<std::int64_t>(n0) - shift - p->window.right);
    if (p->window.left >= 0) i_hi = min(i_hi, static_cast<std::int64_t>(n_last) - shift + p->window.left);
    if (i_hi < i_lo) return;
    first = static_cast<int>(i_lo / kBlockM);
    count_ = static_cast<int>(i_hi / kBlockM) - first + 1;
  }

  __device__ __forceinline__ bool sparse() const { return p->is_sparse(); }
  __device__ __forceinline__ int count() const { return count_; }

  __device__ __forceinline__ QueryTile at(int step) const {
    QueryTile t;
    if (sparse()) {
      const int v = idx[step / per_block];
      t.m0 = ((v >> 1) * per_block + step % per_block) * kBlockM;
      t.window = (v & 1) == 0;  // partial
    } else {
      t.m0 = (first + step) * kBlockM;
      t.window = true;
    }
    t.window = t.window && !p->window.unbounded();
    const int m_last = min(t.m0 + kBlockM, sq) - 1;
    t.need_mask = t.m0 + kBlockM > sq || n0 + kBlockN > sk ||
                  (t.window && !window_covers(p->window, t.m0, m_last, n0, n_last, sq, sk));
    return t;
  }
};

}  // namespace flashattn::detail::cuda
