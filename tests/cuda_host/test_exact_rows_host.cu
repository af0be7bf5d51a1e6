// The NaN rule's slow path (src/cuda/exact_rows.cuh) recomputes a row over
// the keys it attends (for_keys_of_row) and a key's gradients over the rows
// that attend it (for_rows_of_key). A key too many would let a masked NaN
// in; a key too few would change a finite result. These tests check both
// enumerations against the mask rule itself, element by element, on random
// windows and block lists, on the CPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <set>
#include <vector>

#include "cuda/exact_rows.cuh"

namespace {

using flashattn::detail::WindowMask;
using flashattn::detail::cuda::Params;
using flashattn::detail::cuda::SeqInfo;
namespace exact = flashattn::detail::cuda::exact;

// Block lists of one (batch, head) of the mask, in the kernels' layout:
// partial and full key blocks per query block, and the transposed lists
// (query blocks of each key block, 2 qb + (1 if full), increasing).
struct Lists {
  int nqb = 0, nkb = 0;
  std::vector<std::int32_t> count, idx, fcount, fidx, t_count, t_idx;
  std::vector<int> state;  // nqb x nkb: 0 skip, 1 partial, 2 full
};

Lists random_lists(std::mt19937_64& g, int nqb, int nkb) {
  Lists l;
  l.nqb = nqb;
  l.nkb = nkb;
  l.count.assign(nqb, 0);
  l.fcount.assign(nqb, 0);
  l.idx.assign(static_cast<std::size_t>(nqb) * nkb, -1);
  l.fidx.assign(static_cast<std::size_t>(nqb) * nkb, -1);
  l.state.assign(static_cast<std::size_t>(nqb) * nkb, 0);
  std::uniform_int_distribution<int> pick(0, 2);
  for (int qb = 0; qb < nqb; ++qb)
    for (int kb = 0; kb < nkb; ++kb) {
      const int st = pick(g);
      l.state[qb * nkb + kb] = st;
      if (st == 1) l.idx[qb * nkb + l.count[qb]++] = kb;
      if (st == 2) l.fidx[qb * nkb + l.fcount[qb]++] = kb;
    }
  l.t_count.assign(nkb, 0);
  l.t_idx.assign(static_cast<std::size_t>(nkb) * nqb, -1);
  for (int kb = 0; kb < nkb; ++kb)
    for (int qb = 0; qb < nqb; ++qb) {
      const int st = l.state[qb * nkb + kb];
      if (st != 0) l.t_idx[kb * nqb + l.t_count[kb]++] = 2 * qb + (st == 2 ? 1 : 0);
    }
  return l;
}

// Whether row i attends key j: the sequence, the window, and (sparse) the
// block's state, the window applying inside partial blocks only.
bool attends(const Params& p, const Lists* l, int sq, int sk, int i, int j) {
  if (i < 0 || i >= sq || j < 0 || j >= sk) return false;
  if (l == nullptr) return p.window.visible(i, j, sq, sk);
  const int st = l->state[(i / p.block_q) * l->nkb + j / p.block_k];
  return st == 2 || (st == 1 && p.window.visible(i, j, sq, sk));
}

void check(const Params& p, const Lists* l, int sq, int sk) {
  SeqInfo s;
  s.sq = sq;
  s.sk = sk;
  for (int i = 0; i < sq; ++i) {
    std::vector<int> got;
    exact::for_keys_of_row(p, s, 0, 0, i, [&](int j) { got.push_back(j); });
    std::vector<int> want;
    for (int j = 0; j < sk; ++j)
      if (attends(p, l, sq, sk, i, j)) want.push_back(j);
    std::sort(got.begin(), got.end());
    ASSERT_EQ(got, want) << "keys of row " << i << " (sq " << sq << ", sk " << sk << ", window " << p.window.left
                         << "," << p.window.right << (l ? ", sparse" : "") << ")";
  }
  for (int j = 0; j < sk; ++j) {
    std::vector<int> got;
    exact::for_rows_of_key(p, s, 0, 0, j, [&](int i) { got.push_back(i); });
    std::vector<int> want;
    for (int i = 0; i < sq; ++i)
      if (attends(p, l, sq, sk, i, j)) want.push_back(i);
    std::sort(got.begin(), got.end());
    ASSERT_EQ(got, want) << "rows of key " << j << " (sq " << sq << ", sk " << sk << ", window " << p.window.left
                         << "," << p.window.right << (l ? ", sparse" : "") << ")";
  }
}

WindowMask random_window(std::mt19937_64& g) {
  std::uniform_int_distribution<int> kind(0, 3), w(0, 90);
  WindowMask m;
  switch (kind(g)) {
    case 0: break;                                   // none
    case 1: m.right = 0; break;                      // causal
    case 2: m.left = w(g); m.right = w(g); break;    // sliding
    default: m.left = w(g); break;                   // left only
  }
  return m;
}

TEST(ExactRowsHost, DenseEnumerationsMatchTheWindowRule) {
  std::mt19937_64 g(20261206);
  std::uniform_int_distribution<int> len(1, 300);
  for (int n = 0; n < 60; ++n) {
    Params p;
    p.window = random_window(g);
    check(p, nullptr, len(g), len(g));
  }
}

TEST(ExactRowsHost, SparseEnumerationsMatchTheBlockLists) {
  std::mt19937_64 g(7);
  std::uniform_int_distribution<int> len(1, 400);
  const int blocks[] = {64, 128};
  for (int n = 0; n < 40; ++n) {
    Params p;
    p.window = random_window(g);
    p.block_q = blocks[n % 2];
    p.block_k = blocks[(n / 2) % 2];
    const int sq = len(g), sk = len(g);
    Lists l = random_lists(g, (sq + p.block_q - 1) / p.block_q, (sk + p.block_k - 1) / p.block_k);
    p.bm_count = l.count.data();
    p.bm_idx = l.idx.data();
    p.bm_fcount = l.fcount.data();
    p.bm_fidx = l.fidx.data();
    p.bm_t_count = l.t_count.data();
    p.bm_t_idx = l.t_idx.data();
    p.bm_nqb = l.nqb;
    p.bm_nkb = l.nkb;
    check(p, &l, sq, sk);
  }
}

}  // namespace
