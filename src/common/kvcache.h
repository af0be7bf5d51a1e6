// KV-cache pieces shared by the backends (host and device code): where a
// cache position lives, the split-KV schedule and its heuristic, and the
// rotary rotation of one row.
#pragma once

#include <cstdint>

#include "philox.h"  // FA_HOST_DEVICE

namespace flashattn::detail {

// The most splits one (sequence, KV head) is cut into.
constexpr int kKvMaxSplits = 128;
// Keys per split below which splitting further costs more (the combine and
// the extra partial rows) than the parallelism it buys.
constexpr std::int64_t kKvMinKeysPerSplit = 256;
// A split count within this share of the best wave efficiency is as good:
// the smallest such count wins, since every split adds a partial row to
// write and combine.
constexpr double kKvSplitEfficiencyShare = 0.95;

// num_splits = 0's choice. The batch * heads_k work items, each cut into s
// splits, run in waves of num_workers (CPU threads; on CUDA, SMs x the
// attention CTAs an SM holds); a last wave only partly full leaves workers
// idle, so s is chosen by wave efficiency, (items / num_workers) /
// ceil(items / num_workers): the smallest s within kKvSplitEfficiencyShare
// of the best over 1 .. `most` (one split per kKvMinKeysPerSplit keys of
// the longest sequence, at most kKvMaxSplits); `most` itself when even
// that leaves workers idle.
FA_HOST_DEVICE int kv_num_splits_heuristic(std::int64_t batch_heads_k, std::int64_t max_seqlen_k,
                                                  int num_workers) {
  if (batch_heads_k <= 0 || max_seqlen_k <= 0 || num_workers <= 1) return 1;
  std::int64_t most = (max_seqlen_k + kKvMinKeysPerSplit - 1) / kKvMinKeysPerSplit;
  if (most > kKvMaxSplits) most = kKvMaxSplits;
  if (batch_heads_k * most <= num_workers) return static_cast<int>(most);  // not one full wave: all the splits
  auto efficiency = [&](std::int64_t s) {
    const std::int64_t items = batch_heads_k * s;
    const std::int64_t waves = (items + num_workers - 1) / num_workers;
    return static_cast<double>(items) / static_cast<double>(waves * num_workers);
  };
  double best = 0.0;
  for (std::int64_t s = 1; s <= most; ++s)
    if (efficiency(s) > best) best = efficiency(s);
  for (std::int64_t s = 1; s <= most; ++s)
    if (efficiency(s) >= kKvSplitEfficiencyShare * best) return static_cast<int>(s);
  return 1;
}

// Split `split` of `splits` over the key range [first, last] (inclusive;
// empty when first > last): equal chunks in key order, the last ones
// possibly empty. Returns [begin, end).
struct KeyChunk {
  std::int64_t begin = 0, end = 0;
};
FA_HOST_DEVICE KeyChunk kv_split_chunk(std::int64_t first, std::int64_t last, int split, int splits) {
  const std::int64_t n = last >= first ? last - first + 1 : 0;
  const std::int64_t per = (n + splits - 1) / splits;
  std::int64_t b = first + per * split, e = b + per;
  if (e > first + n) e = first + n;
  if (b > e) b = e;
  return KeyChunk{b, e};
}

// Element offset of (position pos, head h, channel 0) of sequence b's cache.
// Paged: page = table[b * max_blocks + pos / page_size]; contiguous: cache
// row = batch_idx ? batch_idx[b] : b. With num_rows > 0 (the CUDA backend)
// the page or row read from the device arrays is clamped into [0,
// num_rows): a call without host copies cannot check those contents, and a
// bad entry must not reach memory outside the cache.
struct KvCacheLayout {
  std::int64_t stride_batch = 0, stride_seq = 0, stride_head = 0;  // of the cache tensor
  std::int64_t page_size = 0;                                      // 0: contiguous
  std::int64_t max_blocks = 0;
  const std::int32_t* block_table = nullptr;
  const std::int32_t* batch_idx = nullptr;
  std::int64_t num_rows = 0;  // the cache tensor's batch (pages or rows); 0: no clamp

  FA_HOST_DEVICE std::int64_t clamp_row(std::int64_t row) const {
    if (num_rows <= 0) return row;
    return row < 0 ? 0 : (row >= num_rows ? num_rows - 1 : row);
  }
  // Contiguous: offset of (position 0, h) of sequence b; position pos is
  // pos * stride_seq further.
  FA_HOST_DEVICE std::int64_t row_offset(std::int64_t b, std::int64_t h) const {
    return clamp_row(batch_idx ? batch_idx[b] : b) * stride_batch + h * stride_head;
  }
  FA_HOST_DEVICE std::int64_t offset(std::int64_t b, std::int64_t pos, std::int64_t h) const {
    if (page_size > 0) {
      const std::int64_t page = clamp_row(block_table[b * max_blocks + pos / page_size]);
      return page * stride_batch + (pos % page_size) * stride_seq + h * stride_head;
    }
    return row_offset(b, h) + pos * stride_seq;
  }
};

// The two channels that cos / sin entry i (of rotary_dim / 2) rotates
// together: (2i, 2i+1) when interleaved (GPT-J), (i, i + rotary_dim / 2)
// otherwise (GPT-NeoX).
struct RotaryPair {
  std::int64_t a = 0, b = 0;
};
FA_HOST_DEVICE RotaryPair rotary_pair(std::int64_t i, std::int64_t rotary_dim, bool interleaved) {
  return interleaved ? RotaryPair{2 * i, 2 * i + 1} : RotaryPair{i, i + rotary_dim / 2};
}

// Rotates the first rotary_dim channels of x in place with the cos / sin
// row of its position (rotary_dim / 2 entries each): pairs (2i, 2i+1) when
// interleaved, (i, i + rotary_dim / 2) otherwise.
template <class T>
FA_HOST_DEVICE void rotate_row(T* x, const T* cos, const T* sin, std::int64_t rotary_dim, bool interleaved) {
  for (std::int64_t i = 0; i < rotary_dim / 2; ++i) {
    const RotaryPair r = rotary_pair(i, rotary_dim, interleaved);
    const T x0 = x[r.a], x1 = x[r.b];
    x[r.a] = x0 * cos[i] - x1 * sin[i];
    x[r.b] = x0 * sin[i] + x1 * cos[i];
  }
}

}  // namespace flashattn::detail
