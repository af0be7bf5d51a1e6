// BlockPattern (flashattn.h): each pattern's lists equal its definition,
// worked out here per element for the causal split into partial and full
// blocks; a call with a pattern's mask equals the float64 reference with
// the same mask; bad arguments are errors naming them.
#include "test_util.h"

namespace fa_test {
namespace {

using flashattn::BlockPattern;

struct Geometry {
  std::int64_t sq, sk, bq, bk;
};
const Geometry kGeometries[] = {{64, 64, 4, 4}, {50, 70, 4, 8}, {70, 50, 8, 4}, {33, 33, 5, 3}, {1, 9, 4, 4}};

// The kept blocks of a pattern before the causal rule, written from the
// definitions in flashattn.h.
enum class Which { local_global, butterfly, strided };

bool kept_by_definition(Which w, const Geometry& g, std::int64_t qb, std::int64_t kb, std::int64_t a,
                        std::int64_t b) {
  const std::int64_t last_row = std::min((qb + 1) * g.bq, g.sq) - 1;
  const std::int64_t diag_key = last_row + g.sk - g.sq;
  const std::int64_t d = diag_key < 0 ? -1 : diag_key / g.bk;
  switch (w) {
    case Which::local_global: return kb < b || (kb <= d && d - kb < a);
    case Which::butterfly: {
      const std::int64_t x = (qb / b) ^ (kb / b);
      return x == 0 || ((x & (x - 1)) == 0 && x < (std::int64_t{1} << a));
    }
    case Which::strided: return kb <= d && (d - kb < a || (d - kb) % b == 0);
  }
  return false;
}

BlockPattern make(Which w, const Geometry& g, std::int64_t a, std::int64_t b, bool causal) {
  switch (w) {
    case Which::local_global: return BlockPattern::local_global(g.sq, g.sk, g.bq, g.bk, a, b, causal);
    case Which::butterfly: return BlockPattern::butterfly(g.sq, g.sk, g.bq, g.bk, a, b, causal);
    case Which::strided: return BlockPattern::strided(g.sq, g.sk, g.bq, g.bk, a, b, causal);
  }
  throw std::logic_error("pattern");
}

// 0: hidden by the causal rule, 1: cut by it (partial), 2: whole (full),
// counting elements (row i sees key j iff j <= i + sk - sq).
int causal_state(const Geometry& g, std::int64_t qb, std::int64_t kb) {
  std::int64_t seen = 0, all = 0;
  for (std::int64_t i = qb * g.bq; i < std::min((qb + 1) * g.bq, g.sq); ++i)
    for (std::int64_t j = kb * g.bk; j < std::min((kb + 1) * g.bk, g.sk); ++j, ++all) seen += j <= i + g.sk - g.sq;
  return seen == 0 ? 0 : seen == all ? 2 : 1;
}

TEST(BlockPatterns, ListsFollowTheirDefinitions) {
  const std::int64_t params[][3] = {{static_cast<int>(Which::local_global), 2, 1},
                                    {static_cast<int>(Which::local_global), 1, 0},
                                    {static_cast<int>(Which::butterfly), 3, 1},
                                    {static_cast<int>(Which::butterfly), 2, 2},
                                    {static_cast<int>(Which::strided), 2, 3}};
  int checked = 0;
  for (const Geometry& g : kGeometries)
    for (const auto& pr : params)
      for (bool causal : {false, true}) {
        const auto w = static_cast<Which>(pr[0]);
        SCOPED_TRACE(::testing::Message() << "pattern " << pr[0] << " (" << pr[1] << ", " << pr[2] << ") " << g.sq
                                          << "x" << g.sk << " blocks " << g.bq << "x" << g.bk
                                          << (causal ? " causal" : ""));
        const BlockPattern p = make(w, g, pr[1], pr[2], causal);
        const std::int64_t nqb = (g.sq + g.bq - 1) / g.bq, nkb = (g.sk + g.bk - 1) / g.bk;
        ASSERT_EQ(p.num_q_blocks, nqb);
        ASSERT_EQ(p.num_k_blocks, nkb);
        for (std::int64_t qb = 0; qb < nqb; ++qb) {
          std::vector<int> got(static_cast<std::size_t>(nkb), 0);
          const auto r = static_cast<std::size_t>(qb);
          for (int e = 0; e < p.kv_count[r]; ++e) got[p.kv_indices[r * nkb + e]] += 1;
          for (int e = 0; e < p.full_kv_count[r]; ++e) got[p.full_kv_indices[r * nkb + e]] += 2;
          for (int e = 1; e < p.kv_count[r]; ++e) EXPECT_LT(p.kv_indices[r * nkb + e - 1], p.kv_indices[r * nkb + e]);
          for (std::int64_t kb = 0; kb < nkb; ++kb) {
            int want = kept_by_definition(w, g, qb, kb, pr[1], pr[2]) ? 2 : 0;
            if (want && causal) want = causal_state(g, qb, kb);
            EXPECT_EQ(got[kb], want) << "block (" << qb << ", " << kb << ")";
            ++checked;
          }
        }
      }
  std::printf("block pattern lists checked: %d blocks\n", checked);
}

// The flat butterfly's density on a square power-of-two grid is
// width (factors + 1) / blocks.
TEST(BlockPatterns, ButterflyDensity) {
  EXPECT_DOUBLE_EQ(BlockPattern::butterfly(64, 64, 4, 4, 3, 2, false).density(), 2.0 * 4 / 16);
  EXPECT_DOUBLE_EQ(BlockPattern::butterfly(64, 64, 4, 4, 4, 1, false).density(), 5.0 / 16);
  EXPECT_DOUBLE_EQ(BlockPattern::butterfly(64, 64, 4, 4, 0, 16, false).density(), 1.0);
}

// A call with a pattern's mask (flash and standard, CPU) equals the float64
// reference with the same mask, forward and backward.
TEST(BlockPatterns, AttentionWithAPatternMatchesTheReference) {
  FA_SEEDED(seed);
  for (const bool causal : {false, true}) {
    const std::pair<std::int64_t, BlockPattern> pats[] = {{70, BlockPattern::local_global(70, 70, 8, 8, 2, 1, causal)},
                                                           {64, BlockPattern::butterfly(64, 64, 8, 8, 2, 1, causal)},
                                                           {70, BlockPattern::strided(70, 70, 8, 8, 1, 3, causal)}};
    for (const auto& [s, pat] : pats) {
      for (const Algorithm algo : {Algorithm::flash, Algorithm::standard}) {
        SCOPED_TRACE(::testing::Message() << (algo == Algorithm::flash ? "flash" : "standard")
                                          << (causal ? " causal" : "") << " density " << pat.density());
        Problem p(DType::f32, 2, s, s, 2, 1, 16);
        p.randomize(seed + s);
        const BlockMask m = pat.mask();
        p.options.block_mask = &m;
        p.options.causal = causal;
        const Outputs out = run(p, false, cpu(algo));
        const Outputs ref = run_reference_twin(p);
        EXPECT_LT(rel_error(out.o, ref.o), 2e-5);
        EXPECT_LT(rel_error(out.dq, ref.dq), 1e-4);
        EXPECT_LT(rel_error(out.dk, ref.dk), 1e-4);
        EXPECT_LT(rel_error(out.dv, ref.dv), 1e-4);
      }
    }
  }
}

TEST(BlockPatterns, BadArgumentsAreNamed) {
  auto expect_named = [](auto&& f, const char* arg) {
    try {
      f();
      ADD_FAILURE() << "accepted a bad " << arg;
    } catch (const flashattn::Error& e) {
      EXPECT_EQ(std::string(e.what()).rfind(arg, 0), 0u) << e.what();
    }
  };
  expect_named([] { BlockPattern::local_global(-1, 8, 4, 4, 1, 0, false); }, "seqlen_q");
  expect_named([] { BlockPattern::local_global(8, 8, 0, 4, 1, 0, false); }, "block_q");
  expect_named([] { BlockPattern::local_global(8, 8, 4, 4, -1, 0, false); }, "local");
  expect_named([] { BlockPattern::butterfly(8, 8, 4, 4, 31, 1, false); }, "factors");
  expect_named([] { BlockPattern::butterfly(8, 8, 4, 4, 2, 0, false); }, "width");
  expect_named([] { BlockPattern::strided(8, 8, 4, 4, 1, 0, false); }, "stride");
}

}  // namespace
}  // namespace fa_test
