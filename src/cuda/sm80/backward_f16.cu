// backward kernels for f16, every head_dim of the dispatch table. One file
// per (direction, dtype) so that a 2-core build compiles them in parallel.
#include "backward.cuh"
#include "launch.h"

namespace flashattn::detail::sm80 {
template void launch_backward<__half, 32>(const Params&, cudaStream_t);
template void launch_backward<__half, 64>(const Params&, cudaStream_t);
template void launch_backward<__half, 96>(const Params&, cudaStream_t);
template void launch_backward<__half, 128>(const Params&, cudaStream_t);
template void launch_backward<__half, 192>(const Params&, cudaStream_t);
template void launch_backward<__half, 256>(const Params&, cudaStream_t);
}  // namespace flashattn::detail::sm80
