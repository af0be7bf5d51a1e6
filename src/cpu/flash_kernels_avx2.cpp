// The micro-kernels built for avx2 (see flash_kernels.inc and sources.cmake).
#define FA_ISA_NS avx2
#define FA_VEC_FLOATS 8
#define FA_MR 3
#define FA_NR 32
#include "flash_kernels.inc"

namespace flashattn::detail::cpu_kernels {
const Kernels& kernels_avx2() { return avx2::kTable; }
}  // namespace flashattn::detail::cpu_kernels
