// KV-cache kernels for bf16, every head_dim of kKvTiles (dispatch.h). One
// file per dtype so that a 2-core build compiles them in parallel.
#include "kvcache.cuh"

namespace flashattn::detail::sm80 {
template void launch_kvcache<__nv_bfloat16, 64>(const KvParams&, cudaStream_t);
template int kvcache_ctas_per_sm<__nv_bfloat16, 64>(int);
template void launch_kvcache<__nv_bfloat16, 128>(const KvParams&, cudaStream_t);
template int kvcache_ctas_per_sm<__nv_bfloat16, 128>(int);
template void launch_kvcache<__nv_bfloat16, 256>(const KvParams&, cudaStream_t);
template int kvcache_ctas_per_sm<__nv_bfloat16, 256>(int);
}  // namespace flashattn::detail::sm80
