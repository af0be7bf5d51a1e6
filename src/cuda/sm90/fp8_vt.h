// The FP8 forward's copy of V transposed (V^T). e4m3 wgmma reads both
// operands K-major, so O += P V needs V with the keys contiguous: for each
// (sequence, KV head), head_dim rows of keys. A small kernel
// (fp8_transpose_v in fp8_vt.cuh) writes it into the call's scratch before
// the attention kernel; one extra read and write of V (about 2-3% of the
// forward's time at 8K keys).
//
// Layout, one byte a key:
//   dense   [batch][heads_k][head_dim][vt_len], vt_len = round_up(seqlen_k, 16)
//   varlen  [heads_k][head_dim][vt_len], vt_len = round_up(total_k, 16) + 16 batch,
//           sequence b's keys from column round_up(k_start, 16) + 16 b
// so that every sequence's keys start on a 16-key boundary and its last
// group of 16 ends before the next sequence's first (columns between are
// zeros, written by the same kernel). Within each group of 16 keys the
// columns hold the keys in the order P's A fragment packs them
// (tile::pack_a_e4m3): column c holds key fp8_key_of_column(c).
#pragma once

#include <cstddef>
#include <cstdint>

namespace flashattn::detail::sm90 {

// Column c (0..15) of a 16-key group of V^T holds key fp8_key_of_column(c)
// of the group: the k32 A fragment's position 4 (l % 4) + j of lane l is
// the score column 2 (l % 4) + (j & 1) + 8 (j >> 1) that the lane holds
// (k 16.. likewise, 16 further).
__host__ __device__ constexpr int fp8_key_of_column(int c) { return 2 * (c / 4) + (c & 1) + 8 * ((c >> 1) & 1); }

__host__ __device__ constexpr std::int64_t round_up16(std::int64_t n) { return (n + 15) / 16 * 16; }

// Key columns of one V^T row (see the layout above). keys: seqlen_k
// (dense) or total_k (varlen).
__host__ __device__ constexpr std::int64_t fp8_vt_len(bool varlen, std::int64_t keys, std::int64_t batch) {
  return varlen ? round_up16(keys) + 16 * batch : round_up16(keys);
}

// Bytes of the whole V^T copy.
constexpr std::size_t fp8_vt_bytes(bool varlen, std::int64_t keys, std::int64_t batch, std::int64_t heads_k,
                                   std::int64_t head_dim) {
  return static_cast<std::size_t>(fp8_vt_len(varlen, keys, batch) * heads_k * head_dim * (varlen ? 1 : batch));
}

// The first V^T column of sequence b (k_start: its first key row in k / v).
__host__ __device__ constexpr std::int64_t fp8_vt_key0(bool varlen, std::int64_t k_start, int b) {
  return varlen ? round_up16(k_start) + 16 * static_cast<std::int64_t>(b) : 0;
}

// How many V^T columns, from its first (fp8_vt_key0), sequence b's
// transpose writes: its keys rounded up to 16, and in a varlen batch the
// group of 16 the layout may leave before the next sequence's first column
// (next_key0: fp8_vt_key0 of sequence b + 1, or vt_len after the last), so
// that every column is written and no clear of the scratch goes first.
// The layout leaves 0 or 16 columns there; any other distance comes from
// a malformed cu_seqlens (overlapping spans), whose columns are left alone
// so that no two sequences write one column.
__host__ __device__ constexpr std::int64_t fp8_vt_owned_cols(bool varlen, std::int64_t k_start, std::int64_t sk, int b,
                                                            std::int64_t next_key0) {
  const std::int64_t padded = round_up16(sk);
  if (!varlen) return padded;
  return next_key0 - (fp8_vt_key0(true, k_start, b) + padded) == 16 ? padded + 16 : padded;
}

}  // namespace flashattn::detail::sm90
