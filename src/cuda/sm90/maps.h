// The TMA maps of the Hopper kernels' operands, built on the host for each
// launch (passed as __grid_constant__ kernel parameters).
#pragma once

#include <cstdint>

#include "../common.cuh"
#include "../ptx/sm90.cuh"

namespace flashattn::detail::sm90 {

enum class Side { q, k };  // rows of the query side (q, out, dout) or the key side (k, v)

// A [batch, seqlen, heads, head_dim] operand of element type T as (d,
// seqlen, heads, batch) with boxes of kMapBoxCols<T, kD> columns (one
// swizzled row: 128 bytes, or 64 for e4m3 at head_dim 64) x box_rows rows;
// a packed varlen one (batch stride 0, rows of every sequence one after
// the other) as one sequence of all its rows (seq_coords in scheduler.h
// gives a sequence's first row). data may be null for an empty tensor only
// when the map is never read: then `fallback` (a valid 16-byte aligned
// address) is mapped instead.
template <class T, int kD>
constexpr int kMapBoxCols = (kD * ptx::sm90::tma_elem<T>().bytes < 128 ? kD * ptx::sm90::tma_elem<T>().bytes : 128) /
                            ptx::sm90::tma_elem<T>().bytes;

template <class T, int kD>
CUtensorMap make_operand_map(const cuda::Params& p, Side side, const void* data, const void* fallback, int heads,
                             std::int64_t ss, std::int64_t sh, std::int64_t sb, int box_rows, const char* what) {
  const bool q_side = side == Side::q;
  const std::int64_t rows =
      p.is_varlen() ? (q_side ? p.total_q : p.total_k) : (q_side ? p.seqlen_q : p.seqlen_k);
  const std::int64_t batch = p.is_varlen() ? 1 : p.batch;
  return ptx::sm90::make_tensor_map_bshd(rows > 0 && data != nullptr ? data : fallback, ptx::sm90::tma_elem<T>(), kD,
                                         rows, heads, batch, ss, sh, sb, kMapBoxCols<T, kD>, box_rows, what);
}

}  // namespace flashattn::detail::sm90
