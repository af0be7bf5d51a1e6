// Hopper FP8 forward kernels (e4m3 Q, K, V; bf16 O), every head_dim of
// kSm90Fp8FwdTiles.
#include "forward.cuh"
#include "launch.h"

namespace flashattn::detail::sm90 {
template void launch_forward_e4m3<64>(const Params&, cudaStream_t);
template void launch_forward_e4m3<128>(const Params&, cudaStream_t);
template void launch_forward_e4m3<256>(const Params&, cudaStream_t);
}  // namespace flashattn::detail::sm90
