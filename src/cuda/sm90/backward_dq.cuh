// The Hopper backward's separate dQ pass (docs/hopper.md, "The dQ pass"),
// for the head dims whose kSm90BwdTiles row sets dq_pass (d = 256).
//
// Why a second sweep: the one-sweep backward (backward.cuh) owns 64 keys a
// CTA at d = 256 and adds each query tile's dQ into fp32 scratch with
// red.global.add, s_k / 64 times per query row. Those reductions bound it
// (H100, 8K: 805M L2 reduction sectors a call, the crossbar into L2 84%
// busy; 291 TFLOPS, where the same sweep without dQ ran 679 and with half
// the reductions 443). Here a CTA owns 64 queries instead and sweeps the
// key tiles, so dQ stays in registers and is written once, in T, with no
// atomics and no scratch: S and dP are computed a second time (7 GEMMs
// instead of 5), which the tensor cores, at 30% busy in the one-sweep
// kernel, can afford. It is deterministic.
//
// dq_kernel: a CTA = 64 queries (kBlockM) of one (batch, query head); it
// sweeps the 64-key tiles (kBlockN) its rows can see (KeyTiles, as
// the forward). Three warpgroups:
//  - warpgroup 0, the producer. Warp 0: lane 0 copies Q and dO once, then
//    K_j and V_j of every key tile into a ring of kStages stages; the 32
//    lanes load the tile's LSE and D rows (ordinary loads, as in the
//    one-sweep kernel) once.
//  - warpgroups 1 and 2, the consumers, in lockstep (named barrier 1 once a
//    step). Consumer w takes keys 32w..32w+31 of each tile for S and dP
//    and head_dim columns 128w..128w+127 of dQ:
//      S_w  = Q K_j[32w..]^T      wgmma SS, 64 queries x 32 keys, K = d
//      dP_w = dO V_j[32w..]^T     wgmma SS
//      P_w  = exp2(S_w scale log2e - LSE log2e), masked; dS_w = P_w (dP_w - D)
//      dS_w -> shared memory (16-bit, buffer j % 2), barrier: both halves there
//      dQ_w += dS K_j[:, 128w..]  wgmma SS, A = dS (64 queries x 64 keys,
//                                 K-major), B = K_j read N-major, N = 128
//    dQ (64 fp32 registers a thread) is scaled and stored after the sweep.
//
// Barriers (mbarriers, 8 bytes each):
//   q_full        32 arrivals + tx of Q, dO   Q, dO, the LSE and D rows landed
//   k_full[s]     1 arrival + tx of K_j       K_j landed (stage s)
//   v_full[s]     1 arrival + tx of V_j       V_j landed
//   k_empty[s]    256 arrivals                both consumers' dQ of step j (the
//                                             last reader of K_j) completed
//   v_empty[s]    256 arrivals                both consumers' dP of step j (the
//                                             only reader of V_j) completed
// V is freed a step's GEMMs earlier than K, so the producer copies V_j+2
// first. K_j is released once the dQ of step j has completed, which a
// consumer learns after it has issued the S and dP of step j + 1
// (wait_group 2: the two newest groups may still run), so the copy of
// K_j+2 lands under those products and E1.
// K and V are rings walked with pipeline states (pipeline.h).
#pragma once

#include <cmath>
#include <type_traits>

#include "../dispatch.h"
#include "../ptx/ptx.cuh"
#include "../ptx/sm90.cuh"
#include "../exact_rows.cuh"
#include "../key_tiles.cuh"
#include "pipeline.h"
#include "roles.h"
#include "scheduler.h"  // the warpgroups and their registers (dQ 64, S and dP 16 each at the peak)

namespace flashattn::detail::sm90 {

using namespace flashattn::detail::cuda;
namespace x = flashattn::detail::ptx::sm90;

namespace dq_pass {

constexpr int kBlockM = 64;  // queries a CTA: wgmma M of S, dP and dQ
constexpr int kBlockN = 64;  // keys a step, 32 a consumer (wgmma N of S and dP)
constexpr int kStages = 2;   // K / V ring: 2 x 64 KB at d = 256 (3 would not fit)

// Byte offsets inside the (1024-aligned) dynamic shared memory; every tile
// is a whole number of 1024-byte swizzle atoms. At d = 256: Q + dO 64 KB,
// K / V ring 128 KB, dS 2 x 8 KB, rows 512 B: 208.5 KB.
template <int kD>
struct Smem {
  static constexpr int kChunks = kD / 64;          // 64-column (128-byte) boxes per row
  static constexpr int kQT = kBlockM * kD * 2;     // Q or dO: box c at c * kBlockM * 128
  static constexpr int kKV = kBlockN * kD * 2;     // K_j or V_j: box c at c * kBlockN * 128
  static constexpr int kDS = kBlockM * kBlockN * 2;  // dS: a query row of 64 keys, 128 B
  static constexpr int kQ = 0;
  static constexpr int kDO = kQ + kQT;
  static constexpr int kK = kDO + kQT;             // K stage s at kK + s kKV
  static constexpr int kV = kK + kStages * kKV;    // V stage s at kV + s kKV
  static constexpr int kDSb = kV + kStages * kKV;  // dS buffer b at kDSb + b kDS
  static constexpr int kRows = kDSb + 2 * kDS;     // float lse2[64], then dsum[64]
  static constexpr int kBars = kRows + 2 * kBlockM * 4;
  static constexpr int kBytes = kBars + (1 + 4 * kStages) * 8;  // q_full, k_full[], v_full[], k_empty[], v_empty[]
  static constexpr int kAlloc = kBytes + 1024;     // slack to align the base
  static_assert(kKV % 1024 == 0 && kQT % 1024 == 0 && kDS % 1024 == 0, "tiles must be whole swizzle atoms");
  static_assert(kAlloc <= 227 * 1024, "over the shared memory of one CTA");
};

}  // namespace dq_pass

template <class T, int kD, bool kDropout>
__global__ void __launch_bounds__(kThreads, 1)
    dq_kernel(const __grid_constant__ Params p, const __grid_constant__ CUtensorMap tma_q,
              const __grid_constant__ CUtensorMap tma_k, const __grid_constant__ CUtensorMap tma_v,
              const __grid_constant__ CUtensorMap tma_do) {
#if FA_SM90_DEVICE
  using namespace dq_pass;
  using L = Smem<kD>;
  constexpr int kHalfD = kD / 2;       // dQ columns a consumer (wgmma N of its dQ)
  constexpr int kKeys = kBlockN / 2;   // keys of S, dP a consumer (wgmma N of G1)
  static_assert(kHalfD == 128 && kKeys == 32, "the consumer layout is that of d = 256");

  extern __shared__ unsigned char smem_raw[];
  const std::uint32_t raw = x::smem_u32(smem_raw);
  const std::uint32_t base = (raw + 1023u) & ~1023u;  // TMA and wgmma agree on 1024-aligned tiles only
  unsigned char* smem = smem_raw + (base - raw);
  // Barriers: q_full (Q, dO and the rows of the CTA, once), then the K and
  // V rings.
  const std::uint32_t q_full = base + L::kBars;
  const Ring<kStages, 8, 8 * (1 + 2 * kStages)> k_ring{base + L::kBars};
  const Ring<kStages, 8 * (1 + kStages), 8 * (1 + 3 * kStages)> v_ring{base + L::kBars};
  float* lse_rows = reinterpret_cast<float*>(smem + L::kRows);  // LSE * log2(e)
  float* dsum_rows = lse_rows + kBlockM;

  const int tid = threadIdx.x;
  const int b = blockIdx.z, h = blockIdx.y, m0 = blockIdx.x * kBlockM;
  const int hk = h / p.group;
  const SeqInfo seq = resolve_seq(p, b);
  // A varlen query tile past its sequence's end has no rows (the grid
  // covers the longest sequence). The whole CTA leaves together.
  if (m0 >= seq.sq) return;
  const SeqCoords at = seq_coords(p, seq, b);
  const KeyTiles<kBlockM, kBlockN> tiles(p, b, h, m0, seq);
  const int n_steps = tiles.count();

  if (tid == 0) {
    x::mbar_init(q_full, 32);
    for (int s = 0; s < kStages; ++s) {
      x::mbar_init(k_ring.full_bar(s), 1);
      x::mbar_init(v_ring.full_bar(s), 1);
      x::mbar_init(k_ring.empty_bar(s), kConsumers * kWarpgroup);
      x::mbar_init(v_ring.empty_bar(s), kConsumers * kWarpgroup);
    }
    x::fence_mbar_init();
  }
  __syncthreads();

  if (tid < kWarpgroup) {
    // ------------------------------------------------------ producer ---
    x::setmaxnreg_dec<kProducerRegs>();
    // Nothing is copied for a tile that sees no key: no copy may still be
    // writing this CTA's shared memory when it exits.
    if (tid < 32 && n_steps > 0) {
      const int lane = tid;
      if (lane == 0) {
        x::tma_prefetch_map(&tma_k);
        x::tma_prefetch_map(&tma_v);
        // expect_tx without an arrival: the phase also needs the 32 lanes'
        // arrivals below (after their row stores), lane 0's included.
        x::mbar_expect_tx(q_full, 2 * L::kQT);
#pragma unroll
        for (int c = 0; c < L::kChunks; ++c) {
          x::tma_load_4d(base + L::kQ + c * kBlockM * 128, &tma_q, q_full, c * 64, at.q_row0 + m0, h, at.batch);
          x::tma_load_4d(base + L::kDO + c * kBlockM * 128, &tma_do, q_full, c * 64, at.q_row0 + m0, h, at.batch);
        }
      }
      // Rows past seqlen_q: LSE = +inf (P = 0) and D = 0; an empty row
      // (LSE = -inf) gives P = 0 too, not exp(+inf).
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        const int i = m0 + lane + 32 * k;
        float l2 = INFINITY, dd = 0.f;
        if (i < seq.sq) {
          const std::int64_t row = q_row(p, seq, b, h, i);
          const float l = p.lse[row];
          l2 = l == -INFINITY ? INFINITY : l * 1.4426950408889634f;
          dd = p.dsum[row];
        }
        lse_rows[lane + 32 * k] = l2;
        dsum_rows[lane + 32 * k] = dd;
      }
      x::mbar_arrive(q_full);  // release: this lane's row stores
      if (lane == 0) {
#pragma unroll 1
        for (PipelineState<kStages> kv; kv.count < n_steps; ++kv) {
          const int s = kv.stage();
          // A listed key tile wholly past seqlen_k copies the sequence's first
          // keys instead (all masked there; no box wholly outside the tensor).
          const int n_first = tiles.at(kv.count).n0;
          const int n0 = n_first < seq.sk ? n_first : 0;
          v_ring.acquire(kv);
          x::mbar_arrive_expect_tx(v_ring.full(kv), L::kKV);
#pragma unroll
          for (int c = 0; c < L::kChunks; ++c)
            x::tma_load_4d(base + L::kV + s * L::kKV + c * kBlockN * 128, &tma_v, v_ring.full(kv), c * 64,
                           at.k_row0 + n0, hk, at.batch);
          k_ring.acquire(kv);
          x::mbar_arrive_expect_tx(k_ring.full(kv), L::kKV);
#pragma unroll
          for (int c = 0; c < L::kChunks; ++c)
            x::tma_load_4d(base + L::kK + s * L::kKV + c * kBlockN * 128, &tma_k, k_ring.full(kv), c * 64,
                           at.k_row0 + n0, hk, at.batch);
        }
      }
    }
  } else {
    // ------------------------------------------------------ consumer ---
    x::setmaxnreg_inc<kConsumerRegs>();
    // Warp-uniform for ptxas (a wgmma on a path it thinks divergent is serialised).
    const int w = __shfl_sync(0xffffffffu, tid / kWarpgroup - 1, 0);
    const int t = tid % kWarpgroup, warp = t / 32, lane = t % 32;
    const int col_in_tile = 2 * (lane % 4);
    const int row0 = 16 * warp + lane / 4;  // this thread's query rows: row0, row0 + 8
    const std::uint32_t bh = dropout_bh(p, b, h);

    // dQ starts with the first step's product (scale-d 0), not from zeros:
    // zeroing instructions ptxas places among the wgmmas serialise them
    // (C7515). The empty asm only gives the registers a definition.
    float dq[kHalfD / 2];
#pragma unroll
    for (int i = 0; i < kHalfD / 2; ++i) asm volatile("" : "=f"(dq[i]));
    float lse2[2] = {INFINITY, INFINITY}, dsum[2] = {0.f, 0.f};
    if (n_steps > 0) {
      x::mbar_wait(q_full, 0);
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        lse2[half] = lse_rows[row0 + 8 * half];
        dsum[half] = dsum_rows[row0 + 8 * half];
      }
    }
    // P <= 1 (as in the one-sweep kernel's probs_and_grads), through the
    // masked loop, where some row of the warp has |LSE log2 e| >= 2^8.
    bool large = false;
#pragma unroll
    for (int half = 0; half < 2; ++half) large |= fabsf(lse2[half]) >= 256.f && lse2[half] != INFINITY;
    large = __any_sync(0xffffffffu, large);
    const std::uint32_t sQ = base + L::kQ, sdO = base + L::kDO;

    for (PipelineState<kStages> kv; kv.count < n_steps; ++kv) {
      const int step = kv.count, s = kv.stage();
      const KeyTile kt = tiles.at(step);
      const int key0 = kt.n0 + w * kKeys;  // this consumer's first key
      const std::uint32_t sK = base + L::kK + s * L::kKV, sV = base + L::kV + s * L::kKV;

      // ---- G1: K = head_dim in steps of 16 (a new 64-column box every 4);
      // K_j / V_j rows 32w.. of every box (4096 w bytes: whole atoms).
      float st[kKeys / 2], dpt[kKeys / 2];
      auto g1_gemm = [&](float (&acc)[kKeys / 2], std::uint64_t a_desc, std::uint64_t b_desc) {
#pragma unroll
        for (int kk = 0; kk < kD / 16; ++kk) {
          const std::uint32_t aoff = (kk / 4) * kBlockM * 128 + (kk % 4) * 32;
          const std::uint32_t boff = (kk / 4) * kBlockN * 128 + (kk % 4) * 32;
          x::wgmma_ss(acc, x::desc_advance(a_desc, aoff), x::desc_advance(b_desc, boff), kk > 0 ? 1 : 0, T{});
        }
        x::wgmma_commit();
      };
      k_ring.wait(kv);
      x::wgmma_fence();  // st / dpt were last read by ordinary instructions
      g1_gemm(st, x::desc_sw128(sQ, 16, 1024), x::desc_sw128(sK + w * kKeys * 128, 16, 1024));
      v_ring.wait(kv);
      x::wgmma_fence();  // after the wait loop too: otherwise ptxas injects one
      g1_gemm(dpt, x::desc_sw128(sdO, 16, 1024), x::desc_sw128(sV + w * kKeys * 128, 16, 1024));
      if (step > 0) {
        // The dQ of step - 1 (issued before these) has completed: its K
        // tile may be refilled.
        x::wgmma_wait<2>();
        k_ring.release(kv + (-1));
      }

      // ---- E1. Element [4 tt + 2 half + e]: query row0 + 8 half, key
      // key0 + 8 tt + col_in_tile + e (the accumulator layout of M = 64
      // queries, N = 32 keys). Dropout keep bits first, while the products
      // run: one Philox call covers this thread's 8 elements of a 16-key
      // slice (philox.h: word 2 half + (tt & 1), 16-bit half e), exactly
      // the forward's P mask (its pack_p).
      std::uint32_t keep_bits = ~0u;
      if constexpr (kDropout) {
        keep_bits = 0;
        const std::uint32_t pair = DropoutStream::row_pair_of(static_cast<std::uint32_t>(m0 + row0));
#pragma unroll
        for (int kk = 0; kk < kKeys / 16; ++kk) {
          const Philox4 r =
              p.dropout.words(bh, pair, DropoutStream::call_of(static_cast<std::uint32_t>(key0 + 16 * kk + col_in_tile)));
#pragma unroll
          for (int sub = 0; sub < 2; ++sub)      // tt = 2 kk + sub
#pragma unroll
            for (int half = 0; half < 2; ++half)
#pragma unroll
              for (int e = 0; e < 2; ++e)
                keep_bits |= static_cast<std::uint32_t>(
                                 p.dropout.keep(DropoutStream::word(r, 2 * half + sub), static_cast<std::uint32_t>(e)))
                             << (4 * (2 * kk + sub) + 2 * half + e);
        }
      }
      x::wgmma_wait<1>();
      x::fence_operands(st);
      if (!kt.need_mask && !large) {
#pragma unroll
        for (int i = 0; i < kKeys / 2; ++i)
          st[i] = ptx::exp2_approx(st[i] * p.scale_log2 - lse2[(i >> 1) & 1]);
      } else {
        auto masked = [&](auto bounded) {
#pragma unroll
          for (int tt = 0; tt < kKeys / 8; ++tt)
#pragma unroll
            for (int half = 0; half < 2; ++half)
#pragma unroll
              for (int e = 0; e < 2; ++e) {
                float& v = st[4 * tt + 2 * half + e];
                float x = v * p.scale_log2 - lse2[half];
                if constexpr (decltype(bounded)::value) x = ptx::min_nan(x, 0.f);
                const float pe = ptx::exp2_approx(x);
                const int i = m0 + row0 + 8 * half, j = key0 + 8 * tt + col_in_tile + e;
                // kt.window: the rule applies (dense, or a partial block; a
                // full block shows every element of the sequence).
                const bool visible =
                    i < seq.sq && j < seq.sk && (!kt.window || p.window.visible(i, j, seq.sq, seq.sk));
                v = visible ? pe : 0.f;
              }
        };
        if (large) masked(std::true_type{});
        else masked(std::false_type{});
      }
      x::wgmma_wait<0>();
      x::fence_operands(dpt);
      v_ring.release(kv);  // V_j's only reader, dP, has completed
      // dS = P (dP_d - D): with dropout dP is the gradient of the dropped
      // P_d = P Z / (1 - p), taken through the mask (D = rowsum(dO O) is
      // already that of the dropped P); P itself is not dropped here.
#pragma unroll
      for (int i = 0; i < kKeys / 2; ++i) {
        float g = dpt[i];
        if constexpr (kDropout) g *= ((keep_bits >> i) & 1u) ? p.keep_scale : 0.f;
        dpt[i] = st[i] * (g - dsum[(i >> 1) & 1]);
      }
      // dS to buffer step % 2: row = query (128 bytes of 64 keys), this
      // thread's 4 bytes in 16-byte chunk 4w + tt, stored at chunk
      // (4w + tt) ^ (row % 8), the 128B swizzle the descriptor undoes; a
      // warp's store of one (tt, half) covers 8 rows in 8 distinct chunks.
      // Buffer (step % 2) was last read by the dQ of step - 2, complete
      // before either consumer passed the barrier of step - 1.
      const int buf = step % 2;
      unsigned char* ds_s = smem + L::kDSb + buf * L::kDS;
#pragma unroll
      for (int tt = 0; tt < kKeys / 8; ++tt)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int r = row0 + 8 * half;
          const int off = r * 128 + (((4 * w + tt) ^ (r % 8)) * 16) + col_in_tile * 2;
          *reinterpret_cast<std::uint32_t*>(ds_s + off) = pack2<T>(dpt[4 * tt + 2 * half], dpt[4 * tt + 2 * half + 1]);
        }
      x::fence_proxy_async_smem();  // ordinary stores that wgmma (the async proxy) reads next
      x::named_barrier_sync<1>(kConsumers * kWarpgroup);

      // ---- G2: dQ_w += dS K_j[:, 128w..]: K = the 64 keys in steps of 16
      // (A: 32 bytes along dS's rows; B: 16 rows of K_j, 2048 bytes),
      // N = 128 columns = K_j's boxes 2w, 2w + 1 (LBO = one box).
      const std::uint64_t ds_desc = x::desc_sw128(base + L::kDSb + buf * L::kDS, 16, 1024);
      const std::uint64_t kb_desc = x::desc_sw128(sK + 2 * w * kBlockN * 128, kBlockN * 128, 1024);
      x::fence_operands(dq);
      x::wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk)
        x::wgmma_ss_bt(dq, x::desc_advance(ds_desc, kk * 32), x::desc_advance(kb_desc, kk * 16 * 128),
                       step > 0 || kk > 0 ? 1 : 0, T{});
      x::wgmma_commit();
    }
    x::wgmma_wait<0>();
    x::fence_operands(dq);

    // dq = scale * dQ (S = scale Q K^T), rows below seqlen_q; zeros for a
    // tile that sees no key (dq is an output, not an accumulation).
    bool bad[2];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int i = m0 + row0 + 8 * half;
      float sum = 0.f;
#pragma unroll
      for (int tt = 0; tt < kHalfD / 8; ++tt) sum += dq[4 * tt + 2 * half] + dq[4 * tt + 2 * half + 1];
      bad[half] = n_steps > 0 && i < seq.sq && exact::not_finite(sum);
      if (i >= seq.sq) continue;
      T* dst = static_cast<T*>(p.dq) + b * p.dq_sb + static_cast<std::int64_t>(seq.q_start + i) * p.dq_ss +
               h * p.dq_sh + w * kHalfD + col_in_tile;
#pragma unroll
      for (int tt = 0; tt < kHalfD / 8; ++tt)  // without steps the registers were never written
        *reinterpret_cast<std::uint32_t*>(dst + 8 * tt) =
            n_steps > 0 ? pack2<T>(dq[4 * tt + 2 * half] * p.scale, dq[4 * tt + 2 * half + 1] * p.scale)
                        : pack2<T>(0.f, 0.f);
    }
    // The NaN rule's slow path (../exact_rows.cuh): a row that is not
    // finite is recomputed (this consumer's kHalfD columns).
    exact::for_flagged_rows(bad, [&](int rw) {
      const int i = m0 + row0 - lane / 4 + rw;
      float rq[exact::kCols<kD>];
      exact::dq_row<T, kD>(p, seq, b, h, i, lane, rq);
      T* dst = static_cast<T*>(p.dq) + b * p.dq_sb + static_cast<std::int64_t>(seq.q_start + i) * p.dq_ss + h * p.dq_sh;
#pragma unroll
      for (int u = 0; u < exact::kCols<kD>; ++u) {
        const int c = lane + 32 * u;
        if (c >= w * kHalfD && c < w * kHalfD + kHalfD) dst[c] = from_float<T>(rq[u]);
      }
    });
  }
#else
  __trap();  // built for another architecture: the dispatch never launches this
#endif
}

// The dQ pass's launch, after dot_do_o (D) and with the forward's LSE; the
// tensor maps are the one-sweep kernel's (Q, dO boxes of 64 rows; K, V of
// 64 rows: block_n of the d = 256 row).
template <class T, int kD>
void launch_dq_pass(const Params& p, const CUtensorMap& tq, const CUtensorMap& tk, const CUtensorMap& tv,
                    const CUtensorMap& tdo, cudaStream_t stream) {
  using L = dq_pass::Smem<kD>;
  static_assert(sm90_bwd_tile(kD).block_m == dq_pass::kBlockM && sm90_bwd_tile(kD).block_n == dq_pass::kBlockN,
                "the maps' boxes are the one-sweep kernel's tiles");
  auto kernel = p.has_dropout ? dq_kernel<T, kD, true> : dq_kernel<T, kD, false>;
  set_max_dynamic_smem(kernel, L::kAlloc, "cudaFuncSetAttribute(sm90 dq pass)");
  const dim3 grid((p.seqlen_q + dq_pass::kBlockM - 1) / dq_pass::kBlockM, p.heads_q, p.batch);
  if (grid.x == 0) return;
  kernel<<<grid, kThreads, L::kAlloc, stream>>>(p, tq, tk, tv, tdo);
  check(cudaGetLastError(), "sm90 dq pass launch");
}

}  // namespace flashattn::detail::sm90
