// THE dispatch tables of the CUDA flash kernels: (kernel family,
// direction, head_dim) -> tile configuration, for fp16 and bf16 alike.
// Only the rows below are instantiated (sm80/*_*.cu, sm90/*_*.cu); the
// head-dim switches (with_head_dim), supports() (src/common/validate.cpp)
// and the head-dim lists of error messages (head_dims_text) all derive
// from them. Plain C++ (no CUDA header): the CPU-only build reads it too.
//
// Arch: every GPU of compute capability >= 8.0 (A100, H100, ...) runs the
// portable sm_80 path (mma.sync + ldmatrix + cp.async). Dtype: fp16 and bf16
// share every row (same sizes, same instruction shape).
//
// Why these tiles:
//  - forward: 4 warps, two CTAs an SM (one computes while the other waits
//    at its barriers). Up to d = 128 each warp owns two 16-row mma tiles
//    (128-row query tile), so each K/V fragment read with ldmatrix feeds two
//    mma's: with one, shared-memory bandwidth caps the tensor cores (an
//    ldmatrix.x4 moves 512 B, 4 cycles of the SM's 128 B/cycle, for two
//    mma's). K/V tiles are 64 rows (K double-buffered: Q + 2 K + V tiles =
//    87 KB at d = 128, two CTAs fit in 228 KB). For d = 192/256 the O
//    accumulator alone is 96/128 registers a thread, so warps own one row
//    tile, Q is re-read from shared memory and K/V tiles shrink to 32 rows.
//    Measured on H100 (bf16, seqlen 8192, d = 128): 16-row warp tiles and 8
//    warps 226 TFLOPS; 32-row warp tiles 297; + double-buffered K 317.
//  - backward: a CTA owns 64 or 128 keys (dK, dV accumulate in registers
//    across the sweep over 64-row query tiles); BwdSplit (sm80/backward.cuh)
//    derives which warp owns which slice of each product from this row.
//    The fp32 dQ atomics per key scale as 1 / (keys per CTA) and weigh on
//    the speed (L2 atomic throughput), so d = 64/128 take 128 keys: with 8
//    warps for d = 128 (32 x 32 warp tiles, measured 198 vs 192 TFLOPS with
//    16 warps on H100) and 16 warps for d = 64 (151 vs 143: more warps in
//    flight beat bigger warp tiles there). d = 32/96 keep 64 keys (their dQ
//    column slices would not be whole n16 steps) and d = 192/256 keep 64
//    (the dK + dV accumulators already fill the registers).
#pragma once

#include <cstddef>
#include <iterator>
#include <string>
#include <type_traits>
#include <utility>

namespace flashattn::detail::cuda {

// The row of kTable (one of the tables below) whose head_dim is head_dim;
// a zero row (head_dim 0) when it has none.
template <const auto& kTable>
constexpr auto table_row(int head_dim) {
  using Row = std::remove_cvref_t<decltype(kTable[0])>;
  for (const Row& c : kTable)
    if (c.head_dim == head_dim) return c;
  return Row{};
}

struct TileConfig {
  int head_dim;
  int fwd_block_m, fwd_block_n, fwd_warps, fwd_ctas_per_sm;  // forward: query rows, key rows, warps, CTAs/SM
  int bwd_block_m, bwd_block_n, bwd_warps, bwd_ctas_per_sm;  // backward: likewise
};

// sm_80+ (fp16 and bf16). ctas_per_sm is the __launch_bounds__ occupancy
// target: it caps registers at 64K / (threads * ctas).
//                                     head_dim  fwd: M   N  warps ctas  bwd: M   N  warps ctas
inline constexpr TileConfig kSm80Tiles[] = {{32,      128,  64, 4,    2,       64, 64, 8,    2},
                                            {64,      128,  64, 4,    2,       64, 128, 16,  1},
                                            {96,      128,  64, 4,    2,       64, 64, 8,    2},
                                            {128,     128,  64, 4,    2,       64, 128, 8,   1},
                                            {192,      64,  32, 4,    2,       64, 64, 8,    1},
                                            {256,      64,  32, 4,    2,       64, 64, 8,    1}};

constexpr TileConfig sm80_tiles(int head_dim) { return table_row<kSm80Tiles>(head_dim); }

// Hopper (sm_90a) forward (forward_path() in api.cu; docs/hopper.md). 3
// warpgroups: 1 TMA producer, 2 consumers of 64 query rows each (128-row
// tile: wgmma's M is 64 a warpgroup). K/V tiles of block_n keys in a
// 2-stage ring. block_n = 128 up to d = 128 (S is 64 fp32 registers a
// thread, O 32 or 64); d = 256 takes 64 keys because O alone is 128
// registers a thread. Shared memory: Q 128 d + 2 stages x (K + V) block_n d,
// 16-bit: 80 KB (d 64), 160 KB (d 128), 192 KB (d 256), one CTA an SM.
// persistent: on dense problems of fixed length the grid is one CTA an SM,
// each looping over query tiles (every gridDim.x-th tile without a mask;
// under a causal or window mask every gridDim.x-th pair of a head's
// longest and shortest remaining tiles, which cost alike: sm90/scheduler.h),
// so that the next tile's Q, K and V load under this one's last steps and
// epilogue; that needs a separate O staging buffer (128 d, 16-bit: 16 /
// 32 KB), which d = 256 has no room for. Varlen and block-sparse problems
// keep one CTA a tile: the block scheduler balances their unequal lengths.
// fma_exp2: one 8-column group of S in fma_exp2 takes its exp2 on the FMA
// pipes instead of the MUFU unit (tile::exp2_fma; 0: none). A step's
// products take as long as its 64 x block_n exp2s on the MUFU unit (16 a
// clock an SM) at d = 64 in 16-bit and at every d in e4m3, so there the
// softmax is the critical path and moving a share of it to the FMA pipes
// should shorten it; at d >= 128 in 16-bit the products hide the softmax.
// Measured (H100, docs/hopper.md): one group in 8 gains 2-6% in e4m3 at
// d = 64 and 256; every share tried (1/8 to 1/2) loses in 16-bit, d = 64
// included, and at e4m3 d = 128 (not profiled: the emulation's extra
// instructions likely cost more issue slots than the MUFU time they free).
// stale_max: the online softmax keeps a row's base (its running maximum)
// while a new tile's maximum exceeds it by at most this many log2 units,
// so that O's rescale (d / 2 multiplies a thread a step) is skipped when no
// row of a warp moved (tile::max_step; 0: rescale every step). P then
// stays below 2^stale_max. Measured (H100, docs/hopper.md): 8 gains 3% at
// d = 256 and 1.5% at d = 128 causal (neutral without the mask) and loses
// 2% at d = 64 in 16-bit. e4m3 keeps 0: a stale base makes the largest P
// of a row 2^x instead of exactly 1, which e4m3's 3-bit mantissa rounds by
// up to 6%, and the FP8 test's accuracy rule fails at d = 256 (7% over);
// it was also 12% slower at d = 64 and 1% at d = 128.
struct Sm90FwdTile {
  int head_dim, block_m, block_n, stages;
  bool persistent;
  int fma_exp2, stale_max;
};
//                                       head_dim  M    N  stages persistent fma_exp2 stale_max
inline constexpr Sm90FwdTile kSm90FwdTiles[] = {{64,  128, 128, 2, true,      0,       0},
                                                {128, 128, 128, 2, true,      0,       8},
                                                {256, 128,  64, 2, false,     0,       8}};

constexpr Sm90FwdTile sm90_fwd_tile(int head_dim) { return table_row<kSm90FwdTiles>(head_dim); }

// Hopper (sm_90a) backward (backward_path() in api.cu; docs/hopper.md). A
// CTA owns block_n keys of one (batch, query head) and sweeps the query
// tiles of block_m = 64 rows that can see them; 3 warpgroups: 1 TMA
// producer, 2 consumers. dK and dV stay in registers for the whole sweep, so
// the register file decides the split:
//  - d = 64, 128: 128 keys, 64 a consumer (wgmma's M). A consumer holds
//    dK and dV of its 64 keys x d (2 x 64 fp32 registers a thread at
//    d = 128), S^T and dP^T of 64 keys x 64 queries add 32 + 32: as much as
//    240 registers allow. The fp32 dQ atomics per query row scale as
//    1 / block_n, so the key tile is as large as two warpgroups make it.
//  - d = 256: 64 keys x 256 of dK + dV would be 256 registers a thread, so
//    both consumers take the same 64 keys and split head_dim: 128 columns
//    of dK, dV and dQ each (64 + 64 + 64 registers), S^T and dP^T split by
//    queries (32 a consumer, 16 + 16), P^T and dS^T shared through shared
//    memory.
// dq_pass: dQ in a second kernel that owns query tiles and sweeps the keys
// (sm90/backward_dq.cuh) instead of fp32 atomics from the key-tile sweep.
// At d = 256 the 64-key CTAs reduce every dQ row s_k / 64 times and those
// reductions bound the sweep (H100: 291 TFLOPS with them, 679 without);
// the pass recomputes S and dP (7 GEMMs instead of 5) and is deterministic.
// Q and dO of a query tile stream through a 2-stage ring. Shared memory,
// 16-bit: K + V 2 x block_n d, 2 stages x (Q + dO) 64 d, dS^T (and at
// d = 256 P^T) buffers of block_n x 64: 96 KB (d 64), 160 KB (d 128),
// 224 KB (d 256), + 1 KB of LSE/D rows, + 32 KB at d = 64 and 128 where
// each consumer stages its 64 x 64 fp32 dQ block for the TMA reductions.
struct Sm90BwdTile {
  int head_dim, block_m, block_n, stages;
  bool dq_pass;
};
//                                       head_dim  M    N  stages dq_pass
inline constexpr Sm90BwdTile kSm90BwdTiles[] = {{64,  64, 128, 2, false},
                                                {128, 64, 128, 2, false},
                                                {256, 64,  64, 2, true}};

constexpr Sm90BwdTile sm90_bwd_tile(int head_dim) { return table_row<kSm90BwdTiles>(head_dim); }

// Hopper FP8 (e4m3) forward (sm90/forward.cuh with In = e4m3; bf16 O): the
// same kernel on bytes, so the same 128-row query tile and 2-stage ring.
// Tiles take half the shared memory of the 16-bit ones (Q 128 d + 2 x
// (K + V^T) block_n d bytes) plus an O staging buffer of its own (128 d,
// bf16: Q's buffer is too small to stage O). Key tiles and persistence as
// the 16-bit table: S is block_n / 2 fp32 registers a thread and O d / 2,
// so d = 256 keeps 64 keys (O alone is 128 registers) and one tile a CTA
// (the tile loop's state spilled there); P takes half the registers of a
// 16-bit P. Shared memory: 56 KB (d 64), 112 KB
// (d 128), 160 KB (d 256).
//                                          head_dim  M    N  stages persistent fma_exp2 stale_max
inline constexpr Sm90FwdTile kSm90Fp8FwdTiles[] = {{64,  128, 128, 2, true,      8,       0},
                                                   {128, 128, 128, 2, true,      0,       0},
                                                   {256, 128,  64, 2, false,     8,       0}};

constexpr Sm90FwdTile sm90_fp8_fwd_tile(int head_dim) { return table_row<kSm90Fp8FwdTiles>(head_dim); }

// KV cache (forward_kvcache, sm80/kvcache.cuh; sm_80+, also what runs on
// Hopper). Decode is bound by reading K and V once, so a CTA takes all the
// query rows of one KV head's group (query heads x tokens) and never
// re-reads a key tile. Two forms of 4 warps:
//  - up to 16 rows (decode: 8 heads x 1 token): one 16-row mma tile, the 4
//    warps split each 64-key tile (16 keys a warp) and merge their softmax
//    states at the end; rows past the group would otherwise be wasted
//    tensor-core work of the same order as the tile's memory time. Its key
//    tiles rotate through decode_stages buffers, so decode_stages - 1 tiles
//    (K and V: 2 x 64 (d + 8) 16-bit values each) are in flight while one
//    is computed on; an SM needs some 40 KB or more in flight to cover the
//    memory latency at full bandwidth. d 64: 4 stages (76 KB), d 128: 3
//    (109 KB, 2 CTAs on an H100's 228 KB), d 256: 2 (144 KB: 3 would pass
//    the A100's 163 KB);
//  - more rows: 64-row tiles (a warp 16 rows, each the whole key tile of
//    block_n keys), double-buffered (4 block_n (d + 8) 16-bit values: 69.6
//    KB at d = 128, 2 CTAs an SM); d = 256 takes 32 keys, since 64 plus
//    the 64 Q rows would pass the A100's 163 KB of shared memory.
// Only these head dims are instantiated.
struct KvTile {
  int head_dim, block_n, decode_stages;
};
//                                 head_dim  N  decode stages
inline constexpr KvTile kKvTiles[] = {{64,  64, 4},
                                      {128, 64, 3},
                                      {256, 32, 2}};

constexpr KvTile kv_tile(int head_dim) { return table_row<kKvTiles>(head_dim); }

// Block-sparse masks must align with every tile above: a query block may
// not straddle two forward query tiles, a key block two key tiles.
inline constexpr int kSparseBlockQMultiple = 128;
inline constexpr int kSparseBlockKMultiple = 128;

// Calls f(std::integral_constant<int, D>{}) for the row of kTable (any of
// the tables above) whose head_dim is D = head_dim; false when it has none.
template <const auto& kTable, class F>
bool with_head_dim(int head_dim, F&& f) {
  return [&]<std::size_t... I>(std::index_sequence<I...>) {
    return ((head_dim == kTable[I].head_dim ? (f(std::integral_constant<int, kTable[I].head_dim>{}), true) : false) ||
            ...);
  }(std::make_index_sequence<std::size(kTable)>{});
}

template <const auto& kTable>
constexpr bool has_head_dim(long long head_dim) {
  for (const auto& row : kTable)
    if (row.head_dim == head_dim) return true;
  return false;
}

// "32, 64, 96, 128, 192 or 256": kTable's head dims, for error messages.
template <const auto& kTable>
std::string head_dims_text() {
  std::string s;
  const std::size_t n = std::size(kTable);
  for (std::size_t i = 0; i < n; ++i) {
    if (i > 0) s += i + 1 == n ? " or " : ", ";
    s += std::to_string(kTable[i].head_dim);
  }
  return s;
}

// What a refusal of an e4m3 head_dim on CUDA expects (validation and the
// dispatch say it alike).
inline std::string fp8_head_dims_text() {
  return head_dims_text<kSm90Fp8FwdTiles>() + " with e4m3 inputs on cuda (the FP8 forward's table)";
}

// The two directions of the Hopper family have the same head dims (the
// choice of family for a problem asks both).
constexpr bool sm90_directions_agree() {
  if (std::size(kSm90FwdTiles) != std::size(kSm90BwdTiles)) return false;
  for (std::size_t i = 0; i < std::size(kSm90FwdTiles); ++i)
    if (kSm90FwdTiles[i].head_dim != kSm90BwdTiles[i].head_dim) return false;
  return true;
}
static_assert(sm90_directions_agree(), "kSm90FwdTiles and kSm90BwdTiles list the same head dims");

}  // namespace flashattn::detail::cuda
