// Attention over a KV cache (forward_kvcache) on tensor cores, sm_80+ (the
// same code runs on Hopper). Up to three kernels on the caller's stream:
//  1. append (only with a rotary): writes k_new / v_new at cache positions
//     L0 + t (k rotated) and the rotated copy of q. Without a rotary the
//     attention kernel appends (KvParams::append_in_attention): a kernel
//     fewer, whose launch and drain cost a decode call several
//     microseconds;
//  2. attention: one CTA per (sequence, KV head, split, 16- or 64-row tile
//     of the group's query rows). Every query row of the KV head's group
//     (heads_q / heads_k heads x seqlen_q tokens) shares the CTA, so each
//     K / V row is read from memory once per group: decode is bound by
//     those bytes, not by math. Key tiles are copied with cp.async from the
//     cache rows (paged: each row's page looked up one tile ahead) into a
//     ring of kStages buffers, so that kStages - 1 tiles are in flight
//     while one is computed on;
//  3. combine (split-KV only): merges the splits' fp32 partials by LSE.
#pragma once

#include <atomic>
#include <climits>
#include <cmath>

#include "../dispatch.h"
#include "../tile_ops.cuh"
#include "kvcache.h"
#include "tile.cuh"

namespace flashattn::detail::sm80 {

// L0 of sequence b read from the device array, clamped so that L0 + n fits
// the cache (contents are unchecked without host copies; a bad length must
// not write outside the cache).
__device__ __forceinline__ int kv_len0(const KvParams& p, int b) {
  const int l = p.cache_seqlens[b], hi = p.capacity - p.seqlen_new;
  return l < 0 ? 0 : (l > hi ? hi : l);
}

template <class T>
__device__ __forceinline__ float rotary_entry(const KvParams& p, const void* table, int pos, int i) {
  // A position past the table (unchecked lengths) reads its last row instead.
  pos = pos < p.rotary_seqlen ? pos : p.rotary_seqlen - 1;
  const std::int64_t at = static_cast<std::int64_t>(pos) * (p.rotary_dim / 2) + i;
  return p.rot_f32 ? static_cast<const float*>(table)[at] : to_float(static_cast<const T*>(table)[at]);
}

// dst = src with its rotary pairs rotated to position pos (fp32 math, one
// rounding to T, as the CPU backend), the other channels copied. One
// thread per rotary pair or copied channel.
template <class T>
__device__ __forceinline__ void rotate_or_copy(const KvParams& p, T* dst, const T* src, int pos) {
  const int half = p.rotary_dim / 2, items = half + p.head_dim - p.rotary_dim;
  for (int t = threadIdx.x; t < items; t += blockDim.x) {
    if (t < half) {
      const RotaryPair pr = rotary_pair(t, p.rotary_dim, p.rot_interleaved);
      const float c = rotary_entry<T>(p, p.rot_cos, pos, t), s = rotary_entry<T>(p, p.rot_sin, pos, t);
      const float x0 = to_float(src[pr.a]), x1 = to_float(src[pr.b]);
      dst[pr.a] = from_float<T>(x0 * c - x1 * s);
      dst[pr.b] = from_float<T>(x0 * s + x1 * c);
    } else {
      const int ch = p.rotary_dim + t - half;
      dst[ch] = src[ch];
    }
  }
}

// One block per appended (sequence, token, KV head) row, then, with rotary,
// one per (sequence, token, query head) row of q.
template <class T>
__global__ void kv_append_kernel(const __grid_constant__ KvParams p) {
  const std::int64_t item = blockIdx.x;
  const std::int64_t kv_items = p.k_new != nullptr && !p.append_in_attention
                                    ? static_cast<std::int64_t>(p.batch) * p.seqlen_new * p.heads_k
                                    : 0;
  if (item < kv_items) {
    const int h = static_cast<int>(item % p.heads_k);
    const std::int64_t bt = item / p.heads_k;
    const int t = static_cast<int>(bt % p.seqlen_new), b = static_cast<int>(bt / p.seqlen_new);
    const int pos = kv_len0(p, b) + t;
    const T* kn = static_cast<const T*>(p.k_new) + b * p.kn_sb + t * p.kn_ss + h * p.kn_sh;
    const T* vn = static_cast<const T*>(p.v_new) + b * p.vn_sb + t * p.vn_ss + h * p.vn_sh;
    T* kc = static_cast<T*>(p.k_cache) + p.kl.offset(b, pos, h);
    T* vc = static_cast<T*>(p.v_cache) + p.vl.offset(b, pos, h);
    rotate_or_copy(p, kc, kn, pos);  // rotary_dim 0: a copy
    for (int c = threadIdx.x; c < p.head_dim; c += blockDim.x) vc[c] = vn[c];
    return;
  }
  const std::int64_t qi = item - kv_items;
  const int hq = static_cast<int>(qi % p.heads_q);
  const std::int64_t bi = qi / p.heads_q;
  const int i = static_cast<int>(bi % p.seqlen_q), b = static_cast<int>(bi / p.seqlen_q);
  const int l0 = kv_len0(p, b);
  const T* src = static_cast<const T*>(p.q_in) + b * p.qi_sb + i * p.qi_ss + hq * p.qi_sh;
  T* dst = static_cast<T*>(p.q_rot) + ((static_cast<std::int64_t>(b) * p.seqlen_q + i) * p.heads_q + hq) * p.head_dim;
  rotate_or_copy(p, dst, src, p.q_per_row ? l0 + i : l0);
}

// Copies key tiles [n0, n0 + kBlockN) of one (sequence, KV head) from the
// cache into shared memory (SwizzledRows<kD>), K and V alike; keys at or
// past k_end become zero rows that are never read (cache rows past the
// length may hold anything, NaN included). Thread tid copies 16-byte chunk
// tid % kChunks of rows tid / kChunks + i kRowStep, so a warp's copies of
// a row coalesce. A paged cache's page of each of those rows is read from
// the block table one tile ahead (fetch_pages), into registers: the copies
// then wait on no global load when they are issued, which would otherwise
// stall the warp for a memory latency every tile. Positions and pages are
// 32-bit (capacity < 2^31, checked on the host): 64-bit division would
// cost more issue slots than the tile's math.
template <class T, int kD, int kBlockN, int kThreads>
struct KvTileLoader {
  static constexpr int kChunks = kD / 8;
  static constexpr int kRowStep = kThreads / kChunks;
  static constexpr int kRows = kBlockN / kRowStep;  // rows a thread copies of each tile
  static_assert(kThreads % kChunks == 0 && kBlockN % kRowStep == 0, "whole rows per thread");

  const KvParams& p;
  // Contiguous: (b's row, position 0, head h); paged: head h of page 0.
  const T *k, *v;
  const std::int32_t* table = nullptr;  // paged: sequence b's row of the block table
  // Appended in the attention kernel: positions from new_begin are read
  // from k_new / v_new (row t at kn + t kn_ss), not from the cache.
  const T *kn = nullptr, *vn = nullptr;
  int new_begin = INT_MAX;
  int page_size, row0, ch, k_end;
  int sm_at;  // SwizzledRows<kD> offset of this thread's first row and chunk
  int pages[kRows], slots[kRows];  // paged: page and position in it of this thread's rows of the next tile

  __device__ KvTileLoader(const KvParams& p_, int b, int h, int len0, int k_end_, int tid)
      : p(p_), page_size(static_cast<int>(p_.kl.page_size)), row0(tid / kChunks), ch(tid % kChunks), k_end(k_end_),
        sm_at(SwizzledRows<kD>::offset(tid / kChunks, tid % kChunks)) {
    k = static_cast<const T*>(p.k_cache);
    v = static_cast<const T*>(p.v_cache);
    if (p.append_in_attention) {
      kn = static_cast<const T*>(p.k_new) + b * p.kn_sb + h * p.kn_sh;
      vn = static_cast<const T*>(p.v_new) + b * p.vn_sb + h * p.vn_sh;
      new_begin = len0;
    }
    if (page_size > 0) {
      k += h * p.kl.stride_head;
      v += h * p.vl.stride_head;
      table = p.kl.block_table + static_cast<std::int64_t>(b) * p.kl.max_blocks;
    } else {
      k += p.kl.row_offset(b, h);
      v += p.vl.row_offset(b, h);
    }
  }

  // K and V share the block table: one lookup serves both. A thread's rows
  // are kRowStep apart and a page holds at least 16 rows (validated), so
  // each step crosses at most one page boundary: one division a tile, not
  // one a row (a 32-bit division by a run-time value is some 20
  // instructions; per row it nearly doubled the paged kernel's count).
  static_assert(kRowStep <= 16, "one page boundary at most between a thread's rows");
  __device__ void fetch_pages(int n0) {
    if (page_size == 0) return;
    int pos = n0 + row0;
    int pg = pos / page_size;
    int slot = pos - pg * page_size;
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      pages[i] = 0;
      slots[i] = 0;
      if (pos < k_end && pos < new_begin) {
        pages[i] = static_cast<int>(p.kl.clamp_row(table[pg]));
        slots[i] = slot;
      }
      pos += kRowStep;
      slot += kRowStep;
      if (slot >= page_size) {
        slot -= page_size;
        ++pg;
      }
    }
  }

  __device__ void issue(int n0, T* sK, T* sV) const {
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const int r = row0 + i * kRowStep, pos = n0 + r;
      const bool ok = pos < k_end;
      const T *ks = k, *vs = v;
      if (ok) {
        if (pos >= new_begin) {
          ks = kn + (pos - new_begin) * p.kn_ss;
          vs = vn + (pos - new_begin) * p.vn_ss;
        } else if (page_size > 0) {
          ks += pages[i] * p.kl.stride_batch + slots[i] * p.kl.stride_seq;
          vs += pages[i] * p.vl.stride_batch + slots[i] * p.vl.stride_seq;
        } else {
          ks += pos * p.kl.stride_seq;
          vs += pos * p.vl.stride_seq;
        }
      }
      // Rows kRowStep apart share the swizzle phase when kRowStep is a
      // multiple of 8: one offset for all, plus constants.
      const int at = kRowStep % 8 == 0 ? sm_at + i * kRowStep * kD : SwizzledRows<kD>::offset(r, ch);
      ptx::cp_async_16(ptx::smem_addr(sK + at), ks + ch * 8, ok);
      ptx::cp_async_16(ptx::smem_addr(sV + at), vs + ch * 8, ok);
    }
  }
};

// k_new / v_new rows of (sequence b, KV head h) into the cache at L0 + t,
// 16 bytes a thread. No CTA reads these cache rows in this call (the
// loader takes them from k_new / v_new), so the stores need no ordering
// against the other CTAs.
template <class T, int kD, int kThreads>
__device__ __forceinline__ void append_rows(const KvParams& p, int b, int h, int len0, int tid) {
  constexpr int kChunks = kD / 8;
  for (int c = tid; c < p.seqlen_new * kChunks; c += kThreads) {
    const int t = c / kChunks, ch = (c % kChunks) * 8;
    const T* kn = static_cast<const T*>(p.k_new) + b * p.kn_sb + t * p.kn_ss + h * p.kn_sh + ch;
    const T* vn = static_cast<const T*>(p.v_new) + b * p.vn_sb + t * p.vn_ss + h * p.vn_sh + ch;
    *reinterpret_cast<uint4*>(static_cast<T*>(p.k_cache) + p.kl.offset(b, len0 + t, h) + ch) =
        *reinterpret_cast<const uint4*>(kn);
    *reinterpret_cast<uint4*>(static_cast<T*>(p.v_cache) + p.vl.offset(b, len0 + t, h) + ch) =
        *reinterpret_cast<const uint4*>(vn);
  }
}

// The attention of one (sequence b, KV head h, split, row tile). Warps are
// kWarpsN (key slices of a tile) x kWarpsM (16-row slices of the rows): 4 x
// 1 for the decode form, 1 x 4 for the 64-row form (dispatch.h, KvTile).
// Each warp runs its own online softmax over its keys; the warps' states
// are merged through shared memory at the end. Key tiles rotate through
// kStages shared buffers.
template <class T, int kD, int kBlockN, int kWarpsN, int kStages>
__global__ void __launch_bounds__(128, kD <= 128 ? 2 : 1) kv_attention_kernel(const __grid_constant__ KvParams p) {
  constexpr int kWarps = 4, kThreads = kWarps * 32;
  constexpr int kWarpsM = kWarps / kWarpsN;
  constexpr int kBlockM = 16 * kWarpsM;
  constexpr int kKW = kBlockN / kWarpsN;  // keys a warp takes of each tile
  static_assert(kKW % 16 == 0, "a warp's keys are whole k16 steps of P V");
  constexpr int kLd = kD + kPad;
  constexpr bool kQInRegs = kD <= 128;  // at d = 256 the O accumulator (128 registers) leaves no room
  constexpr int kSN = kKW / 2;          // S values a thread holds (16 rows x kKW keys)
  constexpr int kON = kD / 2;           // O values a thread holds (16 rows x kD)

  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  // Q rows padded (kLd), K / V tiles SwizzledRows<kD> (kD a row), each
  // 128-byte aligned as their swizzle needs.
  static_assert(kBlockM * kLd * sizeof(T) % 128 == 0 && kBlockN * kD * sizeof(T) % 128 == 0, "K / V tile alignment");
  T* sK = sQ + kBlockM * kLd;              // K_j in sK + (j % kStages) kBlockN kD
  T* sV = sK + kStages * kBlockN * kD;     // V_j likewise
  float* sStat = reinterpret_cast<float*>(sV + kStages * kBlockN * kD);  // [kWarpsN][kBlockM][max, sum]
  // After the sweep the K / V buffers hold each warp's scaled O rows.
  float* sO = reinterpret_cast<float*>(sK);  // [kWarpsN][kBlockM][kD]
  static_assert(kStages >= 2, "one tile computed on while the next lands");
  static_assert(kWarpsN * kBlockM * kD * 4 <= 2 * kStages * kBlockN * kD * static_cast<int>(sizeof(T)),
                "the O merge buffer fits in the K / V buffers");

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / kWarpsN, wn = warp % kWarpsN;
  const int m_tiles = (p.rows + kBlockM - 1) / kBlockM;
  int x = blockIdx.x;
  const int split = x % p.splits;
  x /= p.splits;
  const int mt = x % m_tiles, h = x / m_tiles, b = blockIdx.y;
  const int m0 = mt * kBlockM;

  const int len0 = kv_len0(p, b), len = len0 + p.seqlen_new;
  const int sq = p.seqlen_q;
  if (p.append_in_attention && split == 0 && mt == 0) append_rows<T, kD, kThreads>(p, b, h, len0, tid);
  // The split's keys: the same cut as the CPU backend, over the keys some
  // query row sees.
  const KeyChunk chunk = kv_split_chunk(p.window.first_key(0, sq, len), p.window.last_key(sq - 1, sq, len), split,
                                        p.splits);
  const int k_begin = static_cast<int>(chunk.begin), k_end = static_cast<int>(chunk.end);
  const int n_tiles = (k_end - k_begin + kBlockN - 1) / kBlockN;

  // Row r of the group is query head h group + r / sq, token r % sq.
  auto q_row = [&](int r) -> const T* {
    const int g = r / sq, i = r % sq;
    return static_cast<const T*>(p.q) + b * p.q_sb + i * p.q_ss + (static_cast<std::int64_t>(h) * p.group + g) * p.q_sh;
  };
  // Keys outside [k_begin, k_end) (past L, before or after the split) are
  // zero rows never read (KvTileLoader): a masked key must not contribute
  // even as 0 x NaN.
  KvTileLoader<T, kD, kBlockN, kThreads> loader(p, b, h, len0, k_end, tid);
  auto issue_tile = [&](int t) {
    const int buf = t % kStages;
    loader.issue(k_begin + t * kBlockN, sK + buf * kBlockN * kD, sV + buf * kBlockN * kD);
    loader.fetch_pages(k_begin + (t + 1) * kBlockN);
  };

  // This thread's two rows (halves) and the keys each sees in this split.
  int lo[2], hi[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = m0 + wm * 16 + tile::lane_row(lane, half);
    lo[half] = 0;
    hi[half] = -1;
    if (r < p.rows) {
      const int i = r % sq;
      lo[half] = max(static_cast<int>(p.window.first_key(i, sq, len)), k_begin);
      hi[half] = min(static_cast<int>(p.window.last_key(i, sq, len)), k_end - 1);
    }
  }

  float o[kON];
#pragma unroll
  for (int c = 0; c < kON; ++c) o[c] = 0.f;
  tile::OnlineSoftmax sm;
  // With a positive scale the max of the raw scores is that of the scaled
  // ones, so the scale goes into the exponent's FFMA; a negative or zero
  // scale would flip the order, and then the scores are scaled first.
  const bool prescale = !(p.scale_log2 > 0.f);
  const float post_scale = prescale ? 1.f : p.scale_log2;

  // Prologue: Q with tile 0, then tiles 1 .. kStages - 2, one commit group
  // each (empty past the last tile, so that group g is always tile g).
  if (n_tiles > 0) {
    const int rows_here = min(kBlockM, p.rows - m0);
    load_rows<kBlockM, kD, kThreads>(sQ, [&](int r) -> const T* { return r < rows_here ? q_row(m0 + r) : nullptr; },
                                     static_cast<const T*>(p.q), tid);
    loader.fetch_pages(k_begin);
#pragma unroll
    for (int t = 0; t < kStages - 1; ++t) {
      if (t < n_tiles) issue_tile(t);
      ptx::cp_async_commit();
    }
  }
  const SwizzledB<kD, T, false> k_reader(lane);
  const SwizzledB<kD, T, true> v_reader(lane);
  std::uint32_t qf[kQInRegs ? kD / 16 : 1][4];
  const T* sQw = sQ + wm * 16 * kLd;  // this warp's 16 rows

  for (int step = 0; step < n_tiles; ++step) {
    const int n0 = k_begin + step * kBlockN;
    // Groups 0 .. step + kStages - 2 are committed: at most kStages - 2
    // pending means tile `step` (and Q) landed for this thread.
    ptx::cp_async_wait<kStages - 2>();
    // Every thread's copies of tile `step` are visible, and every warp is
    // done with tile step - 1, whose buffer the next copies refill.
    __syncthreads();
    if (step + kStages - 1 < n_tiles) issue_tile(step + kStages - 1);
    ptx::cp_async_commit();
    const int buf = step % kStages;
    // This warp's keys: rows wn kKW.. of the tile (a multiple of 8, so the
    // swizzle's row phase is the tile's).
    const std::uint32_t sKj = ptx::smem_addr(sK + buf * kBlockN * kD + wn * kKW * kD);
    const std::uint32_t sVj = ptx::smem_addr(sV + buf * kBlockN * kD + wn * kKW * kD);
    if constexpr (kQInRegs) {
      if (step == 0) {
#pragma unroll
        for (int kk = 0; kk < kD / 16; ++kk) lds_a(qf[kk], sQw + kk * 16, kLd, lane);
      }
    }

    // S = Q K^T over this warp's kKW keys.
    float s[kSN];
#pragma unroll
    for (int c = 0; c < kSN; ++c) s[c] = 0.f;
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
      std::uint32_t a[4];
      if constexpr (kQInRegs) {
#pragma unroll
        for (int i = 0; i < 4; ++i) a[i] = qf[kk][i];
      } else {
        lds_a(a, sQw + kk * 16, kLd, lane);
      }
#pragma unroll
      for (int j = 0; j < kKW / 16; ++j) {
        std::uint32_t bk[4];
        lds_b_swz<kD>(bk, sKj, k_reader, j * 16, kk * 16);
        ptx::mma_16816<T>(*reinterpret_cast<float(*)[4]>(&s[8 * j]), a, bk[0], bk[1]);
        ptx::mma_16816<T>(*reinterpret_cast<float(*)[4]>(&s[8 * j + 4]), a, bk[2], bk[3]);
      }
    }

    if (prescale) tile::scale(s, p.scale_log2);
    const int col0 = n0 + wn * kKW + tile::lane_col(lane);
#pragma unroll
    for (int half = 0; half < 2; ++half) tile::mask_outside(s, half, col0, lo[half], hi[half]);
    float corr[2];
    sm.update(s, post_scale, corr);
    tile::rescale_rows(o, corr);

    // O += P V over the same keys: P's accumulator layout is the A layout.
    std::uint32_t pa[kSN / 8][4];
    tile::pack_a<T>(pa, s);
#pragma unroll
    for (int kk = 0; kk < kKW / 16; ++kk)
#pragma unroll
      for (int j = 0; j < kD / 16; ++j) {
        std::uint32_t bv[4];
        lds_b_trans_swz<kD>(bv, sVj, v_reader, kk * 16, j * 16);
        ptx::mma_16816<T>(*reinterpret_cast<float(*)[4]>(&o[8 * j]), pa[kk], bv[0], bv[1]);
        ptx::mma_16816<T>(*reinterpret_cast<float(*)[4]>(&o[8 * j + 4]), pa[kk], bv[2], bv[3]);
      }
  }
  // The groups committed past the last tile are empty: nothing is still
  // copied into the buffers that sO reuses below.
  // Only this CTA's epilogue is left: the combine kernel (launched as a
  // programmatic dependent when there are splits) may be scheduled now; it
  // waits for this grid's completion before it reads a partial.
  ptx::griddep_launch_dependents();

  // Merge the warps' states of each row: M = max of the maxima (log2 units),
  // sum = sum_w l_w 2^(m_w - M); warp w's O is scaled by 2^(m_w - M) / sum.
  float total[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    total[half] = sm.total_sum(half);
    const int lr = wm * 16 + tile::lane_row(lane, half);
    if ((lane & 3) == 0) {
      sStat[(wn * kBlockM + lr) * 2] = sm.max_[half];
      sStat[(wn * kBlockM + lr) * 2 + 1] = total[half];
    }
  }
  __syncthreads();
  // Merged max and sum of local row lr; sum 0: no visible key.
  auto merged = [&](int lr, float& mx, float& sum) {
    mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarpsN; ++w) mx = fmaxf(mx, sStat[(w * kBlockM + lr) * 2]);
    sum = 0.f;
    if (mx == -INFINITY) return;
#pragma unroll
    for (int w = 0; w < kWarpsN; ++w) {
      const float mw = sStat[(w * kBlockM + lr) * 2];
      if (mw != -INFINITY) sum += sStat[(w * kBlockM + lr) * 2 + 1] * ptx::exp2_approx(mw - mx);
    }
  };
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int lr = wm * 16 + tile::lane_row(lane, half);
    float mx, sum;
    merged(lr, mx, sum);
    // A NaN sum stays NaN in O (a NaN the row attends to).
    const float f = (sm.max_[half] == -INFINITY || sum == 0.f) ? 0.f : ptx::exp2_approx(sm.max_[half] - mx) / sum;
    float* row = sO + (wn * kBlockM + lr) * kD + tile::lane_col(lane);
#pragma unroll
    for (int tt = 0; tt < kD / 8; ++tt)
      *reinterpret_cast<float2*>(row + 8 * tt) =
          make_float2(o[tile::acc_index(tt, half, 0)] * f, o[tile::acc_index(tt, half, 1)] * f);
  }
  __syncthreads();

  // Sum the warps' rows and store 8 channels a thread: o (T) with one
  // split, else the fp32 partial of this split.
  constexpr int kChunks = kD / 8;
  for (int c = tid; c < kBlockM * kChunks; c += kThreads) {
    const int lr = c / kChunks, ch = c % kChunks, r = m0 + lr;
    if (r >= p.rows) continue;
    float v[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = 0.f;
#pragma unroll
    for (int w = 0; w < kWarpsN; ++w) {
      const float* src = sO + (w * kBlockM + lr) * kD + ch * 8;
#pragma unroll
      for (int e = 0; e < 8; ++e) v[e] += src[e];
    }
    float lse = 0.f;
    if (ch == 0) {
      float mx, sum;
      merged(lr, mx, sum);
      lse = sum == 0.f ? -INFINITY : mx * 0.69314718055994531f + logf(sum);
    }
    const int g = r / sq, i = r % sq, head = h * p.group + g;
    if (p.splits == 1) {
      uint4 packed;
      packed.x = pack2<T>(v[0], v[1]);
      packed.y = pack2<T>(v[2], v[3]);
      packed.z = pack2<T>(v[4], v[5]);
      packed.w = pack2<T>(v[6], v[7]);
      *reinterpret_cast<uint4*>(static_cast<T*>(p.o) + b * p.o_sb + i * p.o_ss + head * p.o_sh + ch * 8) = packed;
      if (ch == 0 && p.lse != nullptr) p.lse[(static_cast<std::int64_t>(b) * p.heads_q + head) * sq + i] = lse;
    } else {
      const std::int64_t prow = ((static_cast<std::int64_t>(b) * p.heads_k + h) * p.splits + split) * p.rows + r;
      float4* dst = reinterpret_cast<float4*>(p.part_o + prow * kD + ch * 8);
      dst[0] = make_float4(v[0], v[1], v[2], v[3]);
      dst[1] = make_float4(v[4], v[5], v[6], v[7]);
      if (ch == 0) p.part_lse[prow] = lse;
    }
  }
}

// o = sum_s w_s O_s / sum_s w_s, w_s = exp(lse_s - max lse), one CTA of
// kCombineWarps warps per output row: warp w sums splits w, w + kWarps, ...
// and the warps' sums meet in shared memory. The partial rows are read
// from L2 with a latency each; a warp's loads of its splits are
// independent, so they overlap, where one warp walking all splits in turn
// (up to a hundred) took over 10 us at batch 1. Splits with no key (lse
// -inf) weigh nothing; a row no split saw gets O = 0, LSE = -inf.
inline constexpr int kCombineWarps = 4;

template <class T, int kD>
__global__ void __launch_bounds__(kCombineWarps * 32) kv_combine_kernel(const __grid_constant__ KvParams p) {
  constexpr int kPerLane = kD / 32;  // contiguous channels lane * kPerLane ..
  static_assert(kPerLane * 32 == kD && (kPerLane == 2 || kPerLane == 4 || kPerLane == 8), "head_dim 64, 128 or 256");
  __shared__ float part[kCombineWarps - 1][kD];
  const std::int64_t idx = blockIdx.x;  // (b, head, i) of the output row
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int sq = p.seqlen_q;
  const int i = static_cast<int>(idx % sq), head = static_cast<int>((idx / sq) % p.heads_q);
  const int b = static_cast<int>(idx / (static_cast<std::int64_t>(sq) * p.heads_q));
  const int h = head / p.group, r = (head % p.group) * sq + i;
  const std::int64_t row0 = (static_cast<std::int64_t>(b) * p.heads_k + h) * p.splits * p.rows + r;
  // Launched as a programmatic dependent of the attention kernel: its
  // partials are complete and visible only after this wait.
  ptx::griddep_wait();
  auto lse_of = [&](int s) { return p.part_lse[row0 + static_cast<std::int64_t>(s) * p.rows]; };

  float mx = -INFINITY;
  for (int s = lane; s < p.splits; s += 32) mx = fmaxf(mx, lse_of(s));
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
  float sum = 0.f;
  if (mx != -INFINITY)
    for (int s = lane; s < p.splits; s += 32) {
      const float ls = lse_of(s);
      if (ls != -INFINITY) sum += expf(ls - mx);
    }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);

  float acc[kPerLane];
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) acc[k] = 0.f;
  if (mx != -INFINITY) {
#pragma unroll 4
    for (int s = warp; s < p.splits; s += kCombineWarps) {
      const float ls = lse_of(s);
      const float w = ls == -INFINITY ? 0.f : expf(ls - mx) / sum;
      const float* po = p.part_o + (row0 + static_cast<std::int64_t>(s) * p.rows) * kD + lane * kPerLane;
      if constexpr (kPerLane == 2) {
        const float2 x = *reinterpret_cast<const float2*>(po);
        acc[0] += w * x.x;
        acc[1] += w * x.y;
      } else {
#pragma unroll
        for (int q = 0; q < kPerLane / 4; ++q) {
          const float4 x = reinterpret_cast<const float4*>(po)[q];
          acc[4 * q] += w * x.x;
          acc[4 * q + 1] += w * x.y;
          acc[4 * q + 2] += w * x.z;
          acc[4 * q + 3] += w * x.w;
        }
      }
    }
  }
  if (warp > 0)
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) part[warp - 1][lane * kPerLane + k] = acc[k];
  __syncthreads();
  if (warp > 0) return;
#pragma unroll
  for (int w = 0; w < kCombineWarps - 1; ++w)
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) acc[k] += part[w][lane * kPerLane + k];
  T* out = static_cast<T*>(p.o) + b * p.o_sb + i * p.o_ss + head * p.o_sh + lane * kPerLane;
#pragma unroll
  for (int k = 0; k < kPerLane; k += 2) *reinterpret_cast<std::uint32_t*>(out + k) = pack2<T>(acc[k], acc[k + 1]);
  if (lane == 0 && p.lse != nullptr) p.lse[idx] = mx == -INFINITY ? -INFINITY : mx + logf(sum);
}

// The attention kernel of a problem's form (decode: rows <= 16) and its
// shared memory.
template <class T, int kD, bool kDecode>
struct KvForm {
  static constexpr int kWarpsN = kDecode ? 4 : 1;
  static constexpr int kBlockN = kDecode ? 64 : kv_tile(kD).block_n;
  static constexpr int kStages = kDecode ? kv_tile(kD).decode_stages : 2;
  static constexpr int kBlockM = 16 * (4 / kWarpsN);
  static constexpr int kSmem = (kBlockM * (kD + kPad) + 2 * kStages * kBlockN * kD) * static_cast<int>(sizeof(T)) +
                               kWarpsN * kBlockM * 2 * static_cast<int>(sizeof(float));
  static auto kernel() { return kv_attention_kernel<T, kD, kBlockN, kWarpsN, kStages>; }
};

template <class T, int kD, bool kDecode>
void launch_kv_attention(const KvParams& p, cudaStream_t stream) {
  using F = KvForm<T, kD, kDecode>;
  constexpr int kBlockM = F::kBlockM;
  auto kernel = F::kernel();
  const int smem = F::kSmem;
  set_max_dynamic_smem(kernel, smem, "cudaFuncSetAttribute(kvcache attention)");
  const int m_tiles = (p.rows + kBlockM - 1) / kBlockM;
  const dim3 grid(static_cast<unsigned>(p.heads_k * m_tiles * p.splits), static_cast<unsigned>(p.batch));
  kernel<<<grid, 128, smem, stream>>>(p);
  check(cudaGetLastError(), "kvcache attention kernel launch");
}

// Whether this device runs the combine kernel's sm_90+ code, whose
// griddep_wait is real: only then may its launch ask for programmatic
// serialization (the sm_80 code of a build without sm_90a would not
// wait). Cached per device.
template <class T, int kD>
bool combine_waits_for_grid() {
  struct Tag {};
  return cached_per_device<Tag>([](int) {
           cudaFuncAttributes attrs = {};
           check(cudaFuncGetAttributes(&attrs, kv_combine_kernel<T, kD>), "cudaFuncGetAttributes(kvcache combine)");
           return attrs.binaryVersion >= 90 ? 2 : 1;  // 1: no, 2: yes
         }) == 2;
}

template <class T, int kD>
void launch_kvcache(const KvParams& params, cudaStream_t stream) {
  static_assert(kv_tile(kD).head_dim == kD, "head_dim missing from kKvTiles");
  if (params.batch == 0) return;
  KvParams p = params;
  // Without a rotary (and with queries to attend) the attention kernel
  // appends; the append kernel runs only for the rotary's rotations.
  p.append_in_attention = p.k_new != nullptr && p.rotary_dim == 0 && p.seqlen_q > 0 && p.seqlen_new > 0;
  const std::int64_t kv_items =
      p.k_new != nullptr && !p.append_in_attention ? static_cast<std::int64_t>(p.batch) * p.seqlen_new * p.heads_k : 0;
  const std::int64_t q_items = p.rotary_dim > 0 ? static_cast<std::int64_t>(p.batch) * p.seqlen_q * p.heads_q : 0;
  if (kv_items + q_items > 0) {
    kv_append_kernel<T><<<static_cast<unsigned>(kv_items + q_items), kD / 2, 0, stream>>>(p);
    check(cudaGetLastError(), "kvcache append kernel launch");
  }
  if (p.seqlen_q == 0) return;
  if (p.rows <= 16) launch_kv_attention<T, kD, true>(p, stream);
  else launch_kv_attention<T, kD, false>(p, stream);
  if (p.splits > 1) {
    const std::int64_t rows = static_cast<std::int64_t>(p.batch) * p.heads_q * p.seqlen_q;
    // On sm_90+ a programmatic dependent of the attention kernel, so that
    // its launch overlaps that kernel's last CTAs (a decode call at batch
    // 1 is some 20 us, of which the gap between the two kernels was a few).
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(static_cast<unsigned>(rows));
    cfg.blockDim = dim3(kCombineWarps * 32);
    cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    if (combine_waits_for_grid<T, kD>()) {
      cfg.attrs = attr;
      cfg.numAttrs = 1;
    }
    check(cudaLaunchKernelEx(&cfg, kv_combine_kernel<T, kD>, p), "kvcache combine kernel launch");
  }
}

template <class T, int kD>
int kvcache_ctas_per_sm(int rows) {
  // The occupancy query costs a decode call's host path several
  // microseconds; its answer depends only on the kernel and the device.
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cached[2][kMaxDevices];  // [decode form][device], 0: not asked yet
  const bool decode = rows <= 16;
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  if (dev < kMaxDevices) {
    const int hit = cached[decode][dev].load(std::memory_order_relaxed);
    if (hit != 0) return hit;
  }
  const auto resident = [](auto kernel, int smem) {
    set_max_dynamic_smem(kernel, smem, "cudaFuncSetAttribute(kvcache attention)");
    int n = 0;
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, 128, smem),
          "cudaOccupancyMaxActiveBlocksPerMultiprocessor(kvcache attention)");
    return n < 1 ? 1 : n;
  };
  const int n = decode ? resident(KvForm<T, kD, true>::kernel(), KvForm<T, kD, true>::kSmem)
                       : resident(KvForm<T, kD, false>::kernel(), KvForm<T, kD, false>::kSmem);
  if (dev < kMaxDevices) cached[decode][dev].store(n, std::memory_order_relaxed);
  return n;
}

}  // namespace flashattn::detail::sm80
