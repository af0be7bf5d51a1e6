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
  int count = 0;

  __device__ __forceinline__ int stage() const { return count & (kStages - 1); }
  // The phase of the full barrier this use waits for.
  __device__ __forceinline__ std::uint32_t phase() const {
    return static_cast<std::uint32_t>(count / kStages) & 1u;
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

// kStages consecutive mbarriers (8 bytes each) in shared memory, indexed by
// stage.
struct BarrierArray {
  std::uint32_t addr = 0;  // shared-memory address of stage 0's barrier
  __device__ __forceinline__ std::uint32_t operator[](int stage) const {
    return addr + 8u * static_cast<std::uint32_t>(stage);
  }
};

// One ring: its full and empty barriers. The roles' verbs:
//   producer: acquire(s)  wait until every consumer released stage s's
//                         previous use; then copy into it, completing on
//                         full(s) (expect_tx + TMA)
//   consumer: wait(s)     until full(s)'s copy landed
//             release(s)  this thread is done reading the stage
template <int kStages>
struct Ring {
  using State = PipelineState<kStages>;
  BarrierArray full_bars, empty_bars;

  __device__ __forceinline__ std::uint32_t full(State s) const { return full_bars[s.stage()]; }
  __device__ __forceinline__ void acquire(State s) const {
    ptx::sm90::mbar_wait(empty_bars[s.stage()], s.free_phase());
  }
  __device__ __forceinline__ void wait(State s) const { ptx::sm90::mbar_wait(full_bars[s.stage()], s.phase()); }
  __device__ __forceinline__ void release(State s) const { ptx::sm90::mbar_arrive(empty_bars[s.stage()]); }
  // Initialisation, one thread: full barriers complete on `full_arrivals`
  // arrivals plus the transaction bytes, empty ones on `empty_arrivals`.
  __device__ __forceinline__ void init(int full_arrivals, int empty_arrivals) const {
    for (int s = 0; s < kStages; ++s) {
      ptx::sm90::mbar_init(full_bars[s], full_arrivals);
      ptx::sm90::mbar_init(empty_bars[s], empty_arrivals);
    }
  }
};

}  // namespace flashattn::detail::sm90
