// BlockPattern (flashattn.h): the block-sparse patterns as lists, built on
// the host from a kept / partial decision per (query block, key block).
#include <algorithm>
#include <string>

#include "common/fail.h"
#include "common/numeric.h"
#include "flashattn/flashattn.h"

namespace flashattn {
namespace {

using detail::ceil_div;
using detail::fail;

enum class Kept { no, partial, full };

// The grid of blocks and, per query block, the causal rule's verdict on a
// key block: key j is visible from row i iff j <= i + seqlen_k - seqlen_q.
struct Grid {
  std::int64_t sq, sk, bq, bk, nqb, nkb;

  Grid(std::int64_t seqlen_q, std::int64_t seqlen_k, std::int64_t block_q, std::int64_t block_k) {
    if (seqlen_q < 0) fail("seqlen_q", ">= 0", std::to_string(seqlen_q));
    if (seqlen_k < 0) fail("seqlen_k", ">= 0", std::to_string(seqlen_k));
    if (block_q < 1) fail("block_q", ">= 1", std::to_string(block_q));
    if (block_k < 1) fail("block_k", ">= 1", std::to_string(block_k));
    sq = seqlen_q;
    sk = seqlen_k;
    bq = block_q;
    bk = block_k;
    nqb = ceil_div(sq, bq);
    nkb = ceil_div(sk, bk);
  }
  // The key block of query block qb's last row's diagonal (may be < 0 or
  // >= nkb when the lengths differ).
  std::int64_t diagonal(std::int64_t qb) const {
    const std::int64_t last_row = std::min((qb + 1) * bq, sq) - 1;
    const std::int64_t key = last_row + sk - sq;
    return key < 0 ? -1 : key / bk;
  }
  // The causal rule on block (qb, kb): hidden, cut or whole.
  Kept causal(std::int64_t qb, std::int64_t kb) const {
    const std::int64_t first_row = qb * bq, last_row = std::min((qb + 1) * bq, sq) - 1;
    const std::int64_t first_key = kb * bk, last_key = std::min((kb + 1) * bk, sk) - 1;
    if (first_key > last_row + sk - sq) return Kept::no;
    if (last_key <= first_row + sk - sq) return Kept::full;
    return Kept::partial;
  }
};

// Lists from a keep predicate: kept blocks in increasing key order, each to
// the partial or full list by the causal rule (all full without causal).
template <class Keep>
BlockPattern build(const Grid& g, bool causal, Keep keep) {
  BlockPattern p;
  p.block_q = g.bq;
  p.block_k = g.bk;
  p.num_q_blocks = g.nqb;
  p.num_k_blocks = g.nkb;
  p.kv_count.assign(static_cast<std::size_t>(g.nqb), 0);
  p.full_kv_count.assign(static_cast<std::size_t>(g.nqb), 0);
  p.kv_indices.assign(static_cast<std::size_t>(g.nqb * g.nkb), 0);
  p.full_kv_indices.assign(static_cast<std::size_t>(g.nqb * g.nkb), 0);
  for (std::int64_t qb = 0; qb < g.nqb; ++qb)
    for (std::int64_t kb = 0; kb < g.nkb; ++kb) {
      if (!keep(qb, kb)) continue;
      const Kept k = causal ? g.causal(qb, kb) : Kept::full;
      if (k == Kept::no) continue;
      const auto row = static_cast<std::size_t>(qb);
      if (k == Kept::partial)
        p.kv_indices[row * g.nkb + p.kv_count[row]++] = static_cast<std::int32_t>(kb);
      else
        p.full_kv_indices[row * g.nkb + p.full_kv_count[row]++] = static_cast<std::int32_t>(kb);
    }
  return p;
}

}  // namespace

BlockPattern BlockPattern::local_global(std::int64_t seqlen_q, std::int64_t seqlen_k, std::int64_t block_q,
                                        std::int64_t block_k, std::int64_t local, std::int64_t global, bool causal) {
  const Grid g(seqlen_q, seqlen_k, block_q, block_k);
  if (local < 0) fail("local", ">= 0 key blocks", std::to_string(local));
  if (global < 0) fail("global", ">= 0 key blocks", std::to_string(global));
  return build(g, causal, [&](std::int64_t qb, std::int64_t kb) {
    const std::int64_t d = g.diagonal(qb);
    return kb < global || (kb <= d && kb > d - local);
  });
}

BlockPattern BlockPattern::butterfly(std::int64_t seqlen_q, std::int64_t seqlen_k, std::int64_t block_q,
                                     std::int64_t block_k, std::int64_t factors, std::int64_t width, bool causal) {
  const Grid g(seqlen_q, seqlen_k, block_q, block_k);
  if (factors < 0 || factors > 30) fail("factors", "0 to 30 butterfly factors", std::to_string(factors));
  if (width < 1) fail("width", ">= 1 blocks a super-block", std::to_string(width));
  return build(g, causal, [&](std::int64_t qb, std::int64_t kb) {
    const std::int64_t x = (qb / width) ^ (kb / width);
    return x == 0 || ((x & (x - 1)) == 0 && x < (std::int64_t{1} << factors));
  });
}

BlockPattern BlockPattern::strided(std::int64_t seqlen_q, std::int64_t seqlen_k, std::int64_t block_q,
                                   std::int64_t block_k, std::int64_t local, std::int64_t stride, bool causal) {
  const Grid g(seqlen_q, seqlen_k, block_q, block_k);
  if (local < 0) fail("local", ">= 0 key blocks", std::to_string(local));
  if (stride < 1) fail("stride", ">= 1 key blocks", std::to_string(stride));
  return build(g, causal, [&](std::int64_t qb, std::int64_t kb) {
    const std::int64_t d = g.diagonal(qb);
    return kb <= d && (kb > d - local || (d - kb) % stride == 0);
  });
}

BlockMask BlockPattern::mask() const {
  return device_mask(kv_count.data(), kv_indices.data(), full_kv_count.data(), full_kv_indices.data());
}

BlockMask BlockPattern::device_mask(const std::int32_t* count, const std::int32_t* indices,
                                    const std::int32_t* full_count, const std::int32_t* full_indices) const {
  BlockMask m;
  m.block_q = block_q;
  m.block_k = block_k;
  m.batch = 1;
  m.heads = 1;
  m.num_q_blocks = num_q_blocks;
  m.num_k_blocks = num_k_blocks;
  m.kv_count = count;
  m.kv_indices = indices;
  m.full_kv_count = full_count;
  m.full_kv_indices = full_indices;
  m.kv_count_host = kv_count.data();
  m.kv_indices_host = kv_indices.data();
  m.full_kv_count_host = full_kv_count.data();
  m.full_kv_indices_host = full_kv_indices.data();
  return m;
}

double BlockPattern::density() const {
  if (num_q_blocks == 0 || num_k_blocks == 0) return 0.0;
  std::int64_t kept = 0;
  for (std::int64_t qb = 0; qb < num_q_blocks; ++qb)
    kept += kv_count[static_cast<std::size_t>(qb)] + full_kv_count[static_cast<std::size_t>(qb)];
  return static_cast<double>(kept) / static_cast<double>(num_q_blocks * num_k_blocks);
}

}  // namespace flashattn
