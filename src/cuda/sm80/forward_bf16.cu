// forward kernels for bf16, every head_dim of the dispatch table. One file
// per (direction, dtype) so that a 2-core build compiles them in parallel.
#include "forward.cuh"
#include "launch.h"

namespace flashattn::detail::sm80 {
template void launch_forward<__nv_bfloat16, 32>(const Params&, cudaStream_t);
template void launch_forward<__nv_bfloat16, 64>(const Params&, cudaStream_t);
template void launch_forward<__nv_bfloat16, 96>(const Params&, cudaStream_t);
template void launch_forward<__nv_bfloat16, 128>(const Params&, cudaStream_t);
template void launch_forward<__nv_bfloat16, 192>(const Params&, cudaStream_t);
template void launch_forward<__nv_bfloat16, 256>(const Params&, cudaStream_t);
}  // namespace flashattn::detail::sm80
