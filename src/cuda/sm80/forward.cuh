// FlashAttention-2 forward on tensor cores (mma.sync.m16n8k16), sm_80+.
//
// One CTA computes O and LSE for a tile of kBlockM query rows of one (batch,
// head); each warp owns kMT 16-row mma tiles of them. The CTA sweeps the key tiles the
// mask allows, keeping for each row the running max m and sum l of the
// online softmax in registers, and O in fp32 registers; Q stays in registers
// or in shared memory. K has two shared buffers and V one, so that two
// barriers a key tile suffice and both next loads start at the top:
//   wait K_j | barrier | issue V_j, K_j+1 | S = Q K_j^T | softmax |
//   wait V_j | barrier | O += P V_j
#pragma once

#include <cmath>

#include "../dispatch.h"
#include "../exact_rows.cuh"
#include "tile.cuh"

namespace flashattn::detail::sm80 {

template <class T, int kD, int kBlockM, int kBlockN, int kWarps, int kCtasPerSm>
__global__ void __launch_bounds__(kWarps * 32, kCtasPerSm) forward_kernel(const __grid_constant__ Params p) {
  // Each warp owns kMT row tiles of 16 rows: every K/V fragment read from
  // shared memory feeds kMT mma's, which is what keeps ldmatrix bandwidth
  // below the tensor cores' rate.
  constexpr int kMT = kBlockM / (16 * kWarps);
  static_assert(kMT * 16 * kWarps == kBlockM, "query tile = warps x 16-row tiles");
  constexpr int kThreads = kWarps * 32;
  constexpr int kLd = kD + kPad;
  constexpr bool kQInRegs = kMT * kD <= 128;
  constexpr int kSN = kBlockN / 8;  // n8 tiles of S per row tile
  constexpr int kON = kD / 8;       // n8 tiles of O per row tile

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);
  T* sK = sQ + kBlockM * kLd;  // two buffers: K_j in buffer j % 2
  auto k_buffer = [&](int j) { return sK + (j & 1) * kBlockN * kLd; };
  T* sV = sQ + (kBlockM + 2 * kBlockN) * kLd;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int b = blockIdx.z, h = blockIdx.y, m0 = blockIdx.x * kBlockM;
  const SeqInfo seq = resolve_seq(p, b);
  if (m0 >= seq.sq) return;
  const int hk = h / p.group;
  const T* gQ = static_cast<const T*>(p.q) + b * p.q_sb + seq.q_start * p.q_ss + h * p.q_sh + m0 * p.q_ss;
  const T* gK = static_cast<const T*>(p.k) + b * p.k_sb + seq.k_start * p.k_ss + hk * p.k_sh;
  const T* gV = static_cast<const T*>(p.v) + b * p.v_sb + seq.k_start * p.v_ss + hk * p.v_sh;
  T* gO = static_cast<T*>(p.out) + b * p.o_sb + seq.q_start * p.o_ss + h * p.o_sh + m0 * p.o_ss;
  const int rows_valid = seq.sq - m0;

  // First row of this warp's row tiles; a thread holds rows r and r + 8 of
  // each (the mma accumulator layout).
  const int warp_row = warp * 16 * kMT;
  const int col_in_tile = 2 * (lane & 3);
  auto row_of = [&](int mi, int half) { return warp_row + mi * 16 + (lane >> 2) + 8 * half; };

  const KeyTiles<kBlockM, kBlockN> tiles(p, b, h, m0, seq);
  const int n_steps = tiles.count();

  float o[kMT][kON][4];
  float row_max[kMT][2], row_sum[kMT][2];  // max in log2 units (scores * scale * log2 e)
#pragma unroll
  for (int mi = 0; mi < kMT; ++mi) {
    zero(o[mi]);
    row_max[mi][0] = row_max[mi][1] = -INFINITY;
    row_sum[mi][0] = row_sum[mi][1] = 0.f;
  }

  if (n_steps > 0) {
    load_tile<kBlockM, kD, kThreads>(sQ, gQ, p.q_ss, rows_valid, tid);
    const int n_first = tiles.at(0).n0;
    load_tile<kBlockN, kD, kThreads>(k_buffer(0), gK + n_first * p.k_ss, p.k_ss, seq.sk - n_first, tid);
    ptx::cp_async_commit();
  }
  std::uint32_t qf[kQInRegs ? kMT : 1][kQInRegs ? kD / 16 : 1][4];
  const bool prescale = !(p.scale_log2 > 0.f);
  const float post_scale = prescale ? 1.f : p.scale_log2;
  const std::uint32_t bh = dropout_bh(p, b, h);

  for (int step = 0; step < n_steps; ++step) {
    const KeyTile cur = tiles.at(step);
    ptx::cp_async_wait<0>();
    // K_j landed for all threads; every warp is done reading V_j-1 and K_j-1,
    // whose buffers take V_j and K_j+1 now.
    __syncthreads();
    const T* sKj = k_buffer(step);
    if constexpr (kQInRegs) {
      if (step == 0) {
#pragma unroll
        for (int mi = 0; mi < kMT; ++mi)
#pragma unroll
          for (int kk = 0; kk < kD / 16; ++kk) lds_a(qf[mi][kk], sQ + (warp_row + mi * 16) * kLd + kk * 16, kLd, lane);
      }
    }
    load_tile<kBlockN, kD, kThreads>(sV, gV + cur.n0 * p.v_ss, p.v_ss, seq.sk - cur.n0, tid);
    ptx::cp_async_commit();
    const bool has_next = step + 1 < n_steps;
    if (has_next) {
      const int n_next = tiles.at(step + 1).n0;
      load_tile<kBlockN, kD, kThreads>(k_buffer(step + 1), gK + n_next * p.k_ss, p.k_ss, seq.sk - n_next, tid);
      ptx::cp_async_commit();
    }

    float s[kMT][kSN][4];
#pragma unroll
    for (int mi = 0; mi < kMT; ++mi) zero(s[mi]);
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
      std::uint32_t a[kMT][4];
#pragma unroll
      for (int mi = 0; mi < kMT; ++mi) {
        if constexpr (kQInRegs) {
#pragma unroll
          for (int i = 0; i < 4; ++i) a[mi][i] = qf[mi][kk][i];
        } else {
          lds_a(a[mi], sQ + (warp_row + mi * 16) * kLd + kk * 16, kLd, lane);
        }
      }
#pragma unroll
      for (int j = 0; j < kBlockN / 16; ++j) {
        std::uint32_t bk[4];
        lds_b(bk, sKj + j * 16 * kLd + kk * 16, kLd, lane);
#pragma unroll
        for (int mi = 0; mi < kMT; ++mi) {
          ptx::mma_16816<T>(s[mi][2 * j], a[mi], bk[0], bk[1]);
          ptx::mma_16816<T>(s[mi][2 * j + 1], a[mi], bk[2], bk[3]);
        }
      }
    }

#pragma unroll
    for (int mi = 0; mi < kMT; ++mi) {
      // With a positive scale the order of scores is that of the scaled
      // ones: mask and take the max on raw scores and fold the scale into
      // the exponent's FFMA. A negative (or zero) scale would flip the
      // order, so then scores are scaled first (rare; one FMUL each).
      if (prescale) {
#pragma unroll
        for (int t = 0; t < kSN; ++t)
#pragma unroll
          for (int c = 0; c < 4; ++c) s[mi][t][c] *= p.scale_log2;
      }
      if (cur.need_mask) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int i = m0 + row_of(mi, half);
          const std::int64_t lo = cur.window ? p.window.first_key(i, seq.sq, seq.sk) : 0;
          const std::int64_t hi = cur.window ? p.window.last_key(i, seq.sq, seq.sk) : seq.sk - 1;
#pragma unroll
          for (int t = 0; t < kSN; ++t)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int j = cur.n0 + t * 8 + col_in_tile + e;
              if (j < lo || j > hi) s[mi][t][2 * half + e] = -INFINITY;
            }
        }
      }

      // Online softmax: rescale the running O and l by exp2(m_old - m_new).
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        float mx = -INFINITY;
#pragma unroll
        for (int t = 0; t < kSN; ++t) mx = fmaxf(mx, fmaxf(s[mi][t][2 * half], s[mi][t][2 * half + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        mx *= post_scale;  // to log2 units (post_scale > 0, so -inf stays -inf)
        // A row with nothing visible yet keeps max -inf; subtract 0 instead
        // so exp2(-inf - base) is 0 rather than NaN.
        mx = fmaxf(mx, row_max[mi][half]);
        const float base = mx == -INFINITY ? 0.f : mx;
        const float corr = ptx::exp2_approx(row_max[mi][half] - base);
        row_max[mi][half] = mx;
        row_sum[mi][half] *= corr;
#pragma unroll
        for (int t = 0; t < kON; ++t) {
          o[mi][t][2 * half] *= corr;
          o[mi][t][2 * half + 1] *= corr;
        }
        float sum = 0.f;
#pragma unroll
        for (int t = 0; t < kSN; ++t)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float pe = ptx::exp2_approx(fmaf(s[mi][t][2 * half + e], post_scale, -base));
            s[mi][t][2 * half + e] = pe;
            sum += pe;
          }
        row_sum[mi][half] += sum;  // l is the un-dropped sum: LSE ignores dropout
      }

      if (p.has_dropout) {
        // Keep bits first, in a rolled loop: unrolling the Philox calls
        // next to the live S and O fragments costs registers the matmuls need.
        // One call covers this thread's 8 elements of a 16-column slice (two
        // 8-column tiles, rows r and r + 8; philox.h: word 2 half + (t & 1),
        // 16-bit half e; key tiles and the warp's rows start at multiples of 16).
        static_assert(kSN * 4 <= 64, "keep bits must fit one 64-bit word");
        static_assert(kSN % 2 == 0, "key tiles of whole 16-column Philox groups");
        std::uint64_t keep_bits = 0;  // bit 4t + 2 half + e
        const std::uint32_t pair = DropoutStream::row_pair_of(static_cast<std::uint32_t>(m0 + row_of(mi, 0)));
#pragma unroll 1
        for (int tp = 0; tp < kSN / 2; ++tp) {
          const std::uint32_t call =
              DropoutStream::call_of(static_cast<std::uint32_t>(cur.n0 + tp * 16 + col_in_tile));
          const Philox4 r = p.dropout.words(bh, pair, call);
          const int b0 = 8 * tp;  // bit of (t = 2tp, half 0, e 0)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            keep_bits |= static_cast<std::uint64_t>(p.dropout.keep(r.x, e)) << (b0 + e);      // t 2tp, half 0
            keep_bits |= static_cast<std::uint64_t>(p.dropout.keep(r.y, e)) << (b0 + 4 + e);  // t 2tp+1, half 0
            keep_bits |= static_cast<std::uint64_t>(p.dropout.keep(r.z, e)) << (b0 + 2 + e);  // t 2tp, half 1
            keep_bits |= static_cast<std::uint64_t>(p.dropout.keep(r.w, e)) << (b0 + 6 + e);  // t 2tp+1, half 1
          }
        }
#pragma unroll
        for (int t = 0; t < kSN; ++t)
#pragma unroll
          for (int c = 0; c < 4; ++c)
            if (!((keep_bits >> (4 * t + c)) & 1u)) s[mi][t][c] = 0.f;
      }
    }

    if (has_next) ptx::cp_async_wait<1>();  // V_j's group, not K_j+1's
    else ptx::cp_async_wait<0>();
    __syncthreads();  // V_j landed for all threads

    // O += P V_j: the S accumulator layout of two n8 tiles is exactly the
    // A-fragment layout of one k16 slice, so P never leaves registers.
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      std::uint32_t a[kMT][4];
#pragma unroll
      for (int mi = 0; mi < kMT; ++mi) {
        a[mi][0] = pack2<T>(s[mi][2 * kk][0], s[mi][2 * kk][1]);
        a[mi][1] = pack2<T>(s[mi][2 * kk][2], s[mi][2 * kk][3]);
        a[mi][2] = pack2<T>(s[mi][2 * kk + 1][0], s[mi][2 * kk + 1][1]);
        a[mi][3] = pack2<T>(s[mi][2 * kk + 1][2], s[mi][2 * kk + 1][3]);
      }
#pragma unroll
      for (int j = 0; j < kD / 16; ++j) {
        std::uint32_t bv[4];
        lds_b_trans(bv, sV + kk * 16 * kLd + j * 16, kLd, lane);
#pragma unroll
        for (int mi = 0; mi < kMT; ++mi) {
          ptx::mma_16816<T>(o[mi][2 * j], a[mi], bv[0], bv[1]);
          ptx::mma_16816<T>(o[mi][2 * j + 1], a[mi], bv[2], bv[3]);
        }
      }
    }
  }

  // Epilogue: O / l (times 1/(1-p) for dropout), LSE = ln(sum exp(scaled)).
  // O is staged through this warp's own rows of sQ (only this warp read
  // them), then stored in 16-byte chunks so that the global writes coalesce.
  __syncwarp();
#pragma unroll
  for (int mi = 0; mi < kMT; ++mi) {
    bool bad[2];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float l = row_sum[mi][half];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      // l == 0: no visible key (O = 0, LSE = -inf). A NaN l (a NaN score
      // the row attends to) stays NaN in O and LSE.
      const float inv = l == 0.f ? 0.f : p.keep_scale / l;
      const int r = row_of(mi, half);
      if (p.lse != nullptr && (lane & 3) == 0 && r < rows_valid)
        p.lse[q_row(p, seq, b, h, m0 + r)] =
            l == 0.f ? -INFINITY : row_max[mi][half] * 0.69314718055994531f + logf(l);
      float sum = 0.f;
#pragma unroll
      for (int t = 0; t < kON; ++t) {
        const float o0 = o[mi][t][2 * half] * inv, o1 = o[mi][t][2 * half + 1] * inv;
        sum += o0 + o1;
        *reinterpret_cast<std::uint32_t*>(sQ + r * kLd + t * 8 + col_in_tile) = pack2<T>(o0, o1);
      }
      bad[half] = r < rows_valid && exact::not_finite(sum);
    }
    // The NaN rule's slow path (../exact_rows.cuh): a row that is not
    // finite is recomputed into the staging before it is stored.
    exact::for_flagged_rows(bad, [&](int rw) {
      const int r = warp_row + mi * 16 + rw;
      float ov[exact::kCols<kD>], lse;
      exact::forward_row<T, kD>(p, seq, b, h, m0 + r, lane, ov, lse);
#pragma unroll
      for (int u = 0; u < exact::kCols<kD>; ++u)
        if (lane + 32 * u < kD) sQ[r * kLd + lane + 32 * u] = from_float<T>(ov[u]);
      if (p.lse != nullptr && lane == 0) p.lse[q_row(p, seq, b, h, m0 + r)] = lse;
    });
  }
  __syncthreads();
  constexpr int kChunks = kD / 8;
  for (int c = tid; c < kBlockM * kChunks; c += kThreads) {
    const int r = c / kChunks, ch = c % kChunks;
    if (r < rows_valid)
      *reinterpret_cast<uint4*>(gO + r * p.o_ss + ch * 8) = *reinterpret_cast<const uint4*>(sQ + r * kLd + ch * 8);
  }
}

template <class T, int kD>
void launch_forward(const Params& p, cudaStream_t stream) {
  constexpr TileConfig c = sm80_tiles(kD);
  static_assert(c.head_dim == kD, "head_dim missing from the dispatch table");
  auto kernel = forward_kernel<T, kD, c.fwd_block_m, c.fwd_block_n, c.fwd_warps, c.fwd_ctas_per_sm>;
  const int smem = (c.fwd_block_m + 3 * c.fwd_block_n) * (kD + kPad) * static_cast<int>(sizeof(T));
  set_max_dynamic_smem(kernel, smem, "cudaFuncSetAttribute(forward)");
  const dim3 grid((p.seqlen_q + c.fwd_block_m - 1) / c.fwd_block_m, p.heads_q, p.batch);
  kernel<<<grid, c.fwd_warps * 32, smem, stream>>>(p);
  check(cudaGetLastError(), "forward kernel launch");
}

}  // namespace flashattn::detail::sm80
