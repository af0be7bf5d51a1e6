// Attention over a KV cache on the CPU (forward_kvcache): the append (with
// rotary) and then, per (sequence, KV head, split), an online-softmax pass
// over the split's keys for all the query rows of the KV head's query heads
// at once, so each key and value row is loaded once for the whole group.
// Splits are merged through their LSEs. Acc = float is the backend (double
// for float64 inputs); Acc = double with one split is the float64
// reference (reference::forward_kvcache).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include <omp.h>

#include "backends.h"
#include "common/kvcache.h"
#include "common/numeric.h"

namespace flashattn::detail {
namespace {

constexpr std::int64_t kKeyBlock = 64;

template <class Acc>
void load_row(const void* base, DType t, std::int64_t off, std::int64_t n, Acc* out) {
  switch (t) {
    case DType::f32: {
      const float* p = static_cast<const float*>(base) + off;
      for (std::int64_t i = 0; i < n; ++i) out[i] = static_cast<Acc>(p[i]);
      break;
    }
    case DType::f64: {
      const double* p = static_cast<const double*>(base) + off;
      for (std::int64_t i = 0; i < n; ++i) out[i] = static_cast<Acc>(p[i]);
      break;
    }
    case DType::f16: {
      const std::uint16_t* p = static_cast<const std::uint16_t*>(base) + off;
      for (std::int64_t i = 0; i < n; ++i) out[i] = static_cast<Acc>(f16_to_float(p[i]));
      break;
    }
    case DType::bf16: {
      const std::uint16_t* p = static_cast<const std::uint16_t*>(base) + off;
      for (std::int64_t i = 0; i < n; ++i) out[i] = static_cast<Acc>(bf16_to_float(p[i]));
      break;
    }
    case DType::e4m3: break;  // not a KV-cache dtype: rejected by check_kvcache
  }
}

template <class Acc>
void store_row(void* base, DType t, std::int64_t off, std::int64_t n, const Acc* in) {
  for (std::int64_t i = 0; i < n; ++i) store_from_double(base, t, off + i, static_cast<double>(in[i]));
}

// x rounded to dtype t (as a value stored and read back).
template <class Acc>
void round_row(DType t, std::int64_t n, Acc* x) {
  for (std::int64_t i = 0; i < n; ++i) {
    unsigned char tmp[8];
    store_from_double(tmp, t, 0, static_cast<double>(x[i]));
    x[i] = static_cast<Acc>(load_as_double(tmp, t, 0));
  }
}

int threads_for(int num_threads) { return num_threads > 0 ? num_threads : omp_get_max_threads(); }

template <class Acc>
struct Rotary {
  const KvCacheArgs* a = nullptr;
  std::int64_t dim = 0;  // 0: none

  // Rotates x (rotary_dim leading channels) to position pos; cs: scratch of dim entries.
  void apply(Acc* x, std::int64_t pos, Acc* cs) const {
    const std::int64_t half = dim / 2;
    load_row(a->rotary_cos, a->rotary_dtype, pos * half, half, cs);
    load_row(a->rotary_sin, a->rotary_dtype, pos * half, half, cs + half);
    rotate_row(x, cs, cs + half, dim, a->rotary_interleaved);
  }
};

template <class Acc>
void append(const KvProblem& kp, const KvCacheArgs& a, const KvCacheLayout& kl, const KvCacheLayout& vl,
            const Rotary<Acc>& rot, int threads) {
  const Problem& p = kp.base;
  const std::int64_t n = kp.seqlen_new, d = p.head_dim, hk = p.heads_k;
  const std::size_t es = dtype_size(p.dtype);
  const std::int64_t rows = p.batch * n;
#pragma omp parallel num_threads(threads)
  {
    std::vector<Acc> x(static_cast<std::size_t>(d)), cs(static_cast<std::size_t>(rot.dim));
#pragma omp for schedule(static)
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int64_t b = r / n, t = r % n, pos = a.cache_seqlens[b] + t;
      for (std::int64_t h = 0; h < hk; ++h) {
        const std::int64_t koff = kl.offset(b, pos, h), voff = vl.offset(b, pos, h);
        const std::int64_t kn = offset_of(a.k_new, b, t, h), vn = offset_of(a.v_new, b, t, h);
        if (rot.dim > 0) {
          load_row(a.k_new.data, p.dtype, kn, d, x.data());
          rot.apply(x.data(), pos, cs.data());
          store_row(a.k_cache.data, p.dtype, koff, d, x.data());
        } else {
          std::memcpy(static_cast<char*>(a.k_cache.data) + koff * es,
                      static_cast<const char*>(a.k_new.data) + kn * es, static_cast<std::size_t>(d) * es);
        }
        std::memcpy(static_cast<char*>(a.v_cache.data) + voff * es, static_cast<const char*>(a.v_new.data) + vn * es,
                    static_cast<std::size_t>(d) * es);
      }
    }
  }
}

template <class Acc>
void kvcache_impl(const KvProblem& kp, const KvCacheArgs& a, int num_threads, int num_splits) {
  const Problem& p = kp.base;
  const std::int64_t batch = p.batch, sq = p.seqlen_q, hk = p.heads_k, hq = p.heads_q, group = p.group(),
                     d = p.head_dim, n = kp.seqlen_new;
  const int threads = threads_for(num_threads);
  const KvCacheLayout kl{a.k_cache.stride_batch, a.k_cache.stride_seq, a.k_cache.stride_head, kp.page_size,
                         a.max_blocks_per_seq,   a.block_table,        a.cache_batch_idx};
  const KvCacheLayout vl{a.v_cache.stride_batch, a.v_cache.stride_seq, a.v_cache.stride_head, kp.page_size,
                         a.max_blocks_per_seq,   a.block_table,        a.cache_batch_idx};
  const Rotary<Acc> rot{&a, kp.rotary_dim};
  if (n > 0 && batch > 0) append(kp, a, kl, vl, rot, threads);
  if (batch == 0 || sq == 0) return;

  if (num_splits == 0) {
    std::int64_t max_len = 0;
    for (std::int64_t b = 0; b < batch; ++b) max_len = std::max<std::int64_t>(max_len, a.cache_seqlens[b] + n);
    num_splits = kv_num_splits_heuristic(batch * hk, max_len, threads);
  }
  const int splits = num_splits;
  const std::int64_t rows = group * sq, tasks = batch * hk * splits;
  // Rotated q positions: per row when causal / windowed, else all at L0.
  const bool q_per_row = a.options.causal || a.options.window_left >= 0 || a.options.window_right >= 0;
  const Acc scale = static_cast<Acc>(p.scale);
  const Acc neg_inf = -std::numeric_limits<Acc>::infinity();
  std::vector<Acc> part_o, part_lse;
  if (splits > 1) {
    part_o.resize(static_cast<std::size_t>(tasks * rows * d));
    part_lse.resize(static_cast<std::size_t>(tasks * rows));
  }

#pragma omp parallel num_threads(threads)
  {
    std::vector<Acc> qs(static_cast<std::size_t>(rows * d)), acc(static_cast<std::size_t>(rows * d)),
        m(static_cast<std::size_t>(rows)), l(static_cast<std::size_t>(rows)),
        kb(static_cast<std::size_t>(kKeyBlock * d)), vb(static_cast<std::size_t>(kKeyBlock * d)),
        sc(static_cast<std::size_t>(kKeyBlock)), cs(static_cast<std::size_t>(kp.rotary_dim));
#pragma omp for schedule(dynamic)
    for (std::int64_t task = 0; task < tasks; ++task) {
      const std::int64_t b = task / (hk * splits), h = (task / splits) % hk;
      const int s = static_cast<int>(task % splits);
      const std::int64_t l0 = a.cache_seqlens[b], len = l0 + n;
      const KeyChunk chunk =
          kv_split_chunk(p.window.first_key(0, sq, len), p.window.last_key(sq - 1, sq, len), s, splits);
      for (std::int64_t g = 0; g < group; ++g)
        for (std::int64_t i = 0; i < sq; ++i) {
          Acc* x = qs.data() + (g * sq + i) * d;
          load_row(a.q.data, p.dtype, offset_of(a.q, b, i, h * group + g), d, x);
          if (rot.dim > 0) {
            rot.apply(x, q_per_row ? l0 + i : l0, cs.data());
            round_row(p.dtype, rot.dim, x);
          }
        }
      std::fill(acc.begin(), acc.end(), Acc(0));
      std::fill(m.begin(), m.end(), neg_inf);
      std::fill(l.begin(), l.end(), Acc(0));
      for (std::int64_t j0 = chunk.begin; j0 < chunk.end; j0 += kKeyBlock) {
        const std::int64_t nj = std::min(kKeyBlock, chunk.end - j0);
        for (std::int64_t j = 0; j < nj; ++j) {
          load_row(a.k_cache.data, p.dtype, kl.offset(b, j0 + j, h), d, kb.data() + j * d);
          load_row(a.v_cache.data, p.dtype, vl.offset(b, j0 + j, h), d, vb.data() + j * d);
        }
        for (std::int64_t r = 0; r < rows; ++r) {
          const std::int64_t i = r % sq;
          const std::int64_t lo = std::max(j0, p.window.first_key(i, sq, len)),
                             hi = std::min(j0 + nj - 1, p.window.last_key(i, sq, len));
          if (lo > hi) continue;
          const Acc* x = qs.data() + r * d;
          Acc mx = neg_inf;
          for (std::int64_t j = lo; j <= hi; ++j) {
            const Acc* kr = kb.data() + (j - j0) * d;
            Acc dot = 0;
#pragma omp simd reduction(+ : dot)
            for (std::int64_t c = 0; c < d; ++c) dot += x[c] * kr[c];
            sc[j - j0] = dot * scale;
            mx = std::max(mx, sc[j - j0]);
          }
          const Acc m_new = std::max(m[r], mx);
          const Acc corr = m[r] == neg_inf ? Acc(0) : std::exp(m[r] - m_new);
          Acc* o = acc.data() + r * d;
          Acc sum = l[r] * corr;
#pragma omp simd
          for (std::int64_t c = 0; c < d; ++c) o[c] *= corr;
          for (std::int64_t j = lo; j <= hi; ++j) {
            const Acc pj = std::exp(sc[j - j0] - m_new);
            sum += pj;
            const Acc* vr = vb.data() + (j - j0) * d;
#pragma omp simd
            for (std::int64_t c = 0; c < d; ++c) o[c] += pj * vr[c];
          }
          l[r] = sum;
          m[r] = m_new;
        }
      }
      for (std::int64_t r = 0; r < rows; ++r) {
        Acc* o = acc.data() + r * d;
        const bool empty = l[r] == Acc(0);
        const Acc inv = empty ? Acc(0) : Acc(1) / l[r];
        for (std::int64_t c = 0; c < d; ++c) o[c] *= inv;
        const Acc lse = empty ? neg_inf : m[r] + std::log(l[r]);
        const std::int64_t g = r / sq, i = r % sq, head = h * group + g;
        if (splits == 1) {
          store_row(a.o.data, p.dtype, offset_of(a.o, b, i, head), d, o);
          if (a.lse) a.lse[(b * hq + head) * sq + i] = static_cast<float>(lse);
        } else {
          std::copy(o, o + d, part_o.begin() + (task * rows + r) * d);
          part_lse[static_cast<std::size_t>(task * rows + r)] = lse;
        }
      }
    }
  }
  if (splits == 1) return;

  // Merge: o = sum_s w_s o_s / sum_s w_s with w_s = exp(lse_s - max lse).
  const std::int64_t outs = batch * hq * sq;
#pragma omp parallel num_threads(threads)
  {
    std::vector<Acc> o(static_cast<std::size_t>(d)), w(static_cast<std::size_t>(splits));
#pragma omp for schedule(static)
    for (std::int64_t idx = 0; idx < outs; ++idx) {
      const std::int64_t b = idx / (hq * sq), head = (idx / sq) % hq, i = idx % sq;
      const std::int64_t h = head / group, r = (head % group) * sq + i;
      const std::int64_t task0 = (b * hk + h) * splits;
      Acc mx = neg_inf;
      for (int s = 0; s < splits; ++s) mx = std::max(mx, part_lse[static_cast<std::size_t>((task0 + s) * rows + r)]);
      std::fill(o.begin(), o.end(), Acc(0));
      Acc lse = neg_inf;
      if (mx != neg_inf) {
        Acc sum = 0;
        for (int s = 0; s < splits; ++s) {
          const Acc ls = part_lse[static_cast<std::size_t>((task0 + s) * rows + r)];
          w[s] = ls == neg_inf ? Acc(0) : std::exp(ls - mx);
          sum += w[s];
        }
        for (int s = 0; s < splits; ++s) {
          if (w[s] == Acc(0)) continue;
          const Acc ws = w[s] / sum;
          const Acc* po = part_o.data() + ((task0 + s) * rows + r) * d;
          for (std::int64_t c = 0; c < d; ++c) o[c] += ws * po[c];
        }
        lse = mx + std::log(sum);
      }
      store_row(a.o.data, p.dtype, offset_of(a.o, b, i, head), d, o.data());
      if (a.lse) a.lse[idx] = static_cast<float>(lse);
    }
  }
}

}  // namespace

void cpu_forward_kvcache(const KvProblem& kp, const KvCacheArgs& a, const Context& ctx) {
  // float64 inputs are computed in double, as the other CPU paths do.
  if (kp.base.dtype == DType::f64) kvcache_impl<double>(kp, a, ctx.num_threads, a.num_splits);
  else kvcache_impl<float>(kp, a, ctx.num_threads, a.num_splits);
}

void cpu_reference_kvcache(const KvProblem& kp, const KvCacheArgs& a, int num_threads) {
  kvcache_impl<double>(kp, a, num_threads, 1);
}

}  // namespace flashattn::detail
