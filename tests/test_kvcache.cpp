// forward_kvcache on the CPU against an oracle written here from the
// documented semantics: the expected cache after the append (rotary in
// double) and naive float64 attention over each sequence's gathered keys.
#include <numeric>

#include "test_util.h"

namespace {

using namespace fa_test;
using flashattn::KvCacheArgs;

double tolerance(DType dt) {
  switch (dt) {
    case DType::f32: return 2e-5;
    case DType::f16: return 3e-3;
    case DType::bf16: return 2e-2;
    default: return 1e-12;
  }
}

// One rounding step of the dtype at magnitude ~1 (cache entries written
// from a float rotation may differ from the double one by that).
double cache_tolerance(DType dt) {
  switch (dt) {
    case DType::f32: return 1e-6;
    case DType::f16: return 2e-3;
    case DType::bf16: return 1.6e-2;
    default: return 1e-12;
  }
}

double round_to(DType dt, double x) {
  unsigned char tmp[8];
  flashattn::detail::store_from_double(tmp, dt, 0, x);
  return flashattn::detail::load_as_double(tmp, dt, 0);
}

struct KvCase {
  DType dtype = DType::bf16;
  std::int64_t batch = 3, seqlen_q = 1, heads_q = 8, heads_k = 1, head_dim = 64;
  std::int64_t seqlen_new = 1;  // 0: no k_new / v_new
  std::int64_t capacity = 96;   // contiguous: seqlen_cache; paged: rounded up to pages
  std::int64_t page_size = 0;   // 0: contiguous
  std::vector<std::int32_t> lens;  // before the append; empty: random in [0, capacity - seqlen_new]
  std::int64_t rotary_dim = 0;
  bool interleaved = true;
  bool causal = true;
  std::int64_t window_left = -1, window_right = -1;
  bool batch_idx = false;
  int num_splits = 1;
};

// A case's buffers, and the oracle's view of them.
struct KvRun {
  KvCase c;
  HostTensor q, kc, vc, kn, vn, o;
  std::vector<float> lse, cos, sin;
  std::vector<std::int32_t> lens, table, bidx;
  std::int64_t max_blocks = 0, num_blocks = 0, rotary_seqlen = 0;

  KvRun(const KvCase& cs, std::uint64_t seed) : c(cs) {
    std::mt19937_64 gen(seed);
    const std::int64_t d = c.head_dim;
    q = HostTensor(c.dtype, c.batch, c.seqlen_q, c.heads_q, d);
    q.buf.fill_uniform(gen());
    if (c.page_size > 0) {
      max_blocks = (c.capacity + c.page_size - 1) / c.page_size;
      c.capacity = max_blocks * c.page_size;
      num_blocks = c.batch * max_blocks + 3;
      kc = HostTensor(c.dtype, num_blocks, c.page_size, c.heads_k, d);
      vc = HostTensor(c.dtype, num_blocks, c.page_size, c.heads_k, d);
    } else {
      const std::int64_t rows = c.batch_idx ? c.batch + 2 : c.batch;
      kc = HostTensor(c.dtype, rows, c.capacity, c.heads_k, d);
      vc = HostTensor(c.dtype, rows, c.capacity, c.heads_k, d);
    }
    kc.buf.fill_uniform(gen());
    vc.buf.fill_uniform(gen());
    if (c.seqlen_new > 0) {
      kn = HostTensor(c.dtype, c.batch, c.seqlen_new, c.heads_k, d);
      vn = HostTensor(c.dtype, c.batch, c.seqlen_new, c.heads_k, d);
      kn.buf.fill_uniform(gen());
      vn.buf.fill_uniform(gen());
    }
    o = HostTensor(c.dtype, c.batch, c.seqlen_q, c.heads_q, d);
    o.buf.poison();
    lse.assign(static_cast<std::size_t>(c.batch * c.heads_q * c.seqlen_q), std::nanf(""));
    lens = c.lens;
    if (lens.empty()) {
      std::uniform_int_distribution<std::int32_t> len(0, static_cast<std::int32_t>(c.capacity - c.seqlen_new));
      for (std::int64_t b = 0; b < c.batch; ++b) lens.push_back(len(gen));
    }
    if (c.page_size > 0) {
      // A shuffled table over all pages; entries past a sequence's last
      // page are -1 (never read).
      std::vector<std::int32_t> pages(static_cast<std::size_t>(num_blocks));
      std::iota(pages.begin(), pages.end(), 0);
      std::shuffle(pages.begin(), pages.end(), gen);
      table.assign(static_cast<std::size_t>(c.batch * max_blocks), -1);
      for (std::int64_t b = 0; b < c.batch; ++b) {
        const std::int64_t used = (lens[b] + c.seqlen_new + c.page_size - 1) / c.page_size;
        for (std::int64_t i = 0; i < used; ++i) table[b * max_blocks + i] = pages[b * max_blocks + i];
      }
    }
    if (c.batch_idx) {
      std::vector<std::int32_t> rows(static_cast<std::size_t>(c.batch + 2));
      std::iota(rows.begin(), rows.end(), 0);
      std::shuffle(rows.begin(), rows.end(), gen);
      bidx.assign(rows.begin(), rows.begin() + c.batch);
    }
    if (c.rotary_dim > 0) {
      rotary_seqlen = c.capacity + c.seqlen_q;
      const std::int64_t half = c.rotary_dim / 2;
      for (std::int64_t pos = 0; pos < rotary_seqlen; ++pos)
        for (std::int64_t i = 0; i < half; ++i) {
          const double theta = pos * std::pow(10000.0, -2.0 * i / c.rotary_dim);
          cos.push_back(static_cast<float>(std::cos(theta)));
          sin.push_back(static_cast<float>(std::sin(theta)));
        }
    }
  }

  KvCacheArgs args() {
    KvCacheArgs a;
    a.q = q.t;
    a.k_cache = kc.t;
    a.v_cache = vc.t;
    if (c.seqlen_new > 0) {
      a.k_new = kn.t;
      a.v_new = vn.t;
    }
    a.cache_seqlens = lens.data();
    if (c.page_size > 0) {
      a.block_table = table.data();
      a.max_blocks_per_seq = max_blocks;
    }
    if (c.batch_idx) a.cache_batch_idx = bidx.data();
    if (c.rotary_dim > 0) {
      a.rotary_cos = cos.data();
      a.rotary_sin = sin.data();
      a.rotary_dtype = DType::f32;
      a.rotary_seqlen = rotary_seqlen;
      a.rotary_dim = c.rotary_dim;
      a.rotary_interleaved = c.interleaved;
    }
    a.o = o.t;
    a.lse = lse.data();
    a.options.causal = c.causal;
    a.options.window_left = c.window_left;
    a.options.window_right = c.window_right;
    a.num_splits = c.num_splits;
    return a;
  }

  // (cache row / page, row in it) of position pos of sequence b.
  std::pair<std::int64_t, std::int64_t> where(std::int64_t b, std::int64_t pos) const {
    if (c.page_size > 0) return {table[b * max_blocks + pos / c.page_size], pos % c.page_size};
    return {c.batch_idx ? bidx[b] : b, pos};
  }

  void rotate(std::vector<double>& x, std::int64_t pos) const {
    const std::int64_t half = c.rotary_dim / 2;
    for (std::int64_t i = 0; i < half; ++i) {
      const std::int64_t ia = c.interleaved ? 2 * i : i, ib = c.interleaved ? 2 * i + 1 : i + half;
      const double co = cos[pos * half + i], si = sin[pos * half + i], x0 = x[ia], x1 = x[ib];
      x[ia] = x0 * co - x1 * si;
      x[ib] = x0 * si + x1 * co;
    }
  }
};

// What the call must leave: the caches with the appended rows, o and lse.
struct KvExpected {
  Dense k_cache, v_cache;
  NaiveResult attn;
};

// Computed from the inputs before the call (the caches are written by it).
KvExpected expected(const KvRun& r) {
  const KvCase& c = r.c;
  const std::int64_t d = c.head_dim, n = c.seqlen_new;
  KvExpected e{gather(r.kc.t), gather(r.vc.t), {}};
  if (n > 0) {
    const Dense kn = gather(r.kn.t), vn = gather(r.vn.t);
    for (std::int64_t b = 0; b < c.batch; ++b)
      for (std::int64_t t = 0; t < n; ++t) {
        const std::int64_t pos = r.lens[b] + t;
        const auto [row, s] = r.where(b, pos);
        for (std::int64_t h = 0; h < c.heads_k; ++h) {
          std::vector<double> x(static_cast<std::size_t>(d));
          for (std::int64_t i = 0; i < d; ++i) x[i] = kn.at(b, t, h, i);
          if (c.rotary_dim > 0) r.rotate(x, pos);
          for (std::int64_t i = 0; i < d; ++i) {
            e.k_cache.at(row, s, h, i) = round_to(c.dtype, x[i]);
            e.v_cache.at(row, s, h, i) = vn.at(b, t, h, i);
          }
        }
      }
  }
  // Sequences packed varlen-style: q rotated (and rounded), keys gathered.
  std::vector<std::int32_t> cu_q{0}, cu_k{0};
  for (std::int64_t b = 0; b < c.batch; ++b) {
    cu_q.push_back(static_cast<std::int32_t>(cu_q.back() + c.seqlen_q));
    cu_k.push_back(static_cast<std::int32_t>(cu_k.back() + r.lens[b] + n));
  }
  Dense qd(1, cu_q.back(), c.heads_q, d), kd(1, cu_k.back(), c.heads_k, d), vd(1, cu_k.back(), c.heads_k, d);
  const Dense q = gather(r.q.t);
  const bool per_row = c.causal || c.window_left >= 0 || c.window_right >= 0;
  for (std::int64_t b = 0; b < c.batch; ++b) {
    for (std::int64_t i = 0; i < c.seqlen_q; ++i)
      for (std::int64_t h = 0; h < c.heads_q; ++h) {
        std::vector<double> x(static_cast<std::size_t>(d));
        for (std::int64_t j = 0; j < d; ++j) x[j] = q.at(b, i, h, j);
        if (c.rotary_dim > 0) {
          r.rotate(x, per_row ? r.lens[b] + i : r.lens[b]);
          for (auto& v : x) v = round_to(c.dtype, v);
        }
        for (std::int64_t j = 0; j < d; ++j) qd.at(0, cu_q[b] + i, h, j) = x[j];
      }
    for (std::int64_t pos = 0; pos < r.lens[b] + n; ++pos) {
      const auto [row, s] = r.where(b, pos);
      for (std::int64_t h = 0; h < c.heads_k; ++h)
        for (std::int64_t j = 0; j < d; ++j) {
          kd.at(0, cu_k[b] + pos, h, j) = e.k_cache.at(row, s, h, j);
          vd.at(0, cu_k[b] + pos, h, j) = e.v_cache.at(row, s, h, j);
        }
    }
  }
  // The library's scale is a float (Options::softmax_scale).
  const double scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  e.attn = naive_attention(qd, kd, vd, scale, window_mask(c.window_left, c.causal ? 0 : c.window_right), nullptr,
                           &cu_q, &cu_k);
  // Packed [hq, total_q] LSE to the call's [batch, hq, seqlen_q].
  std::vector<double> lse(e.attn.lse.size());
  for (std::int64_t b = 0; b < c.batch; ++b)
    for (std::int64_t h = 0; h < c.heads_q; ++h)
      for (std::int64_t i = 0; i < c.seqlen_q; ++i)
        lse[(b * c.heads_q + h) * c.seqlen_q + i] = e.attn.lse[h * cu_q.back() + cu_q[b] + i];
  e.attn.lse = lse;
  return e;
}

void expect_matches(KvRun& r, const KvExpected& e, bool reference = false, int threads = 2) {
  if (reference) flashattn::reference::forward_kvcache(r.args(), threads);
  else flashattn::forward_kvcache(r.args(), Context{.num_threads = threads});
  const DType dt = reference ? DType::f64 : r.c.dtype;
  EXPECT_LT(max_abs_error(gather(r.kc.t).x, e.k_cache.x), cache_tolerance(r.c.dtype)) << "k_cache";
  EXPECT_EQ(max_abs_error(gather(r.vc.t).x, e.v_cache.x), 0.0) << "v_cache";
  EXPECT_LT(rel_error(r.o.values(), e.attn.o.x), tolerance(dt)) << "o";
  EXPECT_LT(max_abs_error(to_double(r.lse), e.attn.lse), reference ? 1e-6 : 2e-4) << "lse";
}

void check(const KvCase& c, int threads = 2) {
  FA_SEEDED(seed);
  KvRun r(c, seed);
  const KvExpected e = expected(r);
  expect_matches(r, e, false, threads);
}

TEST(KvCache, DecodeGqaContiguous) {
  // float64 to float64 accuracy (1e-12), not float32's.
  for (DType dt : {DType::bf16, DType::f16, DType::f32, DType::f64}) {
    SCOPED_TRACE(flashattn::to_string(dt));
    KvCase c;
    c.dtype = dt;
    c.batch = 5;
    c.lens = {0, 1, 37, 95, 64};  // 95 + 1 fills the cache
    c.num_splits = 0;
    check(c);
  }
}

TEST(KvCache, RandomLengthsHeadDims) {
  for (std::int64_t d : {64, 128, 256}) {
    SCOPED_TRACE(d);
    KvCase c;
    c.head_dim = d;
    c.heads_q = 4;
    c.heads_k = 2;
    c.seqlen_q = 3;
    c.seqlen_new = 3;
    c.batch = 4;
    check(c);
  }
}

TEST(KvCache, PagedAppendCrossesPages) {
  for (std::int64_t page : {16, 32}) {
    SCOPED_TRACE(page);
    KvCase c;
    c.page_size = page;
    c.capacity = 4 * page;
    c.batch = 6;
    c.seqlen_q = 5;
    c.seqlen_new = 5;
    c.lens = {0, 1, static_cast<std::int32_t>(page - 2), static_cast<std::int32_t>(page),
              static_cast<std::int32_t>(2 * page - 1), static_cast<std::int32_t>(3 * page + 3)};
    c.heads_q = 8;
    c.heads_k = 1;
    check(c);
  }
}

TEST(KvCache, PagedDecodeLongWithSplits) {
  KvCase c;
  c.page_size = 16;
  c.capacity = 600;
  c.batch = 2;
  c.heads_q = 8;
  c.heads_k = 2;
  c.num_splits = 0;
  c.lens = {599 - 15, 300};
  check(c);
}

// One (sequence, KV head) and 8 threads: num_splits = 0 picks
// 4 splits: at most ceil(1000 / 256) = 4, each filling one more thread.
TEST(KvCache, HeuristicSplitsFillThreads) {
  ASSERT_EQ(flashattn::kvcache_num_splits(1, 1000, 8), 4);
  KvCase c;
  c.batch = 1;
  c.heads_q = 8;
  c.heads_k = 1;
  c.page_size = 16;
  c.capacity = 1008;
  c.lens = {999};
  c.num_splits = 0;
  check(c, 8);
}

TEST(KvCache, RotaryInterleavedAndNot) {
  for (bool inter : {true, false})
    for (bool causal : {true, false})
      for (std::int64_t rd : {32, 64}) {
        SCOPED_TRACE(::testing::Message() << "interleaved " << inter << " causal " << causal << " rotary_dim " << rd);
        KvCase c;
        c.rotary_dim = rd;
        c.interleaved = inter;
        c.causal = causal;
        c.seqlen_q = 4;
        c.seqlen_new = 4;
        c.heads_q = 4;
        c.heads_k = 2;
        check(c);
      }
}

TEST(KvCache, PagedRotary) {
  KvCase c;
  c.page_size = 16;
  c.capacity = 64;
  c.rotary_dim = 64;
  c.interleaved = false;
  c.seqlen_q = 2;
  c.seqlen_new = 2;
  c.lens = {15, 0, 30};
  check(c);
}

TEST(KvCache, WindowWithCache) {
  for (std::int64_t page : {0, 16}) {
    KvCase c;
    c.page_size = page;
    c.capacity = 80;
    c.window_left = 7;
    c.seqlen_q = 6;
    c.seqlen_new = 2;  // q longer than the append: the first rows see the cache only
    c.batch = 4;
    c.lens = {0, 3, 40, 78};
    c.num_splits = 3;
    check(c);
    c.causal = false;
    c.window_right = 2;
    check(c);
  }
}

TEST(KvCache, CacheBatchIdxAndNoAppend) {
  KvCase c;
  c.batch_idx = true;
  c.heads_q = 6;
  c.heads_k = 3;
  check(c);
  c.seqlen_new = 0;
  c.seqlen_q = 4;
  c.causal = false;
  check(c);
}

TEST(KvCache, SpeculativeChunk64) {
  KvCase c;
  c.seqlen_q = 64;
  c.seqlen_new = 64;
  c.capacity = 160;
  c.batch = 2;
  c.heads_q = 2;
  c.heads_k = 1;
  c.page_size = 32;
  c.num_splits = 2;
  check(c);
}

// Every split count gives the unsplit result up to the LSE merge's rounding.
TEST(KvCache, SplitCountsAgree) {
  FA_SEEDED(seed);
  KvCase c;
  c.dtype = DType::f32;
  c.page_size = 16;
  c.capacity = 320;
  c.batch = 3;
  c.heads_q = 8;
  c.heads_k = 2;
  c.seqlen_q = 2;
  c.seqlen_new = 0;  // nothing written: every run reads the same cache
  c.lens = {0, 1, 320};
  KvRun r(c, seed);
  r.args();
  std::vector<double> o1, lse1;
  for (int s = 1; s <= 128; s = s < 8 ? s + 1 : s * 2) {
    SCOPED_TRACE(s);
    r.c.num_splits = s;
    r.o.buf.poison();
    flashattn::forward_kvcache(r.args(), Context{.num_threads = 2});
    if (s == 1) {
      o1 = r.o.values();
      lse1 = to_double(r.lse);
      continue;
    }
    EXPECT_LT(max_abs_error(r.o.values(), o1), 1e-6);
    EXPECT_LT(max_abs_error(to_double(r.lse), lse1), 1e-5);
  }
  const KvExpected e = expected(r);
  EXPECT_LT(rel_error(o1, e.attn.o.x), tolerance(DType::f32));
}

TEST(KvCache, ReferenceMatchesOracle) {
  FA_SEEDED(seed);
  KvCase c;
  c.dtype = DType::f64;
  c.page_size = 16;
  c.capacity = 64;
  c.rotary_dim = 16;
  c.seqlen_q = 3;
  c.seqlen_new = 3;
  c.heads_q = 4;
  c.heads_k = 2;
  c.head_dim = 32;
  KvRun r(c, seed);
  const KvExpected e = expected(r);
  expect_matches(r, e, /*reference=*/true);
}

// Wave efficiency: 128 of 132 workers busy is within 0.95 of the best, 320
// items on 264 workers (1.2 waves, 0.61) is not: 4 splits give 4.85 waves
// (0.97); 8 items on 132 workers: 16 splits fill 128 (0.97).
TEST(KvCache, SplitHeuristic) {
  EXPECT_EQ(flashattn::kvcache_num_splits(128, 4096, 132), 1);
  EXPECT_EQ(flashattn::kvcache_num_splits(256, 4096, 132), 1);
  EXPECT_EQ(flashattn::kvcache_num_splits(320, 8192, 264), 4);
  EXPECT_EQ(flashattn::kvcache_num_splits(8, 100000, 132), 16);
  EXPECT_EQ(flashattn::kvcache_num_splits(8, 131072, 264), 32);
  EXPECT_EQ(flashattn::kvcache_num_splits(8, 512, 132), 2);
  EXPECT_EQ(flashattn::kvcache_num_splits(1, 1 << 20, 1000), 128);
  EXPECT_EQ(flashattn::kvcache_num_splits(4, 0, 16), 1);
  EXPECT_EQ(flashattn::kvcache_num_splits(4, 4096, 1), 1);
}

// ------------------------------------------------------------ errors ---

// The call throws flashattn::Error whose message contains `what`, and
// writes nothing.
void expect_error(KvRun& r, const KvCacheArgs& a, const std::string& what, const Context& ctx = {}) {
  const std::vector<double> k0 = r.kc.values(), v0 = r.vc.values();
  try {
    flashattn::forward_kvcache(a, ctx);
    ADD_FAILURE() << "no error; expected one naming " << what;
  } catch (const flashattn::Error& e) {
    EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("expected"), std::string::npos) << e.what();
  }
  EXPECT_EQ(r.kc.values(), k0);
  EXPECT_EQ(r.vc.values(), v0);
}

KvRun paged_run() {
  KvCase c;
  c.page_size = 16;
  c.capacity = 64;
  c.seqlen_new = 2;
  c.lens = {10, 20, 40};
  return KvRun(c, 7);
}

TEST(KvCacheErrors, BlockTableEntryOutOfRange) {
  KvRun r = paged_run();
  r.table[1 * r.max_blocks + 1] = static_cast<std::int32_t>(r.num_blocks);
  expect_error(r, r.args(), "block_table[1, 1]");
  r.table[1 * r.max_blocks + 1] = -2;
  expect_error(r, r.args(), "block_table[1, 1]");
}

TEST(KvCacheErrors, CacheTooSmallForAppend) {
  KvRun r = paged_run();
  r.lens[2] = 63;  // 63 + 2 > 64
  expect_error(r, r.args(), "cache_seqlens[2]");
  KvCase c;
  c.capacity = 32;
  c.seqlen_new = 4;
  c.lens = {0, 29, 3};
  KvRun rc(c, 8);
  expect_error(rc, rc.args(), "cache_seqlens[1]");
  rc.lens[1] = -1;
  expect_error(rc, rc.args(), "cache_seqlens[1]");
}

TEST(KvCacheErrors, Arguments) {
  KvRun r = paged_run();
  {
    auto a = r.args();
    a.cache_batch_idx = r.lens.data();
    expect_error(r, a, "cache_batch_idx");
  }
  {
    auto a = r.args();
    a.k_new = Tensor{};
    expect_error(r, a, "k_new");
  }
  {
    auto a = r.args();
    a.num_splits = 129;
    expect_error(r, a, "num_splits");
  }
  {
    auto a = r.args();
    a.max_blocks_per_seq = 0;
    expect_error(r, a, "max_blocks_per_seq");
  }
  {
    auto a = r.args();
    a.k_new.heads = 2;
    a.v_new.heads = 2;
    expect_error(r, a, "k_new.heads");
  }
  {
    auto a = r.args();
    a.cache_seqlens = nullptr;
    expect_error(r, a, "cache_seqlens");
  }
  {
    auto a = r.args();
    std::vector<float> cs(64 * 8, 1.0f);
    a.rotary_cos = cs.data();
    expect_error(r, a, "rotary_sin");
    a.rotary_sin = cs.data();
    a.rotary_dim = 16;
    a.rotary_seqlen = 20;  // positions up to 41 are rotated
    expect_error(r, a, "rotary_seqlen");
    a.rotary_seqlen = 64;
    a.rotary_dim = 66;
    expect_error(r, a, "rotary_dim");
    a.rotary_dim = 16;
    a.k_new = Tensor{};
    a.v_new = Tensor{};
    expect_error(r, a, "k_new");
  }
  {
    auto a = r.args();
    a.options.dropout_p = 0.1f;
    expect_error(r, a, "options.dropout_p");
  }
  {
    KvCase c;
    c.page_size = 8;  // below the smallest page
    c.capacity = 32;
    KvRun rp(c, 9);
    expect_error(rp, rp.args(), "page_size");
  }
  {
    KvCase c;
    c.batch_idx = true;
    KvRun rb(c, 10);
    rb.bidx[2] = static_cast<std::int32_t>(rb.c.batch + 2);
    expect_error(rb, rb.args(), "cache_batch_idx[2]");
    rb.bidx[2] = rb.bidx[0];
    expect_error(rb, rb.args(), "cache_batch_idx[2]");
  }
}

TEST(KvCacheErrors, CudaWithoutBackend) {
#if defined(FLASHATTN_HAS_CUDA)
  GTEST_SKIP() << "this build has the CUDA backend (tests/gpu/test_gpu_kvcache.cpp)";
#else
  // An Error naming the device, and nothing written.
  KvRun r = paged_run();
  expect_error(r, r.args(), "ctx.device", Context{.device = Device::cuda});
#endif
}

}  // namespace
