// Hopper backward kernels for f16, every head_dim of kSm90BwdTiles. One file
// per dtype so that a 2-core build compiles them in parallel.
#include "backward.cuh"
#include "launch.h"

namespace flashattn::detail::sm90 {
template void launch_backward<__half, 64>(const Params&, cudaStream_t);
template void launch_backward<__half, 128>(const Params&, cudaStream_t);
template void launch_backward<__half, 256>(const Params&, cudaStream_t);
}  // namespace flashattn::detail::sm90
