// Hopper forward kernels for bf16, every head_dim of kSm90FwdTiles. One file
// per dtype so that a 2-core build compiles them in parallel.
#include "forward.cuh"
#include "launch.h"

namespace flashattn::detail::sm90 {
template void launch_forward<__nv_bfloat16, 64>(const Params&, cudaStream_t);
template void launch_forward<__nv_bfloat16, 128>(const Params&, cudaStream_t);
template void launch_forward<__nv_bfloat16, 256>(const Params&, cudaStream_t);
}  // namespace flashattn::detail::sm90
