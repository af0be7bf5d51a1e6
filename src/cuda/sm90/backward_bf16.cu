// Hopper backward kernels for bf16, every head_dim of kSm90BwdTiles. One file
// per dtype so that a 2-core build compiles them in parallel.
#include "backward.cuh"
#include "launch.h"

namespace flashattn::detail::sm90 {
template void launch_backward<__nv_bfloat16, 64>(const Params&, cudaStream_t);
template void launch_backward<__nv_bfloat16, 128>(const Params&, cudaStream_t);
template void launch_backward<__nv_bfloat16, 256>(const Params&, cudaStream_t);
}  // namespace flashattn::detail::sm90
