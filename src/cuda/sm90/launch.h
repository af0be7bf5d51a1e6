// Host entry points of the sm_90a kernels (forward only so far), one
// instantiation per row of kSm90FwdTiles (dispatch.h) and dtype, defined in
// forward_*.cu. Launch only on compute capability 9.0: the kernels exist
// only as sm_90a machine code.
#pragma once

#include <cuda_runtime.h>

#include "../common.cuh"

namespace flashattn::detail::sm90 {

template <class T, int kD>
void launch_forward(const cuda::Params& p, cudaStream_t stream);

}  // namespace flashattn::detail::sm90
