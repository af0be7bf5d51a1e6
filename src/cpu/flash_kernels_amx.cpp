// The AMX-BF16 micro-kernels of the CPU flash path for bf16 inputs (see
// flash_kernels.h, AmxKernels). Only this file is compiled with
// -mamx-tile -mamx-bf16 -mavx512bf16 (sources.cmake); flash.cpp calls it
// only after select_kernels() found AMX on the CPU and the kernel granted
// the tile-data permission.
//
// Tile shapes. An AMX tile register holds at most 16 rows of 64 bytes, and
// TDPBF16PS multiplies a 16 x 32 bf16 A tile by a 32 x 16 bf16 B tile
// (stored as 16 rows of 16 bf16 pairs: the "VNNI" layout, row p holding
// B[2p][n], B[2p+1][n] side by side for each column n) into a 16 x 16 fp32
// tile. Every tile is therefore configured at its maximum, 16 x 64 bytes,
// and callers pad m and n to 16 and k to 32 with zeros. Of the 8 tile
// registers, 4 hold a 32 x 32 block of C, 2 the A tiles of its two row
// halves and 2 the B tiles of its two column halves: each k step is 4 tile
// loads for 4 TDPBF16PS, the largest C block the register file allows.
//
// B operands are stored in panels of 16 columns (one tile wide), each
// panel k/2 rows of 64 bytes, so that one B tile is 1 KiB of contiguous
// memory: loading a tile from a matrix with a long row stride would touch
// 16 lines 4 KiB apart, which share an L1 set.
//
// The file includes only <immintrin.h> (whose functions are always-inline
// and never emitted out of line) and flash_kernels.h: see flash_kernels.inc
// for why no other inline function may be compiled with these flags.
// g++ 12's AVX-512 headers start some intrinsics from _mm512_undefined_*
// and then warn that the undefined value is used: silence that one false
// positive inside the header only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include "flash_kernels.h"

namespace flashattn::detail::cpu_kernels {
namespace amx {
namespace {

using u16 = unsigned short;
using i64 = long long;

// The 64-byte LDTILECFG operand: palette 1, every tile 16 rows x 64 bytes.
struct alignas(64) TileConfig {
  unsigned char palette;
  unsigned char start_row;
  unsigned char reserved[14];
  unsigned short colsb[16];
  unsigned char rows[16];
};

// Tile configuration is per-thread state that other code on the same
// thread (oneDNN inside PyTorch, say) may change between our calls, so
// flash.cpp loads it at the start of every parallel region (begin) and
// releases the tiles at its end (release): nothing else runs on the
// thread in between.
// The configuration lives in static storage: g++ 12 does not treat
// LDTILECFG as reading its 64-byte operand, and with a local it dropped
// the stores of rows and colsb as dead (tiles then configured empty: #UD).
constexpr TileConfig make_config() {
  TileConfig cfg{};
  cfg.palette = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  return cfg;
}
constexpr TileConfig kConfig = make_config();

void begin() { _tile_loadconfig(&kConfig); }

// One C block of MB x NB tiles (MB, NB in {1, 2}): tiles 0-3 hold C, 4-5 A,
// 6-7 B. a points at the block's first row, b at its first panel.
template <int MB, int NB>
inline void block(int k, const u16* a, int lda, const u16* b, i64 b_panel, float* c, int ldc, bool acc) {
  const i64 sa = static_cast<i64>(lda) * 2, sc = static_cast<i64>(ldc) * 4;
  if (acc) {
    _tile_loadd(0, c, sc);
    if constexpr (NB > 1) _tile_loadd(1, c + 16, sc);
    if constexpr (MB > 1) _tile_loadd(2, c + 16 * ldc, sc);
    if constexpr (MB > 1 && NB > 1) _tile_loadd(3, c + 16 * ldc + 16, sc);
  } else {
    _tile_zero(0);
    if constexpr (NB > 1) _tile_zero(1);
    if constexpr (MB > 1) _tile_zero(2);
    if constexpr (MB > 1 && NB > 1) _tile_zero(3);
  }
  for (int p = 0; p < k; p += 32) {
    _tile_loadd(4, a + p, sa);
    if constexpr (MB > 1) _tile_loadd(5, a + 16 * lda + p, sa);
    _tile_loadd(6, b + p * 16, 64);  // k/2 pair rows of 32 bf16: row p/2 at p * 16
    if constexpr (NB > 1) _tile_loadd(7, b + b_panel + p * 16, 64);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (NB > 1) _tile_dpbf16ps(1, 4, 7);
    if constexpr (MB > 1) _tile_dpbf16ps(2, 5, 6);
    if constexpr (MB > 1 && NB > 1) _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, c, sc);
  if constexpr (NB > 1) _tile_stored(1, c + 16, sc);
  if constexpr (MB > 1) _tile_stored(2, c + 16 * ldc, sc);
  if constexpr (MB > 1 && NB > 1) _tile_stored(3, c + 16 * ldc + 16, sc);
}

template <int NB>
inline void column_blocks(int m, int k, const u16* a, int lda, const u16* b, i64 b_panel, float* c, int ldc,
                          bool acc) {
  int i = 0;
  for (; i + 32 <= m; i += 32) block<2, NB>(k, a + i * lda, lda, b, b_panel, c + i * ldc, ldc, acc);
  if (i < m) block<1, NB>(k, a + i * lda, lda, b, b_panel, c + i * ldc, ldc, acc);
}

// Column pairs outermost: one 32-column strip of B (k * 64 bytes) stays in
// L1 while the row blocks of A stream past it. The k-sum of every element
// runs in the same order whatever m and n are, so the result of a row does
// not depend on how callers cut the matrix.
void gemm(int m, int n, int k, const u16* a, int lda, const u16* b, i64 b_panel, float* c, int ldc, bool acc) {
  if (m <= 0 || n <= 0) return;
  int j = 0;
  for (; j + 32 <= n; j += 32)
    column_blocks<2>(m, k, a, lda, b + (j / 16) * b_panel, b_panel, c + j, ldc, acc);
  if (j < n) column_blocks<1>(m, k, a, lda, b + (j / 16) * b_panel, b_panel, c + j, ldc, acc);
}

// B = X^T, X rows x cols (rows a multiple of 16, cols of 2, X row-major
// with leading dimension ldx): panel q covers X rows 16q .. 16q+15, and its
// pair row p holds the 32-bit word p (columns 2p, 2p+1) of each of those
// rows. Panel stride cols * 16.
void pack_t(int rows, int cols, const u16* x, int ldx, u16* b) {
  const __m512i lane = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                          _mm512_set1_epi32(ldx / 2));
  for (int q = 0; q < rows; q += 16) {
    const int* src = reinterpret_cast<const int*>(x + static_cast<i64>(q) * ldx);
    u16* dst = b + static_cast<i64>(q) * cols;
    for (int p = 0; p < cols / 2; ++p)
      _mm512_storeu_si512(dst + p * 32, _mm512_i32gather_epi32(lane, src + p, 4));
  }
}

// B = X, X rows x cols (rows a multiple of 2, cols of 16): panel q covers
// columns 16q .. 16q+15, its pair row p interleaves X rows 2p and 2p+1.
// Panel stride b_panel (rows * 16 for a matrix of its own; more when X is
// a slice of the rows of a larger packed matrix).
void pack_n(int rows, int cols, const u16* x, int ldx, u16* b, i64 b_panel) {
  for (int q = 0; q < cols; q += 16) {
    u16* dst = b + static_cast<i64>(q / 16) * b_panel;
    for (int p = 0; p < rows / 2; ++p) {
      const u16* r0 = x + static_cast<i64>(2 * p) * ldx + q;
      const __m512i lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(r0)));
      const __m512i hi = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(r0 + ldx)));
      _mm512_storeu_si512(dst + p * 32, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
    }
  }
}

// y (cols x rows, leading dimension ldy) = x^T for x rows x cols (ldx).
// Used once per key tile, so plain scalar code.
void transpose(int rows, int cols, const u16* x, int ldx, u16* y, int ldy) {
  for (int c = 0; c < cols; ++c)
    for (int r = 0; r < rows; ++r) y[static_cast<i64>(c) * ldy + r] = x[static_cast<i64>(r) * ldx + c];
}

// 2^x for the probabilities that are rounded to bf16 (8 significant bits)
// right after: x = n + f with n = floor(x), f in [0, 1) from one VREDUCEPS;
// 2^f by a degree-4 polynomial fitted for relative error on [0, 1)
// (2.6e-6 at most, 1/1500 of a bf16 ulp; the LSE stays within 3e-6 of
// fp32), and 2^n applied by VSCALEFPS, which scales by 2^floor(its second
// operand). x is clamped at -200 first so that -inf (masked keys) gives
// 2^-200 = 0 rather than NaN; a NaN argument (-inf * 0 under a zero scale)
// also gives 0, since VMAXPS returns its second operand when the first is
// NaN. 11 vector operations per 16 probabilities with the softmax around
// it, against 14 for round-to-nearest plus a degree-5 series.
inline __m512 exp2_ps(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-200.0f));
  const __m512 f = _mm512_reduce_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);  // x - floor(x)
  __m512 p = _mm512_set1_ps(1.353414772e-02f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.201149941e-02f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.414427340e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.930038387e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.000002593e+00f));
  return _mm512_scalef_ps(p, x);
}

// bf16 (round to nearest even) of 16 floats.
inline __m256i to_bf16(__m512 v) { return reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)); }

// The forward's online softmax over one score tile (flash_kernels.h,
// SoftmaxTile), in two passes over the rows: first every row's max (the
// reductions of different rows are independent, so they pipeline instead
// of each exposing its latency before its row's exponentials can start)
// and the rescale factors alpha = 2^(m_old - m_new) of 16 rows per vector;
// then P and the row sums. alpha comes from the same polynomial as P; the
// same alpha scales l and O, so its error cancels in O / l.
void softmax_tile(const SoftmaxTile& t) {
  constexpr int kMaxRows = 64;
  alignas(64) float m_new[kMaxRows], alpha[kMaxRows];
  const __m512 vm = _mm512_set1_ps(t.mul);
  for (int i = 0; i < t.rows; ++i) {
    const float* s = t.s + static_cast<i64>(i) * t.lds;
    __m512 mx = _mm512_loadu_ps(s);
    for (int j = 16; j < t.n; j += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(s + j));
    const float m_tile = _mm512_reduce_max_ps(mx) * t.mul;
    m_new[i] = m_tile > t.m[i] ? m_tile : t.m[i];
  }
  for (int i = 0; i < t.rows; i += 16) {
    const __mmask16 live = t.rows - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (t.rows - i)) - 1u);
    const __m512 mo = _mm512_maskz_loadu_ps(live, t.m + i), mn = _mm512_maskz_loadu_ps(live, m_new + i);
    // -inf - -inf (rows with nothing visible yet) is NaN, which exp2_ps maps to 0.
    _mm512_store_ps(alpha + i, exp2_ps(_mm512_sub_ps(mo, mn)));
  }
  for (int i = 0; i < t.rows; ++i) {
    const float* s = t.s + static_cast<i64>(i) * t.lds;
    u16* p = t.p + static_cast<i64>(i) * t.ldp;
    if (m_new[i] == -__builtin_inff()) {  // nothing visible in this row yet
      for (int j = 0; j < t.n; j += 16) _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + j), _mm256_setzero_si256());
      continue;
    }
    const __m512 vs = _mm512_set1_ps(m_new[i]);
    const float* keep = t.keep ? t.keep + static_cast<i64>(i) * t.ldk : nullptr;
    __m512 sum = _mm512_setzero_ps();
    for (int j = 0; j < t.n; j += 16) {
      const __m512 e = exp2_ps(_mm512_fmsub_ps(_mm512_loadu_ps(s + j), vm, vs));
      sum = _mm512_add_ps(sum, e);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + j),
                          to_bf16(keep ? _mm512_mul_ps(e, _mm512_loadu_ps(keep + j)) : e));
    }
    const float a = alpha[i];  // 0 on the row's first visible tile (m_old = -inf)
    t.l[i] = t.l[i] * a + _mm512_reduce_add_ps(sum);
    t.m[i] = m_new[i];
    if (a != 1.0f) {
      float* o = t.o + static_cast<i64>(i) * t.ldo;
      const __m512 va = _mm512_set1_ps(a);
      for (int c = 0; c < t.o_cols; c += 16) _mm512_storeu_ps(o + c, _mm512_mul_ps(_mm512_loadu_ps(o + c), va));
    }
  }
  for (int i = t.rows; i < t.rows_pad; ++i)
    for (int j = 0; j < t.n; j += 16)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(t.p + static_cast<i64>(i) * t.ldp + j), _mm256_setzero_si256());
}

void grad_tile(const GradTile& g) {
  const __m512 vm = _mm512_set1_ps(g.mul);
  const __m256i zero = _mm256_setzero_si256();
  for (int r = 0; r < g.rows_pad; r += 2) {
    __m256i ds_pair[2][16];  // only touched when g.ds_vnni is set; cols <= 256
    for (int h = 0; h < 2; ++h) {
      const int row = r + h;
      const float* s = g.s + static_cast<i64>(row) * g.ld;
      const float* dp = g.dp + static_cast<i64>(row) * g.ld;
      u16* pout = g.p ? g.p + static_cast<i64>(row) * g.ldp : nullptr;
      u16* dsout = g.ds + static_cast<i64>(row) * g.ldds;
      for (int c = 0; c < g.cols; c += 16) {
        __m256i ph = zero, dh = zero;
        if (row < g.rows_valid && c < g.cols_valid) {
          const __m512 lse = g.lse_row ? _mm512_set1_ps(g.lse_row[row]) : _mm512_loadu_ps(g.lse_col + c);
          const __m512 dd = g.d_row ? _mm512_set1_ps(g.d_row[row]) : _mm512_loadu_ps(g.d_col + c);
          __m512 pv = exp2_ps(_mm512_fmsub_ps(_mm512_loadu_ps(s + c), vm, lse));
          __m512 dpv = _mm512_loadu_ps(dp + c);
          if (g.keep) {
            alignas(64) float kv[16];
            for (int l = 0; l < 16; ++l) kv[l] = g.keep[row * g.keep_rs + (c + l) * g.keep_cs];
            const __m512 k = _mm512_load_ps(kv);
            dpv = _mm512_mul_ps(dpv, k);
            const __m512 ds = _mm512_mul_ps(pv, _mm512_sub_ps(dpv, dd));
            pv = _mm512_mul_ps(pv, k);
            dh = to_bf16(ds);
          } else {
            dh = to_bf16(_mm512_mul_ps(pv, _mm512_sub_ps(dpv, dd)));
          }
          // Columns past cols_valid inside this chunk are padding: zero.
          if (c + 16 > g.cols_valid) {
            const __mmask16 live = static_cast<__mmask16>((1u << (g.cols_valid - c)) - 1u);
            pv = _mm512_maskz_mov_ps(live, pv);
            dh = _mm256_maskz_mov_epi16(live, dh);
          }
          ph = to_bf16(pv);
        }
        if (pout) _mm256_storeu_si256(reinterpret_cast<__m256i*>(pout + c), ph);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dsout + c), dh);
        if (g.ds_vnni) ds_pair[h][c / 16] = dh;
      }
    }
    if (g.ds_vnni)
      for (int c = 0; c < g.cols; c += 16) {
        const __m512i lo = _mm512_cvtepu16_epi32(ds_pair[0][c / 16]);
        const __m512i hi = _mm512_cvtepu16_epi32(ds_pair[1][c / 16]);
        _mm512_storeu_si512(g.ds_vnni + static_cast<i64>(c) * g.rows_pad + r * 16,
                            _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
      }
  }
}

// Row copies in and out of the tensors (one call per tile instead of a
// memcpy or a scalar conversion loop per row: at seqlen 1024 those were
// 13% of the forward).
void load_rows(int n, int rows_pad, int d, const u16* src, i64 src_stride, u16* dst, int ld) {
  for (int r = 0; r < rows_pad; ++r) {
    u16* out = dst + static_cast<i64>(r) * ld;
    const u16* in = src + static_cast<i64>(r) * src_stride;
    for (int c = 0; c < ld; c += 32) {
      const int live = r < n ? d - c : 0;
      const __mmask32 k = live >= 32 ? ~__mmask32(0) : live > 0 ? __mmask32((1u << live) - 1u) : __mmask32(0);
      _mm512_storeu_si512(out + c, _mm512_maskz_loadu_epi16(k, in + c));
    }
  }
}

void store_rows(int n, int d, const float* src, int lds, const float* mul, u16* dst, i64 dst_stride) {
  for (int r = 0; r < n; ++r) {
    const __m512 m = _mm512_set1_ps(mul[r]);
    const float* in = src + static_cast<i64>(r) * lds;
    u16* out = dst + static_cast<i64>(r) * dst_stride;
    for (int c = 0; c < d; c += 16) {
      const __mmask16 k = d - c >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (d - c)) - 1u);
      const __m256i h = to_bf16(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, in + c), m));
      _mm256_mask_storeu_epi16(out + c, k, h);
    }
  }
}

void release() { _tile_release(); }

constexpr AmxKernels kTable{"amx",        begin,     gemm,       pack_t, pack_n, transpose, softmax_tile, grad_tile,
                             load_rows, store_rows, release};

}  // namespace
}  // namespace amx

const AmxKernels& kernels_amx() { return amx::kTable; }

}  // namespace flashattn::detail::cpu_kernels
