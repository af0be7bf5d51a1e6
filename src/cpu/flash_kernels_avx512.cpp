// The micro-kernels built for avx512 (see flash_kernels.inc and sources.cmake).
#define FA_ISA_NS avx512
#define FA_VEC_FLOATS 16
#define FA_MR 6
#define FA_NR 64
#include "flash_kernels.inc"

namespace flashattn::detail::cpu_kernels {
const Kernels& kernels_avx512() { return avx512::kTable; }
}  // namespace flashattn::detail::cpu_kernels
