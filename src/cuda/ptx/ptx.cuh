// The PTX instructions of the sm_80 path, in one place: ldmatrix (shared
// memory -> mma fragments), mma.sync.m16n8k16 (tensor cores, fp32
// accumulation) and cp.async (global -> shared copies that bypass the
// registers, so loads of the next tile overlap the current tile's math).
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace flashattn::detail::ptx {

// v, opaque to the compiler (an empty asm it cannot see through): what
// derives from it is computed where it is used instead of being hoisted out
// of a loop as an invariant and held in registers through the loop, where
// the kernels with the fullest register files have none to spare.
template <class T>
__device__ __forceinline__ T opaque(T v) {
  static_assert(sizeof(T) == 4, "a 32-bit register");
  asm volatile("" : "+r"(v));
  return v;
}

__device__ __forceinline__ std::uint32_t smem_addr(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

// Four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i.
__device__ __forceinline__ void ldmatrix_x4(std::uint32_t (&r)[4], std::uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// As ldmatrix_x4, each matrix transposed on the way (for operands stored
// k-major when the instruction wants them n-major, and vice versa).
__device__ __forceinline__ void ldmatrix_x4_trans(std::uint32_t (&r)[4], std::uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// D = A(16x16, row) * B(16x8, col) + D, fp32 accumulators.
template <class T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0,
                                          std::uint32_t b1);

template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0,
                                                  std::uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const std::uint32_t (&a)[4],
                                                         std::uint32_t b0, std::uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 16-byte global -> shared copy; when !valid the destination is zero-filled
// and nothing is read (src-size 0), which is how tiles past the end of a
// sequence get their zero rows. L2::128B: a miss fills the whole 128-byte
// line (the callers copy rows of 64 bytes or more, whose neighbours the
// same or the next CTA reads). Measured on the KV-cache kernel (H100,
// batch 64, 8K keys; ncu, docs/results/ncu): DRAM at 85% of its peak
// without the hint, 91% with it (cuDNN's kernel on the same bytes: 92%).
__device__ __forceinline__ void cp_async_16(std::uint32_t dst, const void* src, bool valid) {
  const int src_size = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_size));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// Wait until at most n groups of this thread are still in flight.
template <int n>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(n) : "memory");
}

// min(x, y), NaN when either is NaN (fminf returns the other operand, so
// fminf(NaN, 0) would turn a NaN score into probability 1). Host callable
// for the host tests of the slow path (tests/cuda_host).
__host__ __device__ __forceinline__ float min_nan(float x, float y) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("min.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(x), "f"(y));
  return r;
#else
  return x != x || y != y ? x + y : (x < y ? x : y);
#endif
}

// max(x, y), NaN when either is NaN (fmaxf returns the other operand).
// Host callable, as min_nan.
__host__ __device__ __forceinline__ float max_nan(float x, float y) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(x), "f"(y));
  return r;
#else
  return x != x || y != y ? x + y : (x > y ? x : y);
#endif
}

// 2^x on the special-function unit (one MUFU.EX2; exp2f adds range fixups
// the softmax does not need). ex2(-inf) = +0, which masking relies on.
__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Programmatic dependent launch (sm_90+). A kernel launched with
// cudaLaunchAttributeProgrammaticStreamSerialization may start while the
// kernel before it in the stream still runs, once every CTA of that one
// has called griddep_launch_dependents (or exited); griddep_wait then
// blocks until that kernel has completed and its memory is visible. So
// the second kernel's launch and prologue overlap the first one's tail.
// No-ops when built for older GPUs, where the launch does not ask for it.
__device__ __forceinline__ void griddep_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void griddep_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

}  // namespace flashattn::detail::ptx
