// KV-cache kernels for f16, every head_dim of kKvTiles (dispatch.h). One
// file per dtype so that a 2-core build compiles them in parallel.
#include "kvcache.cuh"

namespace flashattn::detail::sm80 {
template void launch_kvcache<__half, 64>(const KvParams&, cudaStream_t);
template int kvcache_ctas_per_sm<__half, 64>(int);
template void launch_kvcache<__half, 128>(const KvParams&, cudaStream_t);
template int kvcache_ctas_per_sm<__half, 128>(int);
template void launch_kvcache<__half, 256>(const KvParams&, cudaStream_t);
template int kvcache_ctas_per_sm<__half, 256>(int);
}  // namespace flashattn::detail::sm80
