// Building blocks of the sm_80 kernels: shared-memory tile layout, the
// cp.async tile loader, ldmatrix fragment loads.
#pragma once

#include "../common.cuh"
#include "../key_tiles.cuh"
#include "../ptx/ptx.cuh"

namespace flashattn::detail::sm80 {

using namespace flashattn::detail::cuda;

// Every shared tile row is padded by 8 elements (16 bytes): consecutive rows
// then start 4 banks apart, so the 8 row addresses of one ldmatrix phase
// fall in 8 distinct 16-byte bank groups for every head_dim in the table
// (row pitch 2d + 16 bytes with 2d a multiple of 64).
constexpr int kPad = 8;

// Copies rows [0, kRows) x [0, kCols) of a row-major global tile (row stride
// ld_g elements) to shared memory (row pitch kCols + kPad); rows >= valid
// become zeros. 16 bytes per cp.async; consecutive threads take consecutive
// 16-byte chunks of a row, so a warp's reads coalesce.
template <int kRows, int kCols, int kThreads, class T>
__device__ __forceinline__ void load_tile(T* smem, const T* gmem, std::int64_t ld_g, int valid, int tid) {
  constexpr int kChunks = kCols / 8;
  constexpr int kLd = kCols + kPad;
#pragma unroll
  for (int c = tid; c < kRows * kChunks; c += kThreads) {
    const int r = c / kChunks, ch = c % kChunks;
    const bool ok = r < valid;
    const T* src = ok ? gmem + r * ld_g + ch * 8 : gmem;
    ptx::cp_async_16(ptx::smem_addr(smem + r * kLd + ch * 8), src, ok);
  }
}

// As load_tile, for rows at arbitrary addresses (a paged cache looks up
// each row's page): row(r) is row r's first element, or nullptr for a row
// that becomes zeros and is not read (`base` is then handed to cp.async as
// an address that is never dereferenced). A thread's chunks all sit in the
// same column, so it asks row() once per row it copies.
template <int kRows, int kCols, int kThreads, class T, class RowFn>
__device__ __forceinline__ void load_rows(T* smem, RowFn&& row, const T* base, int tid) {
  constexpr int kChunks = kCols / 8;
  constexpr int kLd = kCols + kPad;
#pragma unroll
  for (int c = tid; c < kRows * kChunks; c += kThreads) {
    const int r = c / kChunks, ch = c % kChunks;
    const T* src = row(r);
    ptx::cp_async_16(ptx::smem_addr(smem + r * kLd + ch * 8), src != nullptr ? src + ch * 8 : base, src != nullptr);
  }
}

// ---- mma.m16n8k16 operand fragments from shared memory (pitch ld) ----
// A (16 x 16) stored row-major [m][k]; s points at (m0, k0).
template <class T>
__device__ __forceinline__ void lds_a(std::uint32_t (&a)[4], const T* s, int ld, int lane) {
  const int row = (lane & 7) + ((lane >> 3) & 1) * 8, col = (lane >> 4) * 8;
  ptx::ldmatrix_x4(a, ptx::smem_addr(s + row * ld + col));
}
// A (16 x 16) stored transposed, [k][m]; s points at (k0, m0).
template <class T>
__device__ __forceinline__ void lds_a_trans(std::uint32_t (&a)[4], const T* s, int ld, int lane) {
  const int row = (lane & 7) + (lane >> 4) * 8, col = ((lane >> 3) & 1) * 8;
  ptx::ldmatrix_x4_trans(a, ptx::smem_addr(s + row * ld + col));
}
// B for two n8 tiles (k16 x n16) stored [n][k]; s points at (n0, k0).
// b[0], b[1]: columns n0..n0+7; b[2], b[3]: columns n0+8..n0+15.
template <class T>
__device__ __forceinline__ void lds_b(std::uint32_t (&b)[4], const T* s, int ld, int lane) {
  const int row = (lane & 7) + (lane >> 4) * 8, col = ((lane >> 3) & 1) * 8;
  ptx::ldmatrix_x4(b, ptx::smem_addr(s + row * ld + col));
}
// B for two n8 tiles stored [k][n]; s points at (k0, n0).
template <class T>
__device__ __forceinline__ void lds_b_trans(std::uint32_t (&b)[4], const T* s, int ld, int lane) {
  const int row = (lane & 7) + ((lane >> 3) & 1) * 8, col = (lane >> 4) * 8;
  ptx::ldmatrix_x4_trans(b, ptx::smem_addr(s + row * ld + col));
}

// ---- unpadded tiles with XOR-swizzled 16-byte chunks ----
// Rows of kCols elements, chunk c of row r stored at chunk c ^ (r % 8).
// A row stays one run of whole 16-byte chunks, so the cp.async copies of a
// global row stay whole L2 lines (a padded pitch splits them: the KV-cache
// kernel made 2.6x cuDNN's L2 read requests with it, ncu), and the 8 rows
// of one ldmatrix phase (one logical chunk, 8 consecutive rows from a
// multiple of 8) still fall in 8 distinct 16-byte bank groups of a 128-byte
// window. A tile starts 128-byte aligned; kCols * sizeof(T) is a multiple
// of 128.
template <int kCols>
struct SwizzledRows {
  static_assert(kCols % 64 == 0, "at least 8 chunks of 8 elements a row");
  // Element offset of chunk `chunk` (8 elements) of row `row`.
  static constexpr __host__ __device__ int offset(int row, int chunk) {
    return row * kCols + ((chunk ^ (row & 7)) << 3);
  }
  // The element lane `lane` hands ldmatrix.x4 for B of two n8 tiles: stored
  // [n][k] (b_lane, as lds_b) at rows n0, columns k0, or stored [k][n]
  // (b_trans_lane, as lds_b_trans) at rows k0, columns n0; n0, k0 multiples
  // of 8. Lanes 8m..8m+7 address the 8 rows of matrix m.
  static constexpr __host__ __device__ int b_lane(int n0, int k0, int lane) {
    return offset(n0 + (lane & 7) + (lane >> 4) * 8, k0 / 8 + ((lane >> 3) & 1));
  }
  static constexpr __host__ __device__ int b_trans_lane(int k0, int n0, int lane) {
    return offset(k0 + (lane & 7) + ((lane >> 3) & 1) * 8, n0 / 8 + (lane >> 4));
  }
};
// Lane `lane`'s ldmatrix.x4 addresses for B fragments of a SwizzledRows<kCols>
// tile of 16-bit T, stored [n][k] (kTrans false: b_lane) or [k][n] (kTrans
// true: b_trans_lane). The tile starts 128-byte aligned and its rows are
// multiples of 128 bytes, so for a row block from a multiple of 8 and a
// column block from a multiple of 16 the address of the block's chunk pair
// c (of the four in a 128-byte window) is the lane's address for pair 0
// with bits 5-6 XORed with c, plus a constant for the row block and the
// window. Each ldmatrix then costs at most one LOP3 on one register and a
// compile-time immediate, as a padded tile's would; computing b_lane in the
// loop, or keeping one register per pair, made ptxas rebuild the lane terms
// every tile (ncu: 14% more instructions).
template <int kCols, class T, bool kTrans>
struct SwizzledB {
  static_assert(sizeof(T) == 2, "8-element chunks of 16 bytes");
  std::uint32_t lane0;  // bytes: the lane's row and chunk for rows 0.., columns 0..
  __host__ __device__ explicit SwizzledB(int lane)
      : lane0(static_cast<std::uint32_t>(
            2 * (kTrans ? SwizzledRows<kCols>::b_trans_lane(0, 0, lane) : SwizzledRows<kCols>::b_lane(0, 0, lane)))) {}
  // Shared address of the lane's element for rows from row0 (a multiple of
  // 8), columns from col0 (a multiple of 16), in the tile at `tile` (128-byte
  // aligned). row0 and col0 are constants in unrolled loops.
  __host__ __device__ std::uint32_t at(std::uint32_t tile, int row0, int col0) const {
    return ((tile + lane0) ^ static_cast<std::uint32_t>(((col0 / 16) % 4) << 5)) +
           static_cast<std::uint32_t>(2 * (row0 * kCols + (col0 / 64) * 64));
  }
};
// B of two n8 tiles from a SwizzledRows tile at shared address `tile`.
template <int kCols, class T>
__device__ __forceinline__ void lds_b_swz(std::uint32_t (&b)[4], std::uint32_t tile, const SwizzledB<kCols, T, false>& rd,
                                          int n0, int k0) {
  ptx::ldmatrix_x4(b, rd.at(tile, n0, k0));
}
template <int kCols, class T>
__device__ __forceinline__ void lds_b_trans_swz(std::uint32_t (&b)[4], std::uint32_t tile,
                                                const SwizzledB<kCols, T, true>& rd, int k0, int n0) {
  ptx::ldmatrix_x4_trans(b, rd.at(tile, k0, n0));
}

// acc[kMT][kN/8][4] (16 kMT x kN) += A (16 kMT x kK) * B (kK x kN); A and B
// from shared memory, A [m][k] (or [k][m] when kATrans), B [n][k] (or
// [k][n] when kBTrans). Each B fragment feeds kMT mma's: the larger the
// warp tile, the fewer ldmatrix bytes per mma.
template <class T, int kMT, int kN, int kK, bool kATrans, bool kBTrans>
__device__ __forceinline__ void warp_gemm(float (&acc)[kMT][kN / 8][4], const T* sa, int lda, const T* sb, int ldb,
                                          int lane) {
#pragma unroll
  for (int kk = 0; kk < kK / 16; ++kk) {
    std::uint32_t a[kMT][4];
#pragma unroll
    for (int mi = 0; mi < kMT; ++mi) {
      if constexpr (kATrans) lds_a_trans(a[mi], sa + kk * 16 * lda + mi * 16, lda, lane);
      else lds_a(a[mi], sa + mi * 16 * lda + kk * 16, lda, lane);
    }
#pragma unroll
    for (int j = 0; j < kN / 16; ++j) {
      std::uint32_t b[4];
      if constexpr (kBTrans) lds_b_trans(b, sb + kk * 16 * ldb + j * 16, ldb, lane);
      else lds_b(b, sb + j * 16 * ldb + kk * 16, ldb, lane);
#pragma unroll
      for (int mi = 0; mi < kMT; ++mi) {
        ptx::mma_16816<T>(acc[mi][2 * j], a[mi], b[0], b[1]);
        ptx::mma_16816<T>(acc[mi][2 * j + 1], a[mi], b[2], b[3]);
      }
    }
  }
}

template <int kN>
__device__ __forceinline__ void zero(float (&acc)[kN][4]) {
#pragma unroll
  for (int t = 0; t < kN; ++t) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = 0.f;
}
template <int kM, int kN>
__device__ __forceinline__ void zero(float (&acc)[kM][kN][4]) {
#pragma unroll
  for (int mi = 0; mi < kM; ++mi) zero(acc[mi]);
}

}  // namespace flashattn::detail::sm80
