// The NaN rule's slow path (src/cuda/exact_rows.cuh) recomputes a row over
// the keys it attends (for_keys_of_row) and a key's gradients over the rows
// that attend it (for_rows_of_key). A key too many would let a masked NaN
// in; a key too few would change a finite result. These tests check both
// enumerations against the mask rule itself, element by element, on random
// windows and block lists, on the CPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <set>
#include <vector>

#include "cuda/exact_rows.cuh"
#include "test_util.h"

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

// The forward's staging check: a pair of 16-bit values is flagged exactly
// when one of them is NaN or inf, for every bit pattern of each half.
template <class T>
void check_nonfinite2() {
  for (std::uint32_t a = 0; a < 65536; ++a) {
    T x;
    const auto bits = static_cast<std::uint16_t>(a);
    std::memcpy(&x, &bits, 2);
    const bool bad = !std::isfinite(flashattn::detail::cuda::to_float(x));
    const std::uint32_t finite_other = 0x3c00u;  // 1.0 in f16, 1.0078 in bf16: finite either way
    ASSERT_EQ(exact::nonfinite2<T>(a | finite_other << 16), bad) << std::hex << a << " low";
    ASSERT_EQ(exact::nonfinite2<T>(a << 16 | finite_other), bad) << std::hex << a << " high";
  }
}

TEST(ExactRowsHost, StagingCheckFlagsExactlyNanAndInf) {
  check_nonfinite2<__half>();
  check_nonfinite2<__nv_bfloat16>();
}

// The slow path itself, one thread playing the warp (kLanes = 1): on
// random problems with NaN / +-inf injected into Q, K, V and dO, every
// row of O and LSE (forward_row), dQ (dq_row) and dK / dV (dkdv_row,
// summed over the group as reduce_dkdv does) must have the float64
// reference's class (finite, NaN, +inf, -inf) element by element, and
// finite values close to it. The GPU kernels call these functions for the
// rows their fast paths leave non-finite; the GPU check covers that part.
int cls(double x) { return std::isnan(x) ? 1 : x == INFINITY ? 2 : x == -INFINITY ? 3 : 0; }

int compare_classes(const std::vector<double>& got, const std::vector<double>& want, const char* name, double tol) {
  int bad = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const int cg = cls(got[i]), cw = cls(want[i]);
    const bool ok = cg == cw && (cg != 0 || std::abs(got[i] - want[i]) <= tol * (1 + std::abs(want[i])));
    if (!ok && ++bad <= 3) ADD_FAILURE() << name << "[" << i << "]: got " << got[i] << ", want " << want[i];
  }
  return bad;
}

TEST(ExactRowsHost, SlowPathFollowsTheNaNRule) {
  using T = __nv_bfloat16;
  constexpr int kD = 64;
  FA_SEEDED(seed);
  std::mt19937_64 g(seed);
  auto uni = [&](std::int64_t lo, std::int64_t hi) { return std::uniform_int_distribution<std::int64_t>(lo, hi)(g); };
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  int cases = 0;
  for (int n = 0; n < 40; ++n) {
    const int sq = static_cast<int>(uni(1, 80)), sk = static_cast<int>(uni(1, 80));
    const int heads[][2] = {{2, 2}, {4, 2}, {4, 1}};
    const int hq = heads[uni(0, 2)][0], hk = heads[n % 3][1] <= hq ? heads[n % 3][1] : 1;
    const int group = hq % hk == 0 ? hq / hk : 1;
    const int hkk = hq / group;
    flashattn::Options opt;
    const int kind = static_cast<int>(uni(0, 2));
    if (kind == 1) opt.causal = true;
    if (kind == 2) {
      opt.window_left = uni(0, 40);
      opt.window_right = uni(0, 40);
    }
    if (n % 3 == 2) {
      opt.dropout_p = 0.2f;
      opt.seed = static_cast<std::uint64_t>(uni(0, 1000));
    }
    SCOPED_TRACE(::testing::Message() << "sq " << sq << " sk " << sk << " hq " << hq << " hk " << hkk << " kind "
                                      << kind << " dropout " << opt.dropout_p);
    fa_test::HostTensor q(flashattn::DType::bf16, 1, sq, hq, kD), k(flashattn::DType::bf16, 1, sk, hkk, kD), v(flashattn::DType::bf16, 1, sk, hkk, kD),
        dout(flashattn::DType::bf16, 1, sq, hq, kD);
    q.buf.fill_uniform(seed + 4 * n);
    k.buf.fill_uniform(seed + 4 * n + 1);
    v.buf.fill_uniform(seed + 4 * n + 2);
    dout.buf.fill_uniform(seed + 4 * n + 3);
    fa_test::HostTensor* ts[4] = {&q, &k, &v, &dout};
    std::ostringstream inj;
    for (int m = static_cast<int>(uni(1, 3)); m > 0; --m) {
      const int t = static_cast<int>(uni(0, 3));
      const std::int64_t i = uni(0, ts[t]->buf.size() - 1);
      const double val = uni(0, 2) == 0 ? nan : uni(0, 1) ? inf : -inf;
      ts[t]->buf.set(i, val);
      inj << " " << "qkvd"[t] << "[" << i << "]=" << val;
    }
    SCOPED_TRACE(inj.str());

    // The float64 reference, on the same (bf16-rounded) values.
    auto widen = [](const fa_test::HostTensor& x) {
      fa_test::HostTensor w(flashattn::DType::f64, x.t.batch, x.t.seqlen, x.t.heads, x.t.head_dim);
      for (std::int64_t i = 0; i < x.buf.size(); ++i) w.buf.set(i, x.buf.get(i));
      return w;
    };
    fa_test::HostTensor q64 = widen(q), k64 = widen(k), v64 = widen(v), do64 = widen(dout);
    fa_test::HostTensor o64(flashattn::DType::f64, 1, sq, hq, kD), dq64(flashattn::DType::f64, 1, sq, hq, kD),
        dk64(flashattn::DType::f64, 1, sk, hkk, kD), dv64(flashattn::DType::f64, 1, sk, hkk, kD);
    std::vector<float> lse_ref(static_cast<std::size_t>(hq) * sq);
    flashattn::ForwardArgs fa;
    fa.q = q64.t;
    fa.k = k64.t;
    fa.v = v64.t;
    fa.o = o64.t;
    fa.lse = lse_ref.data();
    fa.options = opt;
    flashattn::reference::forward(fa);
    flashattn::BackwardArgs ba;
    ba.q = q64.t;
    ba.k = k64.t;
    ba.v = v64.t;
    ba.o = o64.t;
    ba.dout = do64.t;
    ba.lse = lse_ref.data();
    ba.dq = dq64.t;
    ba.dk = dk64.t;
    ba.dv = dv64.t;
    ba.options = opt;
    flashattn::reference::backward(ba);

    // The slow path, every row.
    Params p;
    p.q = q.buf.data();
    p.k = k.buf.data();
    p.v = v.buf.data();
    p.dout = dout.buf.data();
    p.q_ss = q.t.stride_seq, p.q_sh = q.t.stride_head;
    p.k_ss = k.t.stride_seq, p.k_sh = k.t.stride_head;
    p.v_ss = v.t.stride_seq, p.v_sh = v.t.stride_head;
    p.do_ss = dout.t.stride_seq, p.do_sh = dout.t.stride_head;
    p.batch = 1, p.heads_q = hq, p.heads_k = hkk, p.group = group, p.seqlen_q = sq, p.seqlen_k = sk;
    p.scale = static_cast<float>(1.0 / std::sqrt(double(kD)));
    p.scale_log2 = static_cast<float>(static_cast<double>(p.scale) * 1.4426950408889634);
    if (opt.causal) p.window.right = 0;
    if (kind == 2) p.window.left = opt.window_left, p.window.right = opt.window_right;
    p.has_dropout = opt.dropout_p > 0.f;
    p.keep_scale = static_cast<float>(1.0 / (1.0 - static_cast<double>(opt.dropout_p)));
    p.dropout = flashattn::detail::DropoutStream::make(opt.seed, opt.offset, opt.dropout_p);
    std::vector<float> lse(static_cast<std::size_t>(hq) * sq), dsum(lse.size());
    p.lse = lse.data();
    p.dsum = dsum.data();
    SeqInfo s;
    s.sq = sq;
    s.sk = sk;
    std::vector<double> o(static_cast<std::size_t>(sq) * hq * kD), dq(o.size()),
        dk(static_cast<std::size_t>(sk) * hkk * kD, 0.0), dv(dk.size(), 0.0);
    for (int h = 0; h < hq; ++h)
      for (int i = 0; i < sq; ++i) {
        float row[kD], l;
        exact::forward_row<T, kD, 1>(p, s, 0, h, i, 0, row, l);
        const std::int64_t r = flashattn::detail::cuda::q_row(p, s, 0, h, i);
        lse[r] = l;
        float dd = 0.f;  // D = rowsum(dO O), O rounded to the output dtype as the kernels store it
        for (int c = 0; c < kD; ++c) {
          const float oc = __bfloat162float(__float2bfloat16_rn(row[c]));
          o[(static_cast<std::size_t>(i) * hq + h) * kD + c] = oc;
          dd += oc * static_cast<float>(dout.buf.get((static_cast<std::int64_t>(i) * hq + h) * kD + c));
        }
        dsum[r] = dd;
      }
    for (int h = 0; h < hq; ++h)
      for (int i = 0; i < sq; ++i) {
        float row[kD];
        exact::dq_row<T, kD, 1>(p, s, 0, h, i, 0, row);
        for (int c = 0; c < kD; ++c) dq[(static_cast<std::size_t>(i) * hq + h) * kD + c] = row[c];
      }
    for (int hh = 0; hh < hkk; ++hh)
      for (int j = 0; j < sk; ++j) {
        float sk_[kD] = {}, sv_[kD] = {};
        for (int gg = 0; gg < group; ++gg) {  // the group's query heads, in order (reduce_dkdv)
          float rk[kD], rv[kD];
          exact::dkdv_row<T, kD, 1>(p, s, 0, hh * group + gg, j, 0, rk, rv);
          for (int c = 0; c < kD; ++c) sk_[c] += rk[c], sv_[c] += rv[c];
        }
        for (int c = 0; c < kD; ++c) {
          dk[(static_cast<std::size_t>(j) * hkk + hh) * kD + c] = sk_[c];
          dv[(static_cast<std::size_t>(j) * hkk + hh) * kD + c] = sv_[c];
        }
      }
    compare_classes(o, o64.buf.to_double(), "o", 3e-2);
    compare_classes(std::vector<double>(lse.begin(), lse.end()), std::vector<double>(lse_ref.begin(), lse_ref.end()),
                    "lse", 1e-3);
    compare_classes(dq, dq64.buf.to_double(), "dq", 5e-2);
    compare_classes(dk, dk64.buf.to_double(), "dk", 5e-2);
    compare_classes(dv, dv64.buf.to_double(), "dv", 5e-2);
    ++cases;
  }
  std::printf("slow-path NaN/inf cases run: %d\n", cases);
}

}  // namespace
