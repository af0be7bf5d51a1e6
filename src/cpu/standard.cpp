// Standard attention on the CPU: materialise S = scale QK^T and P =
// softmax(S) for every (sequence, head), as PyTorch's reference attention
// does, then O = dropout(P) V. One template serves two purposes:
//  - Acc = double: the float64 oracle every test is judged against;
//  - Acc = float:  the "standard attention" baseline of the benchmarks.
// The backward recomputes P from Q and K rather than reading O / LSE, so the
// oracle depends on nothing the kernels under test produced.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <omp.h>

#include "backends.h"
#include "common/numeric.h"
#include "common/philox.h"

namespace flashattn::detail {
namespace {

// Copy rows [start, start + n) of head h (tensor batch tb) into a dense
// n x d matrix of Acc, times mul (an e4m3 descale, else 1), and back. The
// product is exact in double (a 4-bit e4m3 significand times a float), so
// the oracle sees the dequantised values exactly; Acc = float rounds once.
template <typename Acc>
void load_rows(const Tensor& t, std::int64_t tb, std::int64_t start, std::int64_t n, std::int64_t h,
               Acc* out, double mul = 1.0) {
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t off = offset_of(t, tb, start + i, h);
    for (std::int64_t c = 0; c < t.head_dim; ++c)
      out[i * t.head_dim + c] = static_cast<Acc>(load_as_double(t.data, t.dtype, off + c) * mul);
  }
}

template <typename Acc>
void store_rows(const Tensor& t, std::int64_t tb, std::int64_t start, std::int64_t n, std::int64_t h,
                const Acc* in) {
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t off = offset_of(t, tb, start + i, h);
    for (std::int64_t c = 0; c < t.head_dim; ++c)
      store_from_double(t.data, t.dtype, off + c, static_cast<double>(in[i * t.head_dim + c]));
  }
}

template <typename Acc>
Acc dot(const Acc* a, const Acc* b, std::int64_t d) {
  Acc s = 0;
#pragma omp simd reduction(+ : s)
  for (std::int64_t c = 0; c < d; ++c) s += a[c] * b[c];
  return s;
}

template <typename Acc>
void axpy(Acc alpha, const Acc* x, Acc* y, std::int64_t d) {
#pragma omp simd
  for (std::int64_t c = 0; c < d; ++c) y[c] += alpha * x[c];
}

// Everything about one (sequence, query head) that the math needs.
struct HeadTask {
  std::int64_t b = 0, h = 0, hk = 0;
  SeqRange r;
  std::int64_t p_offset = 0;  // where this task's sq x sk slice of P starts
};

struct Layout {
  std::vector<HeadTask> tasks;  // ordered (b, h)
  std::int64_t p_elems = 0;
};

Layout make_layout(const Problem& p) {
  Layout L;
  const std::int32_t* cq = p.is_varlen() ? p.varlen->cu_seqlens_q : nullptr;
  const std::int32_t* ck = p.is_varlen() ? p.varlen->cu_seqlens_k : nullptr;
  for (std::int64_t b = 0; b < p.batch; ++b) {
    const SeqRange r = seq_range(p, cq, ck, b);
    for (std::int64_t h = 0; h < p.heads_q; ++h) {
      L.tasks.push_back(HeadTask{b, h, h / p.group(), r, L.p_elems});
      L.p_elems += r.seqlen_q * r.seqlen_k;
    }
  }
  return L;
}

// Visibility of every key of query row i, for one (b, h): the window rule,
// then the block mask on top (see BlockMask in flashattn.h).
struct Visibility {
  const Problem& p;
  HostBlockMask bm;
  std::vector<std::uint8_t> states;  // block states of the current query block

  explicit Visibility(const Problem& prob) : p(prob) {
    if (p.block_mask) {
      bm.m = p.block_mask;
      bm.count = p.block_mask->kv_count;
      bm.indices = p.block_mask->kv_indices;
      bm.full_count = p.block_mask->full_kv_count;
      bm.full_indices = p.block_mask->full_kv_indices;
      states.resize(static_cast<std::size_t>(p.block_mask->num_k_blocks));
    }
  }

  // Fill vis[0, sk) for row i of task t.
  void row(const HeadTask& t, std::int64_t i, std::uint8_t* vis) {
    const std::int64_t sq = t.r.seqlen_q, sk = t.r.seqlen_k;
    if (!p.block_mask) {
      for (std::int64_t j = 0; j < sk; ++j) vis[j] = p.window.visible(i, j, sq, sk);
      return;
    }
    const BlockMask& m = *p.block_mask;
    std::fill(states.begin(), states.end(), kBlockSkip);
    const std::int64_t row_id = bm.row(t.b, t.h, i / m.block_q), nkb = m.num_k_blocks;
    for (std::int32_t n = 0; n < bm.count[row_id]; ++n) states[bm.indices[row_id * nkb + n]] = kBlockPartial;
    if (bm.full_count)
      for (std::int32_t n = 0; n < bm.full_count[row_id]; ++n) states[bm.full_indices[row_id * nkb + n]] = kBlockFull;
    for (std::int64_t j = 0; j < sk; ++j) {
      const std::uint8_t s = states[j / m.block_k];
      vis[j] = s == kBlockFull || (s == kBlockPartial && p.window.visible(i, j, sq, sk));
    }
  }
};

// Dropout scale of row i (0 = dropped, else 1/(1-p)).
template <typename Acc>
void dropout_row(const Problem& p, const DropoutStream& ds, const HeadTask& t, std::int64_t i, Acc* scale_row) {
  const Acc kept = static_cast<Acc>(1.0 / (1.0 - static_cast<double>(p.dropout_p)));
  const auto bh = static_cast<std::uint32_t>(t.b * p.heads_q + t.h);
  ds.fill_row(bh, static_cast<std::uint32_t>(i), 0, t.r.seqlen_k, kept, scale_row);
}

// P (sq x sk, un-dropped), the LSE and the visibility (vis_out, sq x sk:
// the mask rule, 1 = attended) of one head, under the NaN rule (README,
// Semantics):
//  - a row with a NaN score, or a +inf one (overflow), is NaN: P = NaN at
//    every attended key and lse = NaN;
//  - a score of -inf (an attended key whose product overflowed) has P = 0,
//    whatever the row;
//  - empty rows (nothing attended, or every attended score -inf): P = 0,
//    lse = -inf;
//  - keys that are not attended have P = 0 and never enter any sum.
template <typename Acc>
void softmax_probs(const Problem& p, Visibility& vis, const HeadTask& t, const Acc* Q, const Acc* K, Acc* P,
                   double* lse, std::uint8_t* vis_out) {
  const std::int64_t sq = t.r.seqlen_q, sk = t.r.seqlen_k, d = p.head_dim;
  const Acc scale = static_cast<Acc>(p.scale);
  const Acc ninf = -std::numeric_limits<Acc>::infinity();
  for (std::int64_t i = 0; i < sq; ++i) {
    Acc* Pi = P + i * sk;
    std::uint8_t* visible = vis_out + i * sk;
    vis.row(t, i, visible);
    Acc m = ninf;
    bool nan = false;
    for (std::int64_t j = 0; j < sk; ++j) {
      Pi[j] = visible[j] ? scale * dot(Q + i * d, K + j * d, d) : ninf;
      nan |= std::isnan(Pi[j]);
      m = std::max(m, Pi[j]);
    }
    if (nan || m == std::numeric_limits<Acc>::infinity()) {
      for (std::int64_t j = 0; j < sk; ++j)
        Pi[j] = visible[j] && Pi[j] != ninf ? std::numeric_limits<Acc>::quiet_NaN() : Acc(0);
      lse[i] = std::numeric_limits<double>::quiet_NaN();
      continue;
    }
    if (m == ninf) {
      std::fill(Pi, Pi + sk, Acc(0));
      lse[i] = -std::numeric_limits<double>::infinity();
      continue;
    }
    Acc l = 0;
    for (std::int64_t j = 0; j < sk; ++j) {
      Pi[j] = visible[j] ? std::exp(Pi[j] - m) : Acc(0);
      l += Pi[j];
    }
    const Acc inv = Acc(1) / l;
    for (std::int64_t j = 0; j < sk; ++j) Pi[j] *= inv;
    lse[i] = static_cast<double>(m) + std::log(static_cast<double>(l));
  }
}

std::int64_t lse_index(const Problem& p, const Tensor& q, const HeadTask& t, std::int64_t i) {
  if (p.is_varlen()) return t.h * q.seqlen + t.r.q_start + i;
  return (t.b * p.heads_q + t.h) * p.seqlen_q + i;
}

int threads_for(int num_threads) { return num_threads > 0 ? num_threads : omp_get_max_threads(); }

template <typename Acc>
void forward_impl(const Problem& p, const ForwardArgs& a, int num_threads) {
  const Layout L = make_layout(p);
  const std::int64_t d = p.head_dim;
  // P of every head at once, as standard attention keeps it for backward:
  // this is the O(N^2) memory the paper's Figure 3 measures.
  std::vector<Acc> P_all(static_cast<std::size_t>(L.p_elems));
  const DropoutStream ds = DropoutStream::make(p.seed, p.offset, p.dropout_p);
  const auto ntask = static_cast<std::int64_t>(L.tasks.size());

#pragma omp parallel num_threads(threads_for(num_threads))
  {
    Visibility vis(p);
    std::vector<Acc> Q, K, V, O, drop;
    std::vector<double> lse;
    std::vector<std::uint8_t> visible;
#pragma omp for schedule(dynamic)
    for (std::int64_t ti = 0; ti < ntask; ++ti) {
      const HeadTask& t = L.tasks[ti];
      const std::int64_t sq = t.r.seqlen_q, sk = t.r.seqlen_k;
      const std::int64_t tb = p.is_varlen() ? 0 : t.b;
      Q.assign(sq * d, 0);
      K.assign(sk * d, 0);
      V.assign(sk * d, 0);
      O.assign(sq * d, 0);
      lse.assign(sq, 0);
      drop.assign(sk, Acc(1));
      load_rows(a.q, tb, t.r.q_start, sq, t.h, Q.data(), p.descale(p.q_descale, t.b, t.hk));
      load_rows(a.k, tb, t.r.k_start, sk, t.hk, K.data(), p.descale(p.k_descale, t.b, t.hk));
      load_rows(a.v, tb, t.r.k_start, sk, t.hk, V.data(), p.descale(p.v_descale, t.b, t.hk));
      Acc* P = P_all.data() + t.p_offset;
      visible.assign(static_cast<std::size_t>(sq * sk), 0);
      softmax_probs(p, vis, t, Q.data(), K.data(), P, lse.data(), visible.data());
      for (std::int64_t i = 0; i < sq; ++i) {
        if (p.has_dropout()) dropout_row(p, ds, t, i, drop.data());
        // Every attended key enters, even with weight 0 (underflow,
        // dropout): 0 x NaN is NaN, and a NaN / inf value the row attends
        // to must show. Keys not attended never enter.
        for (std::int64_t j = 0; j < sk; ++j)
          if (visible[i * sk + j]) axpy(P[i * sk + j] * drop[j], V.data() + j * d, O.data() + i * d, d);
      }
      store_rows(a.o, tb, t.r.q_start, sq, t.h, O.data());
      if (a.lse)
        for (std::int64_t i = 0; i < sq; ++i) a.lse[lse_index(p, a.q, t, i)] = static_cast<float>(lse[i]);
    }
  }
}

template <typename Acc>
void backward_impl(const Problem& p, const BackwardArgs& a, int num_threads) {
  const Layout L = make_layout(p);
  const std::int64_t d = p.head_dim, group = p.group();
  // Standard attention keeps P (from the forward) and dS at full size.
  std::vector<Acc> P_all(static_cast<std::size_t>(L.p_elems)), dS_all(static_cast<std::size_t>(L.p_elems));
  const DropoutStream ds = DropoutStream::make(p.seed, p.offset, p.dropout_p);
  const Acc scale = static_cast<Acc>(p.scale);
  // One task per (sequence, kv head): the group's query heads are summed
  // into dK/dV in a fixed order, so the result is deterministic.
  const std::int64_t nkv = p.batch * p.heads_k;

#pragma omp parallel num_threads(threads_for(num_threads))
  {
    Visibility vis(p);
    std::vector<Acc> Q, K, V, dO, dQ, dK, dV, drop, dP, Orow;
    std::vector<double> lse;
    std::vector<std::uint8_t> visible;
#pragma omp for schedule(dynamic)
    for (std::int64_t kv = 0; kv < nkv; ++kv) {
      const std::int64_t b = kv / p.heads_k, hk = kv % p.heads_k;
      const HeadTask& first = L.tasks[b * p.heads_q + hk * group];
      const std::int64_t sq = first.r.seqlen_q, sk = first.r.seqlen_k;
      const std::int64_t tb = p.is_varlen() ? 0 : b;
      K.assign(sk * d, 0);
      V.assign(sk * d, 0);
      dK.assign(sk * d, 0);
      dV.assign(sk * d, 0);
      load_rows(a.k, tb, first.r.k_start, sk, hk, K.data());
      load_rows(a.v, tb, first.r.k_start, sk, hk, V.data());
      for (std::int64_t g = 0; g < group; ++g) {
        const HeadTask& t = L.tasks[b * p.heads_q + hk * group + g];
        Q.assign(sq * d, 0);
        dO.assign(sq * d, 0);
        dQ.assign(sq * d, 0);
        lse.assign(sq, 0);
        drop.assign(sk, Acc(1));
        dP.assign(sk, 0);
        load_rows(a.q, tb, t.r.q_start, sq, t.h, Q.data());
        load_rows(a.dout, tb, t.r.q_start, sq, t.h, dO.data());
        Acc* P = P_all.data() + t.p_offset;
        Acc* dS = dS_all.data() + t.p_offset;
        visible.assign(static_cast<std::size_t>(sq * sk), 0);
        softmax_probs(p, vis, t, Q.data(), K.data(), P, lse.data(), visible.data());
        // The same dependency as the forward: every attended pair enters
        // each sum (0 x NaN stays NaN), pairs not attended never do, and a
        // score of -inf has dS = 0 (as P = 0 there, whatever the row).
        for (std::int64_t i = 0; i < sq; ++i) {
          if (p.has_dropout()) dropout_row(p, ds, t, i, drop.data());
          const Acc* Pi = P + i * sk;
          const std::uint8_t* vi = visible.data() + i * sk;
          Acc Di = 0;
          for (std::int64_t j = 0; j < sk; ++j) {
            // dP of the un-dropped probabilities: the dropout scale applies
            // to the gradient flowing back through P_dropped = P * drop.
            dP[j] = vi[j] ? dot(dO.data() + i * d, V.data() + j * d, d) * drop[j] : Acc(0);
            if (vi[j]) Di += Pi[j] * dP[j];
          }
          if (!std::isfinite(Di)) {
            // D_i = rowsum(dO_i o O_i) with O_i = sum_j P_ij drop_j V_j, as
            // the README's backward states it (and the flash backward
            // computes it): equal to sum_j P_ij dP_ij in exact arithmetic,
            // but not with infinities (-inf in dO against values of both
            // signs is one inf through O, NaN through the sum of dP). A
            // finite sum means finite inputs, where both agree.
            Orow.assign(static_cast<std::size_t>(d), Acc(0));
            for (std::int64_t j = 0; j < sk; ++j)
              if (vi[j]) axpy(Pi[j] * drop[j], V.data() + j * d, Orow.data(), d);
            Di = dot(dO.data() + i * d, Orow.data(), d);
          }
          for (std::int64_t j = 0; j < sk; ++j) {
            if (!vi[j]) {
              dS[i * sk + j] = 0;
              continue;
            }
            const bool minus_inf = Pi[j] == Acc(0) &&
                                   scale * dot(Q.data() + i * d, K.data() + j * d, d) ==
                                       -std::numeric_limits<Acc>::infinity();
            dS[i * sk + j] = minus_inf ? Acc(0) : Pi[j] * (dP[j] - Di);
            axpy(scale * dS[i * sk + j], K.data() + j * d, dQ.data() + i * d, d);
            axpy(Pi[j] * drop[j], dO.data() + i * d, dV.data() + j * d, d);
          }
        }
        for (std::int64_t i = 0; i < sq; ++i)
          for (std::int64_t j = 0; j < sk; ++j)
            if (visible[i * sk + j]) axpy(scale * dS[i * sk + j], Q.data() + i * d, dK.data() + j * d, d);
        store_rows(a.dq, tb, t.r.q_start, sq, t.h, dQ.data());
      }
      store_rows(a.dk, tb, first.r.k_start, sk, hk, dK.data());
      store_rows(a.dv, tb, first.r.k_start, sk, hk, dV.data());
    }
  }
}

}  // namespace

void cpu_standard_forward(const Problem& p, const ForwardArgs& a, int num_threads, bool float64) {
  if (float64)
    forward_impl<double>(p, a, num_threads);
  else
    forward_impl<float>(p, a, num_threads);
}

void cpu_standard_backward(const Problem& p, const BackwardArgs& a, int num_threads, bool float64) {
  if (float64)
    backward_impl<double>(p, a, num_threads);
  else
    backward_impl<float>(p, a, num_threads);
}

}  // namespace flashattn::detail
