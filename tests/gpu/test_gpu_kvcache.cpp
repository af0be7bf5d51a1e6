// forward_kvcache on the GPU against the float64 reference
// (reference::forward_kvcache on the exact f64 twins of the 16-bit inputs).
//
// Accuracy rule (gpu_harness.h): err(kvcache) <= 2 err(standard) + floor for
// O and LSE, where "standard" is the cuBLAS path (Algorithm::standard) run
// in the same dtype over the same keys: the sequences packed varlen-style
// from the cache the call left, with q rotated and rounded as the call
// rotates it. The appended cache rows must match the reference's (k within
// one rounding of the dtype, v exactly); every other cache element must be
// left bit for bit. Cache rows no sequence uses (past each L0, unused pages
// and cache rows) hold NaN, which must not reach any output. Outputs are
// poisoned before each call; every split count of a case is judged alone
// and against the first.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>
#include <random>

#include "common/kvcache.h"
#include "gpu_harness.h"

namespace {

using namespace fa_gpu;
using flashattn::KvCacheArgs;

double round_to(DType dt, double x) {
  unsigned char tmp[8];
  flashattn::detail::store_from_double(tmp, dt, 0, x);
  return flashattn::detail::load_as_double(tmp, dt, 0);
}

// Relative size of one rounding step (an ulp at magnitude 1) of the dtype:
// a k row rotated in fp32 may round to the neighbour of the float64 one.
double ulp(DType dt) { return dt == DType::bf16 ? 1.0 / 128 : 1.0 / 1024; }

struct KvCase {
  DType dtype = DType::bf16;
  std::int64_t batch = 4, sq = 1, hq = 8, hk = 1, d = 128, n = 1;
  std::int64_t capacity = 300;  // contiguous: seqlen_cache; paged: rounded up to pages
  std::int64_t page = 0;        // 0: contiguous
  std::vector<std::int32_t> lens;  // before the append; empty: 0, 1, then random
  std::int64_t rotary_dim = 0;
  bool interleaved = true, rotary_f32 = true;
  bool causal = false;
  std::int64_t window_left = -1, window_right = -1;
  bool batch_idx = false;
  bool host_copies = true;       // hand cache_seqlens_host & co. (else device arrays only)
  std::vector<int> splits{1};    // each count is run

  std::string describe() const {
    std::ostringstream os;
    os << flashattn::to_string(dtype) << " b" << batch << " sq" << sq << " hq" << hq << " hk" << hk << " d" << d
       << " new" << n << (page > 0 ? " page" + std::to_string(page) : " contiguous") << " cap" << capacity;
    if (batch_idx) os << " batch_idx";
    if (rotary_dim > 0)
      os << " rotary" << rotary_dim << (interleaved ? " interleaved" : " halves") << (rotary_f32 ? " f32" : " qdtype");
    if (causal) os << " causal";
    if (window_left >= 0 || window_right >= 0) os << " window(" << window_left << "," << window_right << ")";
    if (!host_copies) os << " device-only indices";
    return os.str();
  }
};

struct KvOut {
  std::vector<double> o, lse;
};

class KvRunner {
 public:
  KvRunner(const KvCase& cs, std::uint64_t seed) : c(cs), gen(seed) {
    if (c.page > 0) {
      max_blocks = (c.capacity + c.page - 1) / c.page;
      c.capacity = max_blocks * c.page;
    }
    if (c.lens.empty()) {
      std::uniform_int_distribution<std::int32_t> len(0, static_cast<std::int32_t>(c.capacity - c.n));
      for (std::int64_t b = 0; b < c.batch; ++b) c.lens.push_back(b < 2 ? static_cast<std::int32_t>(b) : len(gen));
    }
    const std::int64_t rows = c.page > 0 ? c.batch * max_blocks + 3 : (c.batch_idx ? c.batch + 2 : c.batch);
    const std::int64_t seq = c.page > 0 ? c.page : c.capacity;
    q.emplace(c.dtype, c.batch, c.sq, c.hq, c.d, false);
    kc.emplace(c.dtype, rows, seq, c.hk, c.d, false);
    vc.emplace(c.dtype, rows, seq, c.hk, c.d, false);
    o.emplace(c.dtype, c.batch, c.sq, c.hq, c.d, false);
    q->randomize(gen());
    kc->randomize(gen());
    vc->randomize(gen());
    if (c.n > 0) {
      kn.emplace(c.dtype, c.batch, c.n, c.hk, c.d, false);
      vn.emplace(c.dtype, c.batch, c.n, c.hk, c.d, false);
      kn->randomize(gen());
      vn->randomize(gen());
    }
    if (c.page > 0) {
      std::vector<std::int32_t> pages(static_cast<std::size_t>(rows));
      std::iota(pages.begin(), pages.end(), 0);
      std::shuffle(pages.begin(), pages.end(), gen);
      table.assign(static_cast<std::size_t>(c.batch * max_blocks), -1);  // unused entries: never read
      for (std::int64_t b = 0; b < c.batch; ++b)
        for (std::int64_t i = 0; i < (c.lens[b] + c.n + c.page - 1) / c.page; ++i)
          table[b * max_blocks + i] = pages[b * max_blocks + i];
    }
    if (c.batch_idx) {
      std::vector<std::int32_t> r(static_cast<std::size_t>(rows));
      std::iota(r.begin(), r.end(), 0);
      std::shuffle(r.begin(), r.end(), gen);
      bidx.assign(r.begin(), r.begin() + c.batch);
    }
    // NaN in every cache element no sequence holds before the call.
    std::vector<std::uint8_t> used(static_cast<std::size_t>(rows * seq));
    for (std::int64_t b = 0; b < c.batch; ++b)
      for (std::int64_t pos = 0; pos < c.lens[b]; ++pos) {
        const auto [row, s] = where(b, pos);
        used[row * seq + s] = 1;
      }
    for (std::int64_t row = 0; row < rows; ++row)
      for (std::int64_t s = 0; s < seq; ++s)
        if (!used[row * seq + s])
          for (std::int64_t h = 0; h < c.hk; ++h)
            for (std::int64_t i = 0; i < c.d; ++i) {
              const std::int64_t at = flashattn::detail::offset_of(kc->host, row, s, h) + i;
              kc->hbuf.set(at, std::nan(""));
              vc->hbuf.set(at, std::nan(""));
            }
    kc->set_from_host();
    vc->set_from_host();
    kc0 = kc->hbuf.to_double();
    vc0 = vc->hbuf.to_double();
    if (c.rotary_dim > 0) {
      rotary_seqlen = c.capacity + c.sq;
      const std::int64_t half = c.rotary_dim / 2;
      for (std::int64_t pos = 0; pos < rotary_seqlen; ++pos)
        for (std::int64_t i = 0; i < half; ++i) {
          const double theta = pos * std::pow(10000.0, -2.0 * i / c.rotary_dim);
          // Tables of q's dtype hold the rounded values; the reference gets
          // the same values in f32.
          cos.push_back(static_cast<float>(c.rotary_f32 ? std::cos(theta) : round_to(c.dtype, std::cos(theta))));
          sin.push_back(static_cast<float>(c.rotary_f32 ? std::sin(theta) : round_to(c.dtype, std::sin(theta))));
        }
      HostBuffer hc(c.rotary_f32 ? DType::f32 : c.dtype, static_cast<std::int64_t>(cos.size()));
      HostBuffer hs(c.rotary_f32 ? DType::f32 : c.dtype, static_cast<std::int64_t>(sin.size()));
      for (std::size_t i = 0; i < cos.size(); ++i) {
        hc.set(static_cast<std::int64_t>(i), cos[i]);
        hs.set(static_cast<std::int64_t>(i), sin[i]);
      }
      const std::size_t bytes = cos.size() * flashattn::dtype_size(hc.dtype());
      dcos = DeviceBuffer(bytes);
      dsin = DeviceBuffer(bytes);
      dcos.upload(hc.data());
      dsin.upload(hs.data());
    }
    dlens = to_device(c.lens);
    if (!table.empty()) dtable = to_device(table);
    if (!bidx.empty()) dbidx = to_device(bidx);
    lse_dev = DeviceBuffer(static_cast<std::size_t>(std::max<std::int64_t>(c.batch * c.hq * c.sq, 1)) * sizeof(float));
  }

  // (cache row or page, row in it) of position pos of sequence b.
  std::pair<std::int64_t, std::int64_t> where(std::int64_t b, std::int64_t pos) const {
    if (c.page > 0) return {table[b * max_blocks + pos / c.page], pos % c.page};
    return {c.batch_idx ? bidx[b] : b, pos};
  }

  KvCacheArgs args(bool device) {
    KvCacheArgs a;
    a.q = device ? q->dev : q->host64;
    a.k_cache = device ? kc->dev : kc->host64;
    a.v_cache = device ? vc->dev : vc->host64;
    if (c.n > 0) {
      a.k_new = device ? kn->dev : kn->host64;
      a.v_new = device ? vn->dev : vn->host64;
    }
    a.cache_seqlens = device ? static_cast<const std::int32_t*>(dlens.get()) : c.lens.data();
    if (c.page > 0) {
      a.block_table = device ? static_cast<const std::int32_t*>(dtable.get()) : table.data();
      a.max_blocks_per_seq = max_blocks;
    }
    if (c.batch_idx) a.cache_batch_idx = device ? static_cast<const std::int32_t*>(dbidx.get()) : bidx.data();
    if (device && c.host_copies) {
      a.cache_seqlens_host = c.lens.data();
      if (c.page > 0) a.block_table_host = table.data();
      if (c.batch_idx) a.cache_batch_idx_host = bidx.data();
    }
    if (c.rotary_dim > 0) {
      const bool dev_dtype = device && !c.rotary_f32;
      a.rotary_cos = device ? dcos.get() : static_cast<const void*>(cos.data());
      a.rotary_sin = device ? dsin.get() : static_cast<const void*>(sin.data());
      a.rotary_dtype = dev_dtype ? c.dtype : DType::f32;
      a.rotary_seqlen = rotary_seqlen;
      a.rotary_dim = c.rotary_dim;
      a.rotary_interleaved = c.interleaved;
    }
    a.o = device ? o->dev : o->host64;
    a.options.causal = c.causal;
    a.options.window_left = c.window_left;
    a.options.window_right = c.window_right;
    return a;
  }

  // The float64 reference; leaves the appended rows in the f64 caches.
  KvOut reference() {
    std::vector<float> lse(static_cast<std::size_t>(std::max<std::int64_t>(c.batch * c.hq * c.sq, 1)));
    KvCacheArgs a = args(false);
    a.lse = lse.data();
    flashattn::reference::forward_kvcache(a);
    return {rows_of(o->host64, c.sq), {lse.begin(), lse.begin() + c.batch * c.hq * c.sq}};
  }

  // The call on the GPU (the cache as it was before, outputs poisoned).
  KvOut run(int splits) {
    kc->dbuf.upload(kc->hbuf.data());  // hbuf still holds the original cache
    vc->dbuf.upload(vc->hbuf.data());
    o->poison_device();
    lse_dev.poison();
    KvCacheArgs a = args(true);
    a.lse = static_cast<float*>(lse_dev.get());
    a.num_splits = splits;
    Context ctx;
    ctx.device = Device::cuda;
    flashattn::forward_kvcache(a, ctx);
    cuda_ok(cudaDeviceSynchronize(), "forward_kvcache");
    o->fetch();
    std::vector<float> lse(static_cast<std::size_t>(std::max<std::int64_t>(c.batch * c.hq * c.sq, 1)));
    lse_dev.download(lse.data());
    return {rows_of(o->host, c.sq), {lse.begin(), lse.begin() + c.batch * c.hq * c.sq}};
  }

  // The cache the GPU left, against the reference's appended rows and the
  // untouched original elsewhere.
  void check_cache() {
    HostBuffer k(c.dtype, kc->hbuf.size()), v(c.dtype, vc->hbuf.size());
    kc->dbuf.download(k.data());
    vc->dbuf.download(v.data());
    std::vector<std::uint8_t> appended(static_cast<std::size_t>(kc->hbuf.size()));
    std::int64_t bad_k = 0, bad_v = 0, changed = 0;
    for (std::int64_t b = 0; b < c.batch; ++b)
      for (std::int64_t t = 0; t < c.n; ++t) {
        const auto [row, s] = where(b, c.lens[b] + t);
        for (std::int64_t h = 0; h < c.hk; ++h)
          for (std::int64_t i = 0; i < c.d; ++i) {
            const std::int64_t at = flashattn::detail::offset_of(kc->host, row, s, h) + i;
            appended[at] = 1;
            const double want_k = kc->h64buf.get(at), want_v = vc->h64buf.get(at);
            bad_k += std::abs(k.get(at) - round_to(c.dtype, want_k)) <= ulp(c.dtype) * std::max(1.0, std::abs(want_k))
                         ? 0 : 1;
            bad_v += v.get(at) == want_v ? 0 : 1;
          }
      }
    const auto same = [](double x, double y) { return x == y || (std::isnan(x) && std::isnan(y)); };
    for (std::int64_t at = 0; at < kc->hbuf.size(); ++at)
      if (!appended[at]) changed += (same(k.get(at), kc0[at]) && same(v.get(at), vc0[at])) ? 0 : 1;
    EXPECT_EQ(bad_k, 0) << "appended k rows off the reference by more than one rounding";
    EXPECT_EQ(bad_v, 0) << "appended v rows differ from v_new";
    EXPECT_EQ(changed, 0) << "cache elements outside the appended rows were written";
  }

  // Algorithm::standard over the sequences packed from the cache the GPU
  // left (16-bit) and q rotated + rounded like the call's.
  KvOut standard() {
    HostBuffer k(c.dtype, kc->hbuf.size()), v(c.dtype, vc->hbuf.size());
    kc->dbuf.download(k.data());
    vc->dbuf.download(v.data());
    std::vector<std::int64_t> lq, lk;
    for (std::int64_t b = 0; b < c.batch; ++b) {
      lq.push_back(c.sq);
      lk.push_back(c.lens[b] + c.n);
    }
    VarlenBuf vl = make_varlen(lq, lk);
    const std::int64_t tq = std::max<std::int64_t>(vl.total_q, 1), tk = std::max<std::int64_t>(vl.total_k, 1);
    HostBuffer pq(c.dtype, tq * c.hq * c.d), pk(c.dtype, tk * c.hk * c.d), pv(c.dtype, tk * c.hk * c.d);
    const bool per_row = c.causal || c.window_left >= 0 || c.window_right >= 0;
    const std::int64_t half = c.rotary_dim / 2;
    for (std::int64_t b = 0; b < c.batch; ++b) {
      for (std::int64_t i = 0; i < c.sq; ++i)
        for (std::int64_t h = 0; h < c.hq; ++h) {
          std::vector<double> x(static_cast<std::size_t>(c.d));
          for (std::int64_t j = 0; j < c.d; ++j) x[j] = q->hbuf.get(flashattn::detail::offset_of(q->host, b, i, h) + j);
          const std::int64_t pos = per_row ? c.lens[b] + i : c.lens[b];
          for (std::int64_t j = 0; j < half; ++j) {
            const auto pr = flashattn::detail::rotary_pair(j, c.rotary_dim, c.interleaved);
            const double co = cos[pos * half + j], si = sin[pos * half + j], x0 = x[pr.a], x1 = x[pr.b];
            x[pr.a] = x0 * co - x1 * si;
            x[pr.b] = x0 * si + x1 * co;
          }
          for (std::int64_t j = 0; j < c.d; ++j) pq.set(((vl.cu_q[b] + i) * c.hq + h) * c.d + j, x[j]);
        }
      for (std::int64_t pos = 0; pos < c.lens[b] + c.n; ++pos) {
        const auto [row, s] = where(b, pos);
        for (std::int64_t h = 0; h < c.hk; ++h)
          for (std::int64_t j = 0; j < c.d; ++j) {
            const std::int64_t at = flashattn::detail::offset_of(kc->host, row, s, h) + j;
            pk.set(((vl.cu_k[b] + pos) * c.hk + h) * c.d + j, k.get(at));
            pv.set(((vl.cu_k[b] + pos) * c.hk + h) * c.d + j, v.get(at));
          }
      }
    }
    const std::size_t es = flashattn::dtype_size(c.dtype);
    DeviceBuffer dq(static_cast<std::size_t>(pq.size()) * es), dk(static_cast<std::size_t>(pk.size()) * es),
        dv(static_cast<std::size_t>(pv.size()) * es), dout(static_cast<std::size_t>(pq.size()) * es),
        dlse(static_cast<std::size_t>(c.hq * tq) * sizeof(float));
    dq.upload(pq.data());
    dk.upload(pk.data());
    dv.upload(pv.data());
    dout.poison();
    dlse.poison();
    DeviceBuffer dcu_q = to_device(vl.cu_q), dcu_k = to_device(vl.cu_k);
    Varlen dvl = vl.vl;
    dvl.cu_seqlens_q = static_cast<const std::int32_t*>(dcu_q.get());
    dvl.cu_seqlens_k = static_cast<const std::int32_t*>(dcu_k.get());
    dvl.cu_seqlens_q_host = vl.cu_q.data();
    dvl.cu_seqlens_k_host = vl.cu_k.data();
    ForwardArgs f;
    f.q = Tensor::contiguous(dq.get(), c.dtype, 1, tq, c.hq, c.d);
    f.k = Tensor::contiguous(dk.get(), c.dtype, 1, tk, c.hk, c.d);
    f.v = Tensor::contiguous(dv.get(), c.dtype, 1, tk, c.hk, c.d);
    f.o = Tensor::contiguous(dout.get(), c.dtype, 1, tq, c.hq, c.d);
    f.lse = static_cast<float*>(dlse.get());
    f.options.causal = c.causal;
    f.options.window_left = c.window_left;
    f.options.window_right = c.window_right;
    f.options.varlen = &dvl;
    Context ctx;
    ctx.device = Device::cuda;
    ctx.algorithm = Algorithm::standard;
    flashattn::forward(f, ctx);
    cuda_ok(cudaDeviceSynchronize(), "standard forward");
    HostBuffer ho(c.dtype, pq.size());
    dout.download(ho.data());
    std::vector<float> lse(static_cast<std::size_t>(c.hq * tq));
    dlse.download(lse.data());
    // Packed [total_q, hq, d] and [hq, total_q] to the call's [b, sq, hq, d] and [b, hq, sq].
    KvOut r;
    for (std::int64_t b = 0; b < c.batch; ++b)
      for (std::int64_t i = 0; i < c.sq; ++i)
        for (std::int64_t h = 0; h < c.hq; ++h)
          for (std::int64_t j = 0; j < c.d; ++j) r.o.push_back(ho.get(((vl.cu_q[b] + i) * c.hq + h) * c.d + j));
    for (std::int64_t b = 0; b < c.batch; ++b)
      for (std::int64_t h = 0; h < c.hq; ++h)
        for (std::int64_t i = 0; i < c.sq; ++i) r.lse.push_back(lse[h * tq + vl.cu_q[b] + i]);
    return r;
  }

  KvCase c;

 private:
  std::mt19937_64 gen;
  std::int64_t max_blocks = 0, rotary_seqlen = 0;
  std::optional<TensorSet> q, kc, vc, kn, vn, o;
  std::vector<double> kc0, vc0;
  std::vector<float> cos, sin;
  std::vector<std::int32_t> table, bidx;
  DeviceBuffer dcos, dsin, dlens, dtable, dbidx, lse_dev;
};

std::int64_t count_nan(const std::vector<double>& v) {
  return std::count_if(v.begin(), v.end(), [](double x) { return std::isnan(x); });
}

void check_kv(const KvCase& c) {
  SCOPED_TRACE(c.describe());
  FA_SEEDED(seed);
  KvRunner r(c, seed);
  const KvOut ref = r.reference();
  KvOut first;
  double std_o = 0, std_lse = 0;
  for (std::size_t si = 0; si < c.splits.size(); ++si) {
    const int splits = c.splits[si];
    SCOPED_TRACE(::testing::Message() << "num_splits " << splits);
    const KvOut got = r.run(splits);
    if (si == 0) {
      r.check_cache();
      const KvOut st = r.standard();
      EXPECT_EQ(count_nan(st.o), 0) << "standard baseline O has NaN";
      std_o = max_abs_error(st.o, ref.o);
      std_lse = max_abs_error(st.lse, ref.lse);
      EXPECT_LE(rel_error(st.o, ref.o), standard_tolerance(c.dtype, false)) << "standard O vs float64";
      first = got;
    }
    EXPECT_EQ(count_nan(got.o), 0) << "O has NaN: unwritten rows, or NaN cache rows leaked";
    EXPECT_EQ(count_nan(got.lse), 0) << "LSE has NaN";
    const double eo = max_abs_error(got.o, ref.o), el = max_abs_error(got.lse, ref.lse);
    if (verbose())
      std::printf("[ errors   ] %s splits %d | O %.2e (standard %.2e) LSE %.2e (standard %.2e)\n",
                  c.describe().c_str(), splits, eo, std_o, el, std_lse);
    constexpr double kFloor = 1e-4;
    EXPECT_LE(eo, 2 * std_o + kFloor) << "O: max error " << eo << " vs standard " << std_o;
    EXPECT_LE(el, 2 * std_lse + kFloor) << "LSE: max error " << el << " vs standard " << std_lse;
    if (si > 0) {
      // Splits change only rounding: P rounded against each split's own
      // max, and the fp32 merge; a few units of the dtype at most.
      EXPECT_LE(max_abs_error(got.o, first.o), 4 * ulp(c.dtype)) << "O differs from num_splits " << c.splits[0];
      EXPECT_LE(max_abs_error(got.lse, first.lse), 1e-3) << "LSE differs from num_splits " << c.splits[0];
    }
  }
}

class KvCacheGpu : public GpuTest {};

TEST_F(KvCacheGpu, QuickGpuDecodeGqa) {
  for (DType dt : {DType::bf16, DType::f16}) {
    KvCase c;
    c.dtype = dt;
    c.batch = 5;
    c.hq = 32;
    c.hk = 4;  // 8:1
    c.splits = {1, 0, 3};
    check_kv(c);
  }
}

TEST_F(KvCacheGpu, DecodeHeadDimsAndGroups) {
  for (std::int64_t d : {64, 128, 256})
    for (std::int64_t group : {1, 8}) {
      KvCase c;
      c.d = d;
      c.hk = 2;
      c.hq = 2 * group;
      c.batch = 6;
      c.capacity = 1000;
      c.splits = {1, 4};
      check_kv(c);
    }
}

TEST_F(KvCacheGpu, NoAppendLengthsZeroAndOne) {
  KvCase c;
  c.n = 0;
  c.lens = {0, 1, 2, 130, 299};
  c.batch = 5;
  c.splits = {1, 2};
  check_kv(c);
  c.sq = 4;
  c.causal = true;
  c.lens = {0, 1, 5, 300};
  c.batch = 4;
  check_kv(c);
}

TEST_F(KvCacheGpu, ContiguousBatchIdx) {
  for (bool idx : {false, true})
    for (bool host : {true, false}) {
      KvCase c;
      c.batch_idx = idx;
      c.host_copies = host;
      c.sq = 4;
      c.n = 4;
      c.causal = true;
      c.hq = 8;
      c.hk = 8;  // 1:1
      c.splits = {1, 3};
      check_kv(c);
    }
}

TEST_F(KvCacheGpu, PagedPageSizes) {
  // 48 and 208: multiples of 16 that are no powers of two (the kernel steps
  // through pages by addition, not by shifts); three splits start a split
  // in the middle of a page.
  for (std::int64_t page : {16, 48, 64, 208, 256})
    for (std::int64_t sq : {1, 4}) {
      KvCase c;
      c.page = page;
      c.capacity = 4 * page;
      c.batch = 6;
      c.sq = sq;
      c.n = 5;  // crosses a page where L0 sits just below a boundary
      c.causal = sq > 1;
      c.lens = {0, 1, static_cast<std::int32_t>(page - 2), static_cast<std::int32_t>(page),
                static_cast<std::int32_t>(2 * page - 3), static_cast<std::int32_t>(3 * page + 3)};
      c.splits = {1, 2, 3, 0};
      check_kv(c);
    }
}

// A thread's rows of a tile are 16 (d 64), 8 (d 128) or 4 (d 256) apart:
// every head_dim walks a page of 48 rows its own way.
TEST_F(KvCacheGpu, PagedOddPageEveryHeadDim) {
  for (std::int64_t d : {64, 128, 256}) {
    KvCase c;
    c.d = d;
    c.page = 48;
    c.capacity = 500;
    c.batch = 4;
    c.hq = 8;
    c.hk = 2;
    c.n = 3;
    c.lens = {47, 95, 200, 461};
    c.splits = {1, 3};
    check_kv(c);
  }
}

TEST_F(KvCacheGpu, PagedDeviceOnlyIndices) {
  KvCase c;
  c.page = 16;
  c.capacity = 512;
  c.host_copies = false;  // splits = 0 then assumes the capacity as the longest length
  c.hq = 16;
  c.hk = 2;
  c.splits = {0, 1};
  check_kv(c);
}

TEST_F(KvCacheGpu, Rotary) {
  for (bool inter : {true, false})
    for (bool causal : {true, false})
      for (bool f32 : {true, false}) {
        KvCase c;
        c.rotary_dim = inter ? 64 : 128;
        c.interleaved = inter;
        c.rotary_f32 = f32;
        c.causal = causal;
        c.sq = 4;
        c.n = 4;
        c.hq = 8;
        c.hk = 2;
        c.page = causal ? 16 : 0;
        c.splits = {1, 2};
        check_kv(c);
      }
}

TEST_F(KvCacheGpu, Window) {
  for (std::int64_t page : {0, 64}) {
    KvCase c;
    c.page = page;
    c.capacity = 400;
    c.window_left = 37;
    c.causal = true;
    c.sq = 6;
    c.n = 2;  // q longer than the append: the first rows see the cache only
    c.lens = {0, 3, 200, 390};
    c.splits = {1, 3};
    check_kv(c);
    c.causal = false;
    c.window_right = 2;
    check_kv(c);
    c.sq = 1;  // decode with a sliding window
    c.n = 1;
    c.window_right = -1;
    c.causal = true;
    check_kv(c);
  }
}

TEST_F(KvCacheGpu, SeqlenQ64) {
  // 64 tokens x 8 heads: 512 rows, eight 64-row tiles of one KV head.
  for (std::int64_t hq : {1, 8}) {
    KvCase c;
    c.sq = 64;
    c.n = 64;
    c.hq = hq;
    c.hk = 1;
    c.batch = 2;
    c.capacity = 512;
    c.page = 64;
    c.causal = true;
    c.splits = {1, 2};
    check_kv(c);
  }
}

TEST_F(KvCacheGpu, AllSplitCountsAgree) {
  KvCase c;
  c.batch = 2;
  c.capacity = 2048;
  c.lens = {2047, 1000};
  c.hq = 8;
  c.hk = 1;
  c.splits = {1, 2, 3, 5, 8, 16, 31, 64, 128};
  check_kv(c);
}

TEST_F(KvCacheGpu, RefusesOtherHeadDims) {
  KvCase c;
  c.d = 32;
  FA_SEEDED(seed);
  KvRunner r(c, seed);
  try {
    r.run(1);
    ADD_FAILURE() << "head_dim 32 was accepted";
  } catch (const flashattn::Error& e) {
    EXPECT_NE(std::string(e.what()).find("q.head_dim"), std::string::npos) << e.what();
  }
}

}  // namespace
