// The micro-kernels built for generic (see flash_kernels.inc and sources.cmake).
#define FA_ISA_NS generic
#define FA_VEC_FLOATS 4
#define FA_MR 1
#define FA_NR 32
#include "flash_kernels.inc"

namespace flashattn::detail::cpu_kernels {
const Kernels& kernels_generic() { return generic::kTable; }
}  // namespace flashattn::detail::cpu_kernels
