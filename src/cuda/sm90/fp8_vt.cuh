// The kernel that writes the FP8 forward's V^T (layout and key order in
// fp8_vt.h). Memory-bound and small next to the attention kernel: a CTA
// moves a 64-key x 64-column tile through shared memory so that both its
// reads (rows of V) and its writes (rows of V^T) are 16-byte vectors.
#pragma once

#include <cuda_runtime.h>

#include "../common.cuh"
#include "fp8_vt.h"

namespace flashattn::detail::sm90 {

constexpr int kVtTileKeys = 64, kVtTileCols = 64, kVtThreads = 256;

// The columns sequence b owns (fp8_vt_owned_cols). The last key tile's
// box of block_n keys reaches past them into the next sequence's: masked
// there (P = 0), but a stale e4m3 NaN byte in a column nobody wrote would
// make 0 x NaN and send the row to the NaN rule's slow path.
__device__ __forceinline__ int fp8_vt_cols_of(const cuda::Params& p, const cuda::SeqInfo& s, int b) {
  const bool varlen = p.is_varlen();
  const std::int64_t next =
      varlen && b + 1 < p.batch ? fp8_vt_key0(true, cuda::resolve_seq(p, b + 1).k_start, b + 1) : p.vt_len;
  return static_cast<int>(fp8_vt_owned_cols(varlen, s.k_start, s.sk, b, next));
}

// Grid: (key tiles of the longest sequence and a gap group x kD / 64,
// heads_k, batch).
template <int kD>
__global__ void __launch_bounds__(kVtThreads) fp8_transpose_v(const cuda::Params p) {
  // 16 bytes of padding a row: the column reads below (one byte of 16
  // rows each) then spread over the banks.
  __shared__ alignas(16) std::uint8_t tile[kVtTileKeys][kVtTileCols + 16];
  const int b = static_cast<int>(blockIdx.z);
  constexpr int col_tiles = kD / kVtTileCols;
  const int hk = static_cast<int>(blockIdx.y);
  const int n0 = static_cast<int>(blockIdx.x) / col_tiles * kVtTileKeys;
  const int c0 = static_cast<int>(blockIdx.x) % col_tiles * kVtTileCols;
  const cuda::SeqInfo s = cuda::resolve_seq(p, b);
  const int cols = fp8_vt_cols_of(p, s, b);
  if (n0 >= cols) return;
  const int t = static_cast<int>(threadIdx.x);
  {  // row t / 4 of the tile (key n0 + t / 4), 16 columns at 16 (t % 4); zeros past the sequence
    const int r = t / 4, c = 16 * (t % 4);
    uint4 v = make_uint4(0, 0, 0, 0);
    if (n0 + r < s.sk)
      v = *reinterpret_cast<const uint4*>(static_cast<const std::uint8_t*>(p.v) + b * p.v_sb +
                                          (s.k_start + n0 + r) * p.v_ss + hk * p.v_sh + c0 + c);
    *reinterpret_cast<uint4*>(&tile[r][c]) = v;
  }
  __syncthreads();
  // Column c0 + t / 4 of V, the 16 keys of group t % 4, in V^T's key order.
  const int c = t / 4, g = t % 4;
  if (n0 + 16 * g >= cols) return;  // the group lies past the sequence's columns
  std::uint32_t w[4];
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    w[q] = 0;
#pragma unroll
    for (int j = 0; j < 4; ++j) w[q] |= static_cast<std::uint32_t>(tile[16 * g + fp8_key_of_column(4 * q + j)][c]) << (8 * j);
  }
  const bool varlen = p.is_varlen();
  const std::int64_t row = (static_cast<std::int64_t>(varlen ? 0 : b) * p.heads_k + hk) * kD + c0 + c;
  std::uint8_t* dst = p.vt + row * p.vt_len + fp8_vt_key0(varlen, s.k_start, b) + n0 + 16 * g;
  *reinterpret_cast<uint4*>(dst) = make_uint4(w[0], w[1], w[2], w[3]);
}

// Writes every column of p.vt (p.vt_len set) on the stream.
template <int kD>
void launch_fp8_transpose_v(const cuda::Params& p, cudaStream_t stream) {
  const std::int64_t cols = round_up16(p.seqlen_k) + (p.is_varlen() ? 16 : 0);
  const dim3 grid(static_cast<unsigned>((cols + kVtTileKeys - 1) / kVtTileKeys * (kD / kVtTileCols)),
                  static_cast<unsigned>(p.heads_k), static_cast<unsigned>(p.batch));
  if (grid.x == 0) return;
  fp8_transpose_v<kD><<<grid, kVtThreads, 0, stream>>>(p);
  cuda::check(cudaGetLastError(), "fp8 V^T kernel launch");
}

}  // namespace flashattn::detail::sm90
