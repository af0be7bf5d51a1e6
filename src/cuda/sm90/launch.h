// Host entry points of the sm_90a kernels: one instantiation per row of
// kSm90FwdTiles / kSm90BwdTiles / kSm90Fp8FwdTiles (dispatch.h) and dtype,
// defined in forward_*.cu and backward_*.cu. Launch only on compute
// capability 9.0: the kernels exist only as sm_90a machine code.
#pragma once

#include <cuda_runtime.h>

#include "../common.cuh"

namespace flashattn::detail::sm90 {

template <class T, int kD>
void launch_forward(const cuda::Params& p, cudaStream_t stream);
// e4m3 Q, K, V (kSm90Fp8FwdTiles), bf16 O: needs p.vt (fp8_vt.h) with
// p.vt_len, and the descales (null = 1).
template <int kD>
void launch_forward_e4m3(const cuda::Params& p, cudaStream_t stream);
// The whole backward: D = rowsum(dO O), the sm90 kernel, the dQ conversion
// and (GQA) the dK/dV reduction. Needs p.dq_atomic and the scratch of
// api.cu's BwdLayout (dsum, dq_accum zeroed, dk/dv accum under GQA).
template <class T, int kD>
void launch_backward(const cuda::Params& p, cudaStream_t stream);

}  // namespace flashattn::detail::sm90
