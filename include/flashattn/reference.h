// The float64 oracle: standard attention (materialised S = scale QK^T and
// P = softmax(S)) computed in double precision on the CPU, with every option
// of the public API and the same semantics. Every test, CPU and GPU, judges
// the kernels against it. Pointers are host pointers; inputs and outputs may
// be of any dtype (f64 keeps the oracle's full precision); with e4m3 inputs
// the descales apply as in flashattn::forward, each element dequantised
// exactly in double, and o may be bf16, f32 or f64. The backward
// recomputes P from Q and K and ignores args.o and args.lse.
#pragma once

#include "flashattn/flashattn.h"

namespace flashattn::reference {

void forward(const ForwardArgs& args, int num_threads = 0);
void backward(const BackwardArgs& args, int num_threads = 0);
// The KV-cache call (flashattn::forward_kvcache) in double: appends into the
// cache like it (the cache is written), then attends with one split
// (args.num_splits is ignored).
void forward_kvcache(const KvCacheArgs& args, int num_threads = 0);

}  // namespace flashattn::reference
