// The hot loops of the CPU FlashAttention backend (src/cpu/flash.cpp), in a
// form that is compiled once per instruction set (flash_kernels.inc, built
// by flash_kernels_{avx512,avx2,generic}.cpp with different -m flags) and
// chosen at run time, so one library binary runs everywhere and still uses
// AVX-512 where it exists. bf16 inputs on CPUs with AMX-BF16 use the tile
// kernels of flash_kernels_amx.cpp instead (AmxKernels below).
//
// Every matrix is row-major fp32 with explicit leading dimensions. The
// column count n of gemm must be a multiple of kColPad: the tile buffers are
// padded so that the micro-kernel never needs a column tail.
#pragma once

namespace flashattn::detail::cpu_kernels {

// Column padding of every tile buffer: a multiple of the micro-kernel width
// of every instruction set (32 = 2 AVX-512 vectors = 4 AVX2 vectors).
constexpr int kColPad = 32;

struct Kernels {
  const char* isa;
  // C[m x n] (+)= op(A) B, op(A) = A (m x k, lda) or, when a_transposed, the
  // transpose of A stored k x m (lda). B is k x n (ldb). accumulate = false
  // overwrites C. The k-sum runs in order p = 0 .. k-1 for every element, so
  // results do not depend on how callers split m or n.
  void (*gemm)(int m, int n, int k, const float* a, int lda, bool a_transposed, const float* b, int ldb,
               float* c, int ldc, bool accumulate);
  // max over x[0, n); n a multiple of kColPad.
  float (*row_max)(const float* x, int n);
  // x[j] = 2^(x[j] - shift) for j < n (n a multiple of kColPad); returns the
  // sum. 2^-inf = 0; arguments below -127 flush to 0.
  float (*exp2_shift_sum)(float* x, int n, float shift);
  // The forward's online-softmax step on rows x n scores s (lds; n a
  // multiple of kColPad) in the log2 domain, rows with running max m and
  // sum l: per row m_new = max(m, max_j s), s = 2^(s - m_new) (then times
  // keep[row * ldk + j] when keep is set), l = l * 2^(m - m_new) + the sum
  // before keep, and the row's o_cols (a multiple of kColPad) columns of o
  // (ldo) scaled by 2^(m - m_new). Rows with nothing visible: s = 0, m and
  // l unchanged. rows <= 256.
  void (*softmax_rows)(int rows, int n, float* s, int lds, float* m, float* l, float* o, int ldo, int o_cols,
                       const float* keep, int ldk);
  // The backward's elementwise step on rows x n tiles s (scores in the
  // log2 domain) and dp (ld; n a multiple of kColPad): per row i, with
  // p = 2^(s - lse[i]) * pmul[i] (pmul null: 1) and k = keep[i * ldk + j]
  // (1 when keep is null): dp = p * (dp * k - dsum[i]) (dS), s = p * k (P
  // after dropout). Where s = -inf both are 0, whatever lse, dp and dsum
  // hold (NaN included).
  void (*grad_rows)(int rows, int n, float* s, float* dp, int ld, const float* lse, const float* pmul,
                    const float* dsum, const float* keep, int ldk);
};

// The tile kernels of the bf16 path on CPUs with AMX-BF16
// (flash_kernels_amx.cpp). bf16 operands are unsigned short bit patterns.
// A GEMM operand A is row-major bf16; B is "VNNI-packed" in panels of 16
// columns: panel q (b_panel elements after panel q - 1) holds columns
// 16q .. 16q+15 as k/2 rows of 32 bf16, row p interleaving B[2p][n] and
// B[2p+1][n]. m and n must be multiples of 16, k of 32 (callers zero-pad).
struct GradTile;
struct SoftmaxTile;
struct AmxKernels {
  const char* isa;
  // Loads the tile configuration (every tile 16 rows x 64 bytes) on the
  // calling thread: once per parallel region before any gemm, which then
  // needs no per-call LDTILECFG. release() ends the region.
  void (*begin)();
  // C[m x n] (+)= A[m x k] B in fp32 (accumulate = false overwrites C).
  void (*gemm)(int m, int n, int k, const unsigned short* a, int lda, const unsigned short* b, long long b_panel,
               float* c, int ldc, bool accumulate);
  // b = X^T packed (X rows x cols row-major, ldx; rows % 16 == 0, cols % 2
  // == 0): panel stride cols * 16.
  void (*pack_t)(int rows, int cols, const unsigned short* x, int ldx, unsigned short* b);
  // b = X packed (rows % 2 == 0, cols % 16 == 0) with panel stride b_panel
  // (rows * 16, or more to fill a row slice of a larger packed matrix).
  void (*pack_n)(int rows, int cols, const unsigned short* x, int ldx, unsigned short* b, long long b_panel);
  // y (cols x rows, ldy) = x^T (rows x cols, ldx).
  void (*transpose)(int rows, int cols, const unsigned short* x, int ldx, unsigned short* y, int ldy);
  // The forward's online-softmax step on one score tile (SoftmaxTile).
  void (*softmax_tile)(const SoftmaxTile& t);
  // The backward's elementwise step on one score tile (GradTile).
  void (*grad_tile)(const GradTile& g);
  // dst (rows_pad x ld, ld % 32 == 0) = rows r < n of src (row r at
  // src + r * src_stride, d elements), zero-padded to ld columns and
  // rows_pad rows.
  void (*load_rows)(int n, int rows_pad, int d, const unsigned short* src, long long src_stride,
                    unsigned short* dst, int ld);
  // dst[r * dst_stride + c] = bf16(src[r * lds + c] * mul[r]) for r < n,
  // c < d (round to nearest even).
  void (*store_rows)(int n, int d, const float* src, int lds, const float* mul, unsigned short* dst,
                     long long dst_stride);
  // Gives the tile registers back (TILERELEASE) when a thread is done.
  void (*release)();
};

// One forward score tile: rows x n scores S (fp32, lds; n % 16 == 0,
// masked and padding columns -inf) of rows whose running max m and sum l
// (log2 domain) are updated in place. Per row, with m_new = max(m,
// mul * max_j S) (mul > 0): P = bf16(2^(S * mul - m_new) * keep) (keep
// rows at ldk, or null: 1) into p (ldp), l = l * 2^(m - m_new) + the sum
// of the fp32 probabilities before keep (as GPU FlashAttention sums them:
// summing the bf16-rounded values moved the LSE by up to 1.5e-3), and the
// row's o_cols accumulator columns (o, ldo) scaled by 2^(m - m_new). Rows
// with nothing visible yet get P = 0 and keep m = -inf, l = 0. P rows
// rows .. rows_pad are zeroed. rows <= 64.
struct SoftmaxTile {
  int rows, rows_pad, n;
  float* s;
  int lds;
  float mul;
  float *m, *l, *o;
  int ldo, o_cols;
  const float* keep;
  int ldk;
  unsigned short* p;
  int ldp;
};

// One backward score tile, rows x cols (row r, column c) of S and dP
// (fp32, leading dimension ld). With p = 2^(S * mul - lse) and k the
// dropout factor (keep[r * keep_rs + c * keep_cs], or 1 when keep is null):
//   ds = p * (dP * k - D),  P = p * k,
// rounded to bf16 into ds (ldds) and, when p is non-null, P (ldp). lse and
// D come per row (lse_row, d_row) or per column (lse_col, d_col): the
// other pointer is null. Elements with r >= rows_valid or c >= cols_valid
// are written as 0, up to rows_pad (even) and cols (a multiple of 16, at
// most 256). When ds_vnni is set, ds is also written VNNI-packed as a B
// operand whose k dimension is the rows (panel stride rows_pad * 16).
struct GradTile {
  int rows_valid, rows_pad, cols_valid, cols;
  const float *s, *dp;
  int ld;
  float mul;
  const float *lse_row, *lse_col, *d_row, *d_col;
  const float* keep;
  long long keep_rs, keep_cs;
  unsigned short* p;
  int ldp;
  unsigned short* ds;
  int ldds;
  unsigned short* ds_vnni;
};

const AmxKernels& kernels_amx();
const Kernels& kernels_avx512();
const Kernels& kernels_avx2();
const Kernels& kernels_generic();

}  // namespace flashattn::detail::cpu_kernels

namespace flashattn::detail {
// The kernel set the CPU flash path uses (flash.cpp): for bf16 inputs when
// bf16 is true ("amx": tile GEMMs on bf16 operands, P and dS rounded to
// bf16), else for f32/f16 ("avx512", "avx2", "generic": fp32 compute).
// FLASHATTN_CPU_ISA caps the choice.
const char* cpu_flash_kernel_isa(bool bf16);
}  // namespace flashattn::detail

