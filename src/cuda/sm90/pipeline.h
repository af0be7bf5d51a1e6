// Rings of shared-memory stages guarded by mbarriers, and the state with
// which a producer and its consumers walk them: every Hopper kernel here
// (forward, backward, dQ pass) moves its tiles through such rings instead
// of computing barrier parities at each wait.
//
// A ring of kStages stages has, per stage, a "full" barrier (the producer's
// copy landed: TMA completes its transaction bytes) and an "empty" one (the
// consumers have read the stage: each consumer thread arrives). The n-th
// use of the ring (n = 0, 1, ...) takes stage n % kStages for the
// (n / kStages)-th time, so it waits for phase (n / kStages) & 1 of that
// stage's full barrier, and the producer, before refilling the stage,
// waits for the opposite phase of its empty barrier: in the first round
// that phase counts as already complete (an mbarrier's "previous" phase),
// so the first kStages copies go out at once.
#pragma once

#include <cstdint>

#include "../ptx/sm90.cuh"

namespace flashattn::detail::sm90 {

// Position in a ring: how many uses came before. A value (copied, not
// shared) so that the producer and each consumer keep their own; the
// stage and the phase derive from it. kStages a power of two (2 in every
// table row): the divisions are shifts.
template <int kStages>
struct PipelineState {
  static_assert(kStages > 0 && (kStages & (kStages - 1)) == 0, "stages must be a power of two");
  static constexpr int kLog2Stages = kStages == 1 ? 0 : kStages == 2 ? 1 : kStages == 4 ? 2 : 3;
  int count = 0;  // never negative

  __device__ __forceinline__ int stage() const { return count & (kStages - 1); }
  // The phase of the full barrier this use waits for.
  __device__ __forceinline__ std::uint32_t phase() const {
    return static_cast<std::uint32_t>(count >> kLog2Stages) & 1u;
  }
  // The phase of the empty barrier the producer waits for before this use
  // (the first round's passes at once).
  __device__ __forceinline__ std::uint32_t free_phase() const { return phase() ^ 1u; }
  __device__ __forceinline__ PipelineState operator+(int n) const { return PipelineState{count + n}; }
  __device__ __forceinline__ PipelineState& operator++() {
    ++count;
    return *this;
  }
};

// One ring: kStages full barriers at byte offset kFull of a kernel's
// barrier block and kStages empty ones at kEmpty (8 bytes each). Only the
// block's address is held, so that each barrier's address is that plus a
// constant, as the kernel would write it by hand. The roles' verbs:
//   producer: acquire(s)  wait until every consumer released stage s's
//                         previous use; then copy into it, completing on
//                         full(s) (expect_tx + TMA)
//   consumer: wait(s)     until full(s)'s copy landed
//             release(s)  this thread is done reading the stage
template <int kStages, int kFull, int kEmpty>
struct Ring {
  using State = PipelineState<kStages>;
  std::uint32_t bars;  // shared-memory address of the barrier block

  __device__ __forceinline__ std::uint32_t full_bar(int stage) const { return bars + kFull + 8 * stage; }
  __device__ __forceinline__ std::uint32_t empty_bar(int stage) const { return bars + kEmpty + 8 * stage; }
  __device__ __forceinline__ std::uint32_t full(State s) const { return full_bar(s.stage()); }
  __device__ __forceinline__ void acquire(State s) const { ptx::sm90::mbar_wait(empty_bar(s.stage()), s.free_phase()); }
  __device__ __forceinline__ void wait(State s) const { ptx::sm90::mbar_wait(full_bar(s.stage()), s.phase()); }
  __device__ __forceinline__ void release(State s) const { ptx::sm90::mbar_arrive(empty_bar(s.stage())); }
};

}  // namespace flashattn::detail::sm90
