// Host entry points of the sm_80 kernels, one instantiation per row of the
// dispatch table (dispatch.h) and dtype, defined in forward_*.cu / backward_*.cu.
#pragma once

#include <cuda_runtime.h>

#include "../common.cuh"

namespace flashattn::detail::sm80 {

template <class T, int kD>
void launch_forward(const cuda::Params& p, cudaStream_t stream);
template <class T, int kD>
void launch_backward(const cuda::Params& p, cudaStream_t stream);

}  // namespace flashattn::detail::sm80
