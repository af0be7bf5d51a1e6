// The warp-specialised CTA shape every Hopper kernel here uses (forward,
// backward, the dQ pass): warpgroup 0 is the producer (TMA copies, the
// LSE / D rows), warpgroups 1 and 2 the consumers (wgmma, elementwise
// work). One CTA an SM (__launch_bounds__(kThreads, 1)).
#pragma once

namespace flashattn::detail::sm90 {

constexpr int kWarpgroup = 128;  // 4 warps: the unit that issues one wgmma
constexpr int kConsumers = 2;
constexpr int kThreads = kWarpgroup * (1 + kConsumers);

// setmaxnreg's split of the launch allocation, 384 x 168 = 64512 registers:
// 128 x 24 + 256 x 240 = 64512 (a larger total would make setmaxnreg.inc
// wait for registers that never come). The producer runs a loop of
// coordinates and barrier waits; a consumer holds its accumulators (the
// forward's O, S and P in flight; the backward's dK, dV, S^T, dP^T; the dQ
// pass's dQ, S, dP) -- each kernel's comments give its peak.
constexpr int kProducerRegs = 24, kConsumerRegs = 240;

}  // namespace flashattn::detail::sm90
