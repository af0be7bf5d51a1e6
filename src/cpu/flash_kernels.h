// The hot loops of the CPU FlashAttention backend (src/cpu/flash.cpp), in a
// form that is compiled once per instruction set (flash_kernels.inc, built
// by flash_kernels_{avx512,avx2,generic}.cpp with different -m flags) and
// chosen at run time, so one library binary runs everywhere and still uses
// AVX-512 where it exists.
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
};

const Kernels& kernels_avx512();
const Kernels& kernels_avx2();
const Kernels& kernels_generic();

}  // namespace flashattn::detail::cpu_kernels
