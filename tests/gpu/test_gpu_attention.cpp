// GPU tests of both CUDA algorithms (flash: the tiled kernels; standard:
// the cuBLAS materialising path) against the float64 CPU reference. Every
// test skips cleanly when no GPU is present.
//
// Suites:
//  - QuickGpu: small shapes touching every kernel (each head_dim, forward and
//    backward, every mask kind): the subset run under compute-sanitizer
//    (--gtest_filter='*QuickGpu*').
//  - everything else: the full sweep (shapes, masks, varlen, GQA, dropout,
//    block-sparse, layouts, streams, determinism).
//  - Sm90*: the Hopper kernels, forced with FLASHATTN_CUDA_KERNELS=sm90 (the
//    other suites run with the automatic choice; gpu-check also runs them
//    with FLASHATTN_CUDA_KERNELS=sm80)
//    (--gtest_filter='*Sm90*'; the backward alone: '*Sm90Backward*');
//    skipped on GPUs other than compute 9.0.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <array>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "gpu_harness.h"

namespace fa_gpu {
namespace {

const std::int64_t kHeadDims[] = {32, 64, 96, 128, 192, 256};
const DType kDTypes[] = {DType::bf16, DType::f16};

// The parameter of the per-shape suites: one dtype and head_dim.
struct DTypeHeadDim {
  DType dtype;
  std::int64_t d;
};
// Printed by gtest in test listings (the default dumps the padding bytes,
// which differ from run to run).
inline void PrintTo(const DTypeHeadDim& p, std::ostream* os) { *os << flashattn::to_string(p.dtype) << " d" << p.d; }

// Every dtype with each of head_dims (dtype-major: the order of the test
// listing).
std::vector<DTypeHeadDim> dtype_head_dims(std::span<const std::int64_t> head_dims) {
  std::vector<DTypeHeadDim> v;
  for (DType t : kDTypes)
    for (std::int64_t d : head_dims) v.push_back({t, d});
  return v;
}

// The test-name suffix of a parameter: "bf16_d64".
std::string dtype_head_dim_name(const ::testing::TestParamInfo<DTypeHeadDim>& i) {
  return std::string(flashattn::to_string(i.param.dtype)) + "_d" + std::to_string(i.param.d);
}

// A dense case of one (dtype, head_dim) at sq x sk: 2 query and 2 kv heads,
// batch 2 (1 from 1000 query rows on, to keep the float64 reference cheap).
Case shape_case(const DTypeHeadDim& p, std::int64_t sq, std::int64_t sk) {
  Case c;
  c.dtype = p.dtype;
  c.d = p.d;
  c.sq = sq;
  c.sk = sk;
  c.batch = sq >= 1000 ? 1 : 2;
  c.hq = 2;
  c.hk = 2;
  return c;
}

// Runs r by algo on a fresh non-blocking stream (destroyed afterwards).
Outputs run_on_new_stream(Runner& r, Algorithm algo, bool deterministic = false, bool own_workspace = false) {
  cudaStream_t stream = nullptr;
  cuda_ok(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  Outputs out = r.run(algo, stream, deterministic, own_workspace);
  cuda_ok(cudaStreamDestroy(stream), "cudaStreamDestroy");
  return out;
}

// ------------------------------------------------------------ quick ---

// One small case per head_dim and mask kind: every kernel instantiation
// runs at least once, cheap enough for memcheck and racecheck.
class QuickGpu : public GpuTest, public ::testing::WithParamInterface<std::int64_t> {};

TEST_P(QuickGpu, EveryFeatureSmall) {
  const std::int64_t d = GetParam();
  Case base;
  base.d = d;
  base.sq = 17;
  base.sk = 40;
  base.hq = 2;
  base.hk = 1;
  {
    Case c = base;
    check_case(c);
    c.deterministic = true;  // the flash backward's other dQ path
    check_case(c);
  }
  {
    Case c = base;
    c.dtype = DType::f16;
    c.causal = true;
    c.dropout_p = 0.2f;
    check_case(c);
  }
  {
    Case c = base;
    c.window_left = 5;
    c.window_right = 3;
    c.lens_q = {9, 0, 1, 20};
    c.lens_k = {14, 5, 0, 33};
    check_case(c);
  }
  {
    Case c = base;
    c.sq = 150;
    c.sk = 300;
    c.block_q = 128;
    c.block_k = 128;
    c.causal = true;
    check_case(c);
  }
}

INSTANTIATE_TEST_SUITE_P(HeadDims, QuickGpu, ::testing::ValuesIn(kHeadDims));

// ----------------------------------------------------------- shapes ---

class ShapesGpu : public GpuTest, public ::testing::WithParamInterface<DTypeHeadDim> {};

// Lengths that are not multiples of any tile size, sq != sk both ways, and
// the degenerate one-row / one-key cases.
TEST_P(ShapesGpu, NonTileMultiples) {
  const DTypeHeadDim sp = GetParam();
  const std::int64_t lens[][2] = {{1, 1}, {17, 17}, {127, 129}, {129, 127}, {1, 300}, {300, 1}, {1000, 1000}};
  for (const auto& l : lens) check_case(shape_case(sp, l[0], l[1]));
}

INSTANTIATE_TEST_SUITE_P(DTypesHeadDims, ShapesGpu, ::testing::ValuesIn(dtype_head_dims(kHeadDims)),
                         dtype_head_dim_name);

// ------------------------------------------------------------ masks ---

class MasksGpu : public GpuTest {};

TEST_F(MasksGpu, CausalBottomRightAligned) {
  for (DType t : kDTypes)
    for (std::int64_t d : {64, 128})
      for (auto [sq, sk] : {std::pair<std::int64_t, std::int64_t>{200, 200}, {113, 300}, {300, 113}, {1, 257}}) {
        Case c;
        c.dtype = t;
        c.d = d;
        c.sq = sq;
        c.sk = sk;
        c.causal = true;
        check_case(c);
      }
}

TEST_F(MasksGpu, SlidingWindow) {
  const std::int64_t windows[][2] = {{0, 0}, {16, 0}, {31, 7}, {-1, 40}, {100, -1}, {3, 3}};
  for (const auto& w : windows)
    for (auto [sq, sk] : {std::pair<std::int64_t, std::int64_t>{257, 257}, {140, 333}, {333, 140}}) {
      Case c;
      c.d = 64;
      c.sq = sq;
      c.sk = sk;
      c.window_left = w[0];
      c.window_right = w[1];
      check_case(c);
    }
}

// Causal with sq > sk leaves the first sq - sk rows with no key at all:
// O = 0, LSE = -inf and zero gradients, never NaN.
TEST_F(MasksGpu, EmptyRows) {
  Case c;
  c.sq = 150;
  c.sk = 60;
  c.causal = true;
  c.d = 128;
  check_case(c);
  c.window_left = 0;  // only the diagonal
  c.causal = false;
  c.window_right = 0;
  check_case(c);
}

// A side with no rows: no keys (O = 0, LSE = -inf, zero dQ) and no queries
// (zero dK, dV). The CPU suite checks the same on the CPU backends.
TEST_F(MasksGpu, NoKeysOrNoQueries) {
  for (const auto& [sq, sk] : {std::pair<std::int64_t, std::int64_t>{5, 0}, {0, 5}, {130, 0}, {0, 130}}) {
    Case c;
    c.sq = sq;
    c.sk = sk;
    c.d = 64;
    check_case(c);
  }
}

// ----------------------------------------------------------- varlen ---

class VarlenGpu : public GpuTest {};

TEST_F(VarlenGpu, EmptyAndLengthOneSequences) {
  Case c;
  c.d = 64;
  c.lens_q = {0, 1, 130, 17, 1, 0, 255};
  c.lens_k = {3, 1, 129, 0, 64, 0, 300};
  c.hq = 4;
  c.hk = 2;
  check_case(c);
  c.causal = true;
  check_case(c);
  c.causal = false;
  c.window_left = 20;
  c.window_right = 5;
  c.dtype = DType::f16;
  check_case(c);
}

// Without host copies of cu_seqlens the calls cannot check them on the
// host; valid offsets must still give exact results.
TEST_F(VarlenGpu, DeviceOnlyOffsets) {
  Case c;
  c.d = 128;
  c.lens_q = {5, 200, 0, 77};
  c.lens_k = {9, 190, 11, 77};
  c.varlen_host_copies = false;
  c.causal = true;
  check_case(c);
}

// -------------------------------------------------------------- GQA ---

class GqaGpu : public GpuTest {};

TEST_F(GqaGpu, GroupedAndMultiQuery) {
  for (auto [hq, hk] : {std::pair<std::int64_t, std::int64_t>{8, 2}, {6, 1}, {4, 4}}) {
    Case c;
    c.d = 96;
    c.sq = 129;
    c.sk = 200;
    c.hq = hq;
    c.hk = hk;
    check_case(c);
    c.causal = true;
    c.lens_q = {100, 29, 1};
    c.lens_k = {120, 0, 80};
    check_case(c);
  }
}

// ---------------------------------------------------------- dropout ---

class DropoutGpu : public GpuTest {};

void check_dropout_mask(Algorithm algo, bool varlen) {
  const float p = 0.3f;
  Case c;
  c.d = 128;
  c.hq = 3;
  c.hk = 1;
  c.dropout_p = p;
  c.backward = false;
  if (varlen) {
    c.lens_q = {7, 0, 131, 1};
    c.lens_k = {128, 5, 100, 33};
  } else {
    c.batch = 2;
    c.sq = 150;
    c.sk = 121;
  }
  SCOPED_TRACE(std::string(name(algo)) + " " + c.describe());
  FA_SEEDED(seed);
  Runner r(c);
  r.randomize(seed, 0.1);
  // One-hot V: key j of every sequence carries basis vector e_j.
  TensorSet& v = r.v();
  const Tensor& vt = v.host;
  for (std::int64_t b = 0; b < vt.batch; ++b)
    for (std::int64_t s = 0; s < vt.seqlen; ++s)
      for (std::int64_t h = 0; h < vt.heads; ++h) {
        std::int64_t j = s;  // position of key s inside its sequence
        if (varlen) {
          std::int64_t start = 0;
          for (std::size_t q = 0; q < c.lens_k.size(); ++q) {
            if (s < start + c.lens_k[q]) break;
            start += c.lens_k[q];
          }
          j = s - start;
        }
        for (std::int64_t x = 0; x < vt.head_dim; ++x)
          flashattn::detail::store_from_double(vt.data, vt.dtype, flashattn::detail::offset_of(vt, b, s, h) + x,
                                               x == j ? 1.0 : 0.0);
      }
  v.set_from_host();
  r.run(algo);
  const Tensor& o = r.o().host;
  const std::int64_t nseq = varlen ? static_cast<std::int64_t>(c.lens_q.size()) : c.batch;
  std::int64_t q0 = 0, checked = 0, mismatches = 0, kept = 0;
  for (std::int64_t b = 0; b < nseq; ++b) {
    const std::int64_t sq = varlen ? c.lens_q[b] : c.sq, sk = varlen ? c.lens_k[b] : c.sk;
    for (std::int64_t h = 0; h < c.hq; ++h) {
      std::vector<std::uint8_t> keep(static_cast<std::size_t>(std::max<std::int64_t>(sq * sk, 1)));
      flashattn::dropout_mask(kDropoutSeed, kDropoutOffset, p, b, c.hq, h, sq, sk, keep.data());
      for (std::int64_t i = 0; i < sq; ++i)
        for (std::int64_t j = 0; j < sk; ++j) {
          const std::int64_t tb = varlen ? 0 : b, row = varlen ? q0 + i : i;
          const double x = flashattn::detail::load_as_double(o.data, o.dtype, flashattn::detail::offset_of(o, tb, row, h) + j);
          mismatches += (x != 0.0) != (keep[i * sk + j] != 0);
          kept += keep[i * sk + j];
          ++checked;
        }
    }
    q0 += sq;
  }
  EXPECT_EQ(mismatches, 0) << "of " << checked << " elements";
  // The keep rate is 1 - p (a sanity check that the test saw real masks).
  EXPECT_NEAR(static_cast<double>(kept) / checked, 1.0 - p, 0.03);
}

// The GPU keep-mask equals dropout_mask() bit for bit. V is one-hot per key
// (V[j] = e_j, sk <= head_dim), so O[i][j] = P_d[i][j]: nonzero iff kept
// (P > 0 for every key, as inputs are small and no key is masked).
TEST_F(DropoutGpu, MaskMatchesCpuHelperBitForBit) {
  for (bool varlen : {false, true})
    for (Algorithm algo : algorithms()) check_dropout_mask(algo, varlen);
}

TEST_F(DropoutGpu, ForwardBackwardVsReference) {
  for (DType t : kDTypes) {
    Case c;
    c.dtype = t;
    c.d = 64;
    c.sq = 257;
    c.sk = 190;
    c.hq = 4;
    c.hk = 2;
    c.dropout_p = 0.17f;
    check_case(c);
    c.causal = true;
    c.lens_q = {50, 1, 0, 120};
    c.lens_k = {60, 40, 7, 121};
    check_case(c);
  }
}

// ----------------------------------------------------- block sparse ---

class BlockSparseGpu : public GpuTest {};

// 300 x 333, GQA 2:1, each block shape with partial + full lists (and a
// causal rule inside the partial blocks) and with partial lists alone.
// Shapes off 128 x 128 only the standard path must take (flash may refuse
// sizes off its tiles with an Error).
void check_block_lists(DType t, std::int64_t d, std::initializer_list<std::array<std::int64_t, 2>> blocks) {
  for (const auto& bl : blocks)
    for (bool full : {true, false}) {
      Case c;
      c.dtype = t;
      c.flash_may_refuse = bl[0] % 128 != 0 || bl[1] % 128 != 0;
      c.d = d;
      c.sq = 300;
      c.sk = 333;
      c.hq = 2;
      c.hk = 1;
      c.block_q = bl[0];
      c.block_k = bl[1];
      c.block_full_lists = full;
      c.causal = full;  // partial blocks also apply the element rule
      check_case(c);
    }
}

// One block mask broadcast over batch and heads, on a varlen batch with
// an empty sequence, a window inside the partial blocks, GQA 2:1.
Case broadcast_varlen_window_case(DType t, std::int64_t d) {
  Case c;
  c.dtype = t;
  c.d = d;
  c.hq = 4;
  c.hk = 2;
  c.block_q = 128;
  c.block_k = 128;
  c.block_broadcast = true;
  c.lens_q = {100, 0, 257};
  c.lens_k = {130, 9, 256};
  c.window_left = 70;
  c.window_right = 10;
  return c;
}

TEST_F(BlockSparseGpu, PartialAndFullLists) {
  check_block_lists(DType::bf16, 64, {{128, 128}, {256, 128}, {128, 256}, {128, 64}, {64, 32}, {37, 50}, {16, 128}});
}

TEST_F(BlockSparseGpu, BroadcastVarlenWindow) {
  Case c = broadcast_varlen_window_case(DType::bf16, 128);
  check_case(c);
  c.block_broadcast = false;
  c.varlen_host_copies = false;
  check_case(c);
}

// ---------------------------------------------------- layouts / calls ---

class LayoutGpu : public GpuTest {};

// Strided (non-contiguous) tensors on a non-default stream with a caller
// workspace give exactly what contiguous tensors on the default stream give.
TEST_F(LayoutGpu, StridesStreamAndWorkspace) {
  for (Algorithm algo : algorithms()) {
    SCOPED_TRACE(name(algo));
    Case c;
    c.d = 64;
    c.sq = 190;
    c.sk = 201;
    c.hq = 4;
    c.hk = 2;
    c.causal = true;
    c.dropout_p = 0.1f;
    c.padded = true;
    check_case(c);  // padded strides vs the reference
    FA_SEEDED(seed);
    Runner r(c);
    r.randomize(seed);
    const Outputs plain = r.run(algo, nullptr, true, false);
    const Outputs streamed = run_on_new_stream(r, algo, true, true);
    EXPECT_EQ(max_abs_error(plain.o, streamed.o), 0.0);
    EXPECT_EQ(max_abs_error(plain.lse, streamed.lse), 0.0);
    EXPECT_EQ(max_abs_error(plain.dq, streamed.dq), 0.0);
    EXPECT_EQ(max_abs_error(plain.dk, streamed.dk), 0.0);
    EXPECT_EQ(max_abs_error(plain.dv, streamed.dv), 0.0);
  }
}

// A workspace smaller than the query asks for is an Error, not a crash.
TEST_F(LayoutGpu, TooSmallWorkspaceIsAnError) {
  Case c;
  c.sq = c.sk = 256;
  FA_SEEDED(seed);
  Runner r(c);
  r.randomize(seed);
  for (Algorithm algo : algorithms()) {
    Context ctx;
    ctx.device = Device::cuda;
    ctx.algorithm = algo;
    const ForwardArgs f = r.forward_args();
    const std::size_t need = flashattn::forward_workspace_bytes(f, ctx);
    if (need == 0) continue;  // this algorithm needs no scratch here
    DeviceBuffer ws(need);
    ctx.workspace = ws.get();
    ctx.workspace_bytes = need - 1;
    EXPECT_THROW(flashattn::forward(f, ctx), flashattn::Error) << name(algo);
  }
}

// ------------------------------------------------------ determinism ---

class DeterminismGpu : public GpuTest {};

// The deterministic backward is as accurate as the default one.
TEST_F(DeterminismGpu, DeterministicBackwardAccuracy) {
  Case c;
  c.d = 64;
  c.sq = 513;
  c.sk = 300;
  c.hq = 6;
  c.hk = 2;
  c.causal = true;
  c.deterministic = true;
  check_case(c);
  c.causal = false;
  c.lens_q = {100, 0, 1, 257};
  c.lens_k = {90, 3, 1, 300};
  c.dropout_p = 0.1f;
  check_case(c);
}

// deterministic = true: dQ, dK, dV bit-identical over runs (GQA makes dK/dV
// sums over query heads; long rows make many key blocks per query).
TEST_F(DeterminismGpu, BackwardBitIdentical) {
  for (Algorithm algo : algorithms()) {
    Case c;
    c.d = 128;
    c.sq = 1000;
    c.sk = 777;
    c.hq = 8;
    c.hk = 2;
    c.batch = 2;
    c.dropout_p = 0.1f;
    c.deterministic = true;
    SCOPED_TRACE(std::string(name(algo)) + " " + c.describe());
    FA_SEEDED(seed);
    Runner r(c);
    r.randomize(seed);
    const Outputs first = r.run(algo, nullptr, true);
    for (int rep = 0; rep < 3; ++rep) {
      const Outputs again = r.run(algo, nullptr, true);
      ASSERT_EQ(std::memcmp(first.dq.data(), again.dq.data(), first.dq.size() * sizeof(double)), 0) << "dQ run " << rep;
      ASSERT_EQ(std::memcmp(first.dk.data(), again.dk.data(), first.dk.size() * sizeof(double)), 0) << "dK run " << rep;
      ASSERT_EQ(std::memcmp(first.dv.data(), again.dv.data(), first.dv.size() * sizeof(double)), 0) << "dV run " << rep;
    }
  }
}

// ------------------------------------------------------- sm90 forward ---

// Sets an environment variable for one scope and restores what was there
// (the kernel-family switch is read at every call, in this process).
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = std::string(old);
    setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (old_) setenv(name_, old_->c_str(), 1);
    else unsetenv(name_);
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

// The Hopper kernels (sm90/forward.cuh, sm90/backward.cuh) exist only as
// sm_90a code: these tests run on compute capability 9.0 alone. With the
// switch forced, the backward of a case runs the sm90 backward too (head_dim
// 64 and 128; it refuses the others), reading the O and LSE the sm90
// forward wrote: a check of the LSE beyond its own comparison.
class Sm90Gpu : public GpuTest {
 protected:
  void SetUp() override {
    GpuTest::SetUp();
    if (IsSkipped()) return;
    int dev = 0, major = 0, minor = 0;
    cuda_ok(cudaGetDevice(&dev), "cudaGetDevice");
    cuda_ok(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), "cudaDeviceGetAttribute");
    cuda_ok(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev), "cudaDeviceGetAttribute");
    if (major != 9 || minor != 0)
      GTEST_SKIP() << "the sm90 forward needs compute capability 9.0, this GPU is " << major << "." << minor;
    if (!flash_enabled()) GTEST_SKIP() << "FLASHATTN_GPU_TESTS_NO_FLASH=1";
    env_.emplace("FLASHATTN_CUDA_KERNELS", "sm90");
  }
  void TearDown() override {
    env_.reset();
    GpuTest::TearDown();
  }

 private:
  std::optional<ScopedEnv> env_;
};

const std::int64_t kSm90HeadDims[] = {64, 128, 256};
const std::int64_t kSm90BwdHeadDims[] = {64, 128, 256};
bool sm90_backward_has(std::int64_t d) { return d == 64 || d == 128 || d == 256; }

// ------------------------------------------ sm90 forward and backward cases ---
// Case sequences both the sm90 forward and the sm90 backward tests check;
// `backward` says whether each case runs the backward too.

// GQA / MQA (query head h reads kv head h / group) at one (dtype, head_dim):
// 200 x 333, then causal with 333 x 200.
void check_grouped_query_heads(const DTypeHeadDim& p, bool backward) {
  for (auto [hq, hk] : {std::pair<std::int64_t, std::int64_t>{8, 2}, {6, 1}}) {
    Case c;
    c.dtype = p.dtype;
    c.d = p.d;
    c.sq = 200;
    c.sk = 333;
    c.hq = hq;
    c.hk = hk;
    c.backward = backward;
    check_case(c);
    c.causal = true;
    c.sq = 333;
    c.sk = 200;
    check_case(c);
  }
}

// Causal rows with no visible key (sq > sk), no window, on base's dtype,
// head_dim and backward: 150 x 60 (rows 0..89 see no key), then 300 x 20
// (whole query tiles without a key tile).
void check_causal_empty_rows(Case c) {
  c.window_left = -1;
  c.window_right = -1;
  c.causal = true;
  c.sq = 150;
  c.sk = 60;
  check_case(c);
  c.sq = 300;
  c.sk = 20;
  check_case(c);
}

// Sliding windows at 257 x 333, not causal, on base's head_dim and
// backward: (31, 7) in base's dtype, then only the diagonal (0, 0) in
// diagonal_dtype.
void check_windows(Case c, DType diagonal_dtype) {
  c.causal = false;
  c.sq = 257;
  c.sk = 333;
  c.window_left = 31;
  c.window_right = 7;
  check_case(c);
  c.window_left = 0;
  c.window_right = 0;
  c.dtype = diagonal_dtype;
  check_case(c);
}

// The padded-strides case of both paths: GQA, causal, 190 x 201 at
// head_dim 128, non-contiguous strides.
Case padded_gqa_case(bool backward) {
  Case c;
  c.d = 128;
  c.sq = 190;
  c.sk = 201;
  c.hq = 4;
  c.hk = 2;
  c.causal = true;
  c.padded = true;
  c.backward = backward;
  return c;
}

// A case the sm90 kernels refuse, and the argument their Error must name.
struct Refused {
  Case c;
  const char* arg;
};

// 100 x 90 cases with one feature neither sm90 kernel has (none at the
// moment beyond the head dims, which the tests check on their own: every
// option of Options runs there).
std::vector<Refused> sm90_unsupported_features() { return {}; }

class Sm90Shapes : public Sm90Gpu, public ::testing::WithParamInterface<DTypeHeadDim> {};

// Lengths off the 128-row query tile and the key tile (64 or 128), both
// ways, the one-row / one-key extremes; causal and not.
TEST_P(Sm90Shapes, DenseAndCausalTails) {
  const DTypeHeadDim sp = GetParam();
  const std::int64_t lens[][2] = {{1, 1},     {17, 40},   {64, 64},  {127, 129}, {129, 127},
                                  {1, 300},   {300, 1},   {128, 256}, {257, 513}, {1000, 1000}};
  for (bool causal : {false, true})
    for (const auto& l : lens) {
      Case c = shape_case(sp, l[0], l[1]);
      c.causal = causal;
      // One backward per sweep (the sm90 backward has every head_dim of
      // the sm90 forward; Sm90BackwardShapes sweeps it).
      c.backward = l[0] == 127 && sm90_backward_has(sp.d);
      check_case(c);
    }
}

// GQA / MQA, causal with sq != sk (forward only).
TEST_P(Sm90Shapes, GroupedQueryHeads) { check_grouped_query_heads(GetParam(), false); }

INSTANTIATE_TEST_SUITE_P(DTypesHeadDims, Sm90Shapes, ::testing::ValuesIn(dtype_head_dims(kSm90HeadDims)),
                         dtype_head_dim_name);

// Rows with no visible key (causal, sq > sk): O = 0 and LSE = -inf, never
// NaN; whole query tiles without a key tile (sq - sk > 128) too. Sliding
// windows take the same masking code, so they run here as well.
TEST_F(Sm90Gpu, EmptyRowsAndWindows) {
  for (std::int64_t d : kSm90HeadDims) {
    Case c;
    c.d = d;
    c.backward = false;
    check_causal_empty_rows(c);
    check_windows(c, DType::f16);
  }
}

// No keys (the forward's K/V maps cover an empty tensor) and no queries
// (the backward's Q/dO maps do): the launchers map another tensor there.
TEST_F(Sm90Gpu, NoKeysOrNoQueries) {
  for (std::int64_t d : kSm90HeadDims)
    for (const auto& [sq, sk] : {std::pair<std::int64_t, std::int64_t>{5, 0}, {0, 5}}) {
      Case c;
      c.d = d;
      c.sq = sq;
      c.sk = sk;
      c.backward = sm90_backward_has(d);  // forcing sm90 on the rest is an error
      check_case(c);
    }
}

// More query tiles than an H100 / H200 has SMs, without a mask: the
// persistent launch (one CTA an SM, each looping over query tiles:
// sm90/forward.cuh) carries Q, the K/V ring and the consumers' turns from
// tile to tile. 8 tiles x 8 heads x 5 sequences = 320 tiles, 2 or 3 a CTA;
// tails of both tiles (the last query tile of a head has one 64-row half),
// GQA; then no keys at all (tiles without a key step, back to back); then
// one key tile a query tile (each tile's first turn follows the previous
// tile's last, with nothing between them) on 768 tiles, 5 or 6 a CTA, with
// dropout (the persistent dropout kernel).
TEST_F(Sm90Gpu, PersistentTilesInARow) {
  for (DType t : kDTypes)
    for (std::int64_t d : {64, 128}) {
      Case c;
      c.dtype = t;
      c.d = d;
      c.batch = 5;
      c.hq = 8;
      c.hk = 2;
      c.sq = 950;
      c.sk = 333;
      c.backward = false;
      check_case(c);
      c.sk = 0;
      check_case(c);
      c.batch = 3;
      c.hq = 16;
      c.hk = 4;
      c.sq = 2000;
      c.sk = 100;
      c.dropout_p = 0.2f;
      check_case(c);
    }
}

// Masked problems take the persistent launch with query tiles in pairs
// (sm90/scheduler.h): a head's longest tile with its shortest. 288 tiles
// (3 x 32 heads x 3) in 144 pairs over the SMs, pairs straddling two heads
// (3 tiles a head), tiles of 1 to 3 key tiles under a causal mask, tiles
// with no visible key (causal with more queries than keys: the first rows
// see none), a window, an odd count of tiles (3 x 5 heads x 3: the last
// pair has one tile), MQA, dropout with the backward.
TEST_F(Sm90Gpu, PairedTilesOfMaskedProblems) {
  for (DType t : kDTypes)
    for (std::int64_t d : {64, 128}) {
      Case c;
      c.dtype = t;
      c.d = d;
      c.batch = 3;
      c.hq = 32;
      c.hk = 8;
      c.sq = c.sk = 300;
      c.causal = true;
      c.backward = false;
      check_case(c);
      c.sq = 420;
      c.sk = 150;
      check_case(c);
      c.causal = false;
      c.sq = c.sk = 333;
      c.window_left = 70;
      c.window_right = 10;
      check_case(c);
      c.window_left = c.window_right = -1;
      c.causal = true;
      c.hq = 5;
      c.hk = 1;
      c.sq = c.sk = 300;
      check_case(c);
      c.hq = 32;
      c.hk = 8;
      c.dropout_p = 0.2f;
      c.backward = true;
      check_case(c);
    }
}

// Padded (non-contiguous) strides and a non-default stream: the tensor
// maps carry the strides; results equal those of the default stream.
TEST_F(Sm90Gpu, PaddedStridesAndStream) {
  const Case c = padded_gqa_case(false);
  check_case(c);
  FA_SEEDED(seed);
  Runner r(c);
  r.randomize(seed);
  const Outputs plain = r.run(Algorithm::flash);
  const Outputs streamed = run_on_new_stream(r, Algorithm::flash);
  EXPECT_EQ(max_abs_error(plain.o, streamed.o), 0.0);
  EXPECT_EQ(max_abs_error(plain.lse, streamed.lse), 0.0);
}

// Forced sm90 on what it does not implement is an Error naming the
// argument, never a silent fallback or a wrong result.
TEST_F(Sm90Gpu, UnsupportedIsAnError) {
  auto expect_refused = [](Case c, const char* arg) {
    SCOPED_TRACE(c.describe());
    c.backward = false;
    FA_SEEDED(seed);
    Runner r(c);
    r.randomize(seed);
    try {
      r.run(Algorithm::flash);
      ADD_FAILURE() << "sm90 forward accepted a case it does not implement";
    } catch (const flashattn::Error& e) {
      EXPECT_NE(std::string(e.what()).find(arg), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("sm90"), std::string::npos) << e.what();
    }
  };
  Case base;
  base.sq = 100;
  base.sk = 90;
  {
    Case c = base;
    c.d = 96;
    expect_refused(c, "head_dim");
  }
  for (const auto& [c, arg] : sm90_unsupported_features()) expect_refused(c, arg);
}

// The family comes from Context::cuda_kernels when the environment
// variable is unset: sm90 asked for at a head_dim it lacks (96) is an Error
// naming it, sm80 runs it; an out-of-range value is an Error naming the
// field.
TEST_F(GpuTest, ContextChoosesTheKernelFamily) {
  int dev = 0, major = 0, minor = 0;
  cuda_ok(cudaGetDevice(&dev), "cudaGetDevice");
  cuda_ok(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), "cudaDeviceGetAttribute");
  cuda_ok(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev), "cudaDeviceGetAttribute");
  if (major != 9 || minor != 0) GTEST_SKIP() << "needs compute capability 9.0, this GPU is " << major << "." << minor;
  if (std::getenv("FLASHATTN_CUDA_KERNELS") != nullptr) GTEST_SKIP() << "FLASHATTN_CUDA_KERNELS is set";
  Case c;
  c.sq = 256;
  c.sk = 256;
  c.d = 96;
  c.backward = false;
  FA_SEEDED(seed);
  Runner r(c);
  r.randomize(seed);
  try {
    r.run(Algorithm::flash, nullptr, false, false, CudaKernels::sm90);
    ADD_FAILURE() << "ctx.cuda_kernels = sm90 accepted head_dim 96";
  } catch (const flashattn::Error& e) {
    EXPECT_NE(std::string(e.what()).find("head_dim"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(r.run(Algorithm::flash, nullptr, false, false, CudaKernels::sm80));
  try {
    r.run(Algorithm::flash, nullptr, false, false, static_cast<CudaKernels>(7));
    ADD_FAILURE() << "an out-of-range ctx.cuda_kernels was accepted";
  } catch (const flashattn::Error& e) {
    EXPECT_NE(std::string(e.what()).find("ctx.cuda_kernels"), std::string::npos) << e.what();
  }
  cuda_ok(cudaDeviceSynchronize(), "after the refusals");
}

// Dropout on the sm90 kernels: the forward's keep mask equals
// dropout_mask() bit for bit (one-hot V, see check_dropout_mask), and
// forward and backward pass the accuracy rule against the float64
// reference (which draws the mask on the CPU, so a backward whose mask
// differed from the forward's would fail there), over tails of both tiles,
// GQA, causal and a window.
TEST_F(Sm90Gpu, DropoutMaskMatchesCpuHelperBitForBit) { check_dropout_mask(Algorithm::flash, false); }

TEST_F(Sm90Gpu, DropoutForwardBackwardVsReference) {
  for (DType t : kDTypes)
    for (std::int64_t d : kSm90HeadDims) {
      Case c;
      c.dtype = t;
      c.d = d;
      c.sq = 257;
      c.sk = 190;
      c.hq = 4;
      c.hk = 2;
      c.dropout_p = 0.17f;
      c.backward = sm90_backward_has(d);
      check_case(c);
      c.causal = true;
      c.sq = 200;
      c.sk = 333;
      check_case(c);
      c.causal = false;
      c.window_left = 40;
      c.window_right = 9;
      c.dropout_p = 0.5f;
      check_case(c);
    }
}

// ------------------------------------------------------- sm90 varlen ---
// Packed variable-length batches on the Hopper kernels, forward and
// backward (forced): empty and length-one sequences, sequences of several
// tiles, query and key lengths that differ per sequence (causal and
// windows are bottom-right aligned per sequence), GQA 7:1 and 2:1,
// dropout. Outputs are poisoned and the rows past the last sequence must
// stay untouched (the harness): a query tile that ends inside the packed
// tensor must not write the next sequence's rows.
class Sm90VarlenShapes : public Sm90Gpu, public ::testing::WithParamInterface<DTypeHeadDim> {};

TEST_P(Sm90VarlenShapes, LengthsMasksGqaDropout) {
  const DTypeHeadDim sp = GetParam();
  Case c;
  c.dtype = sp.dtype;
  c.d = sp.d;
  c.lens_q = {0, 1, 130, 17, 1, 0, 255, 400};
  c.lens_k = {3, 1, 129, 0, 64, 0, 300, 390};
  c.hq = 7;
  c.hk = 1;
  c.backward = sm90_backward_has(sp.d);
  check_case(c);
  c.causal = true;
  check_case(c);
  c.causal = false;
  c.window_left = 20;
  c.window_right = 5;
  check_case(c);
  c.window_left = c.window_right = -1;
  c.hq = 4;
  c.hk = 2;
  c.causal = true;
  c.dropout_p = 0.1f;
  check_case(c);
}

INSTANTIATE_TEST_SUITE_P(DTypesHeadDims, Sm90VarlenShapes, ::testing::ValuesIn(dtype_head_dims(kSm90HeadDims)),
                         dtype_head_dim_name);

// Without host copies of cu_seqlens: the kernels read the offsets on the
// device only.
TEST_F(Sm90Gpu, VarlenDeviceOnlyOffsets) {
  Case c;
  c.d = 128;
  c.lens_q = {5, 200, 0, 77};
  c.lens_k = {9, 190, 11, 77};
  c.varlen_host_copies = false;
  c.causal = true;
  check_case(c);
}

// The keep mask of a varlen call equals dropout_mask() bit for bit.
TEST_F(Sm90Gpu, VarlenDropoutMaskMatchesCpuHelperBitForBit) { check_dropout_mask(Algorithm::flash, true); }

// ------------------------------------------------- sm90 block-sparse ---
// Block-sparse on the Hopper kernels, forward and backward (forced): the
// key-tile lists (forward, dQ pass) and the transposed lists (dK/dV
// sweep), partial blocks with the causal / window rule inside them, full
// blocks without it, blocks of two query or two key tiles, lengths off
// every tile, lists empty for whole query blocks (O = 0, LSE = -inf, no
// NaN), broadcast over batch and heads, varlen.
class Sm90BlockSparse : public Sm90Gpu, public ::testing::WithParamInterface<DTypeHeadDim> {};

TEST_P(Sm90BlockSparse, ListsBlocksAndMasks) {
  const DTypeHeadDim sp = GetParam();
  check_block_lists(sp.dtype, sp.d, {{128, 128}, {256, 128}, {128, 256}});
  Case e;
  e.dtype = sp.dtype;
  e.d = sp.d;
  e.sq = 1024;
  e.sk = 300;
  e.block_q = 128;
  e.block_k = 128;
  e.block_skip = 0.75;
  check_case(e);
  check_case(broadcast_varlen_window_case(sp.dtype, sp.d));
}

INSTANTIATE_TEST_SUITE_P(DTypesHeadDims, Sm90BlockSparse, ::testing::ValuesIn(dtype_head_dims(kSm90HeadDims)),
                         dtype_head_dim_name);

// ------------------------------------------------------ sm90 backward ---

// The Hopper backward (sm90/backward.cuh) with the switch forced (the
// forward of each case is the sm90 one too). Gradients are poisoned before
// every run (Runner::run) and judged by the file's rule: at most 3x the
// error of the standard path in the same precision, plus a floor.
class Sm90BackwardShapes : public Sm90Gpu, public ::testing::WithParamInterface<DTypeHeadDim> {};

// Lengths off the 64-row query tile and the key tile (128, or 64 at
// d = 256), both ways, the one-row / one-key extremes (a key tile of one
// key, a query tile of one row); causal and not.
TEST_P(Sm90BackwardShapes, DenseAndCausalTails) {
  const DTypeHeadDim sp = GetParam();
  const std::int64_t lens[][2] = {{1, 1},     {17, 40},   {64, 64},   {65, 129},  {127, 129}, {129, 127},
                                  {1, 300},   {300, 1},   {128, 256}, {257, 513}, {1000, 1000}};
  for (bool causal : {false, true})
    for (const auto& l : lens) {
      Case c = shape_case(sp, l[0], l[1]);
      c.causal = causal;
      check_case(c);
    }
}

// GQA / MQA: dK, dV of each query head go through the fp32 dk/dv accum and
// the sm80 reduction; causal with sq != sk both ways.
TEST_P(Sm90BackwardShapes, GroupedQueryHeads) { check_grouped_query_heads(GetParam(), true); }

// Sliding windows (the partial-tile masking and the query-tile range of a
// key tile), rows with no visible key (causal, sq > sk: dQ = 0, P = 0 from
// LSE = -inf), and key tiles no query sees (dK = dV = 0 must be written).
TEST_P(Sm90BackwardShapes, WindowsAndEmptyRows) {
  const DTypeHeadDim sp = GetParam();
  Case c;
  c.dtype = sp.dtype;
  c.d = sp.d;
  check_windows(c, sp.dtype);
  {
    Case w = c;
    w.window_left = 5;  // sq = 20, sk = 300: keys 0..274 are seen by no row
    w.window_right = 3;
    w.sq = 20;
    w.sk = 300;
    check_case(w);
  }
  check_causal_empty_rows(c);  // rows 0..89, then whole 64-row query tiles, see no key
}

INSTANTIATE_TEST_SUITE_P(DTypesHeadDims, Sm90BackwardShapes, ::testing::ValuesIn(dtype_head_dims(kSm90BwdHeadDims)),
                         dtype_head_dim_name);

class Sm90BackwardGpu : public Sm90Gpu {};

// Padded strides (the tensor maps of q, k, v, dout carry them), GQA, a
// non-default stream and the caller's workspace: dK and dV (plain stores,
// then the fixed-order GQA sum) equal those of the default stream bit for
// bit; dQ (fp32 atomics in any order) to within rounding.
TEST_F(Sm90BackwardGpu, PaddedStridesStreamAndWorkspace) {
  const Case c = padded_gqa_case(true);
  check_case(c);
  FA_SEEDED(seed);
  Runner r(c);
  r.randomize(seed);
  const Outputs plain = r.run(Algorithm::flash);
  const Outputs streamed = run_on_new_stream(r, Algorithm::flash, false, true);
  EXPECT_EQ(max_abs_error(plain.dk, streamed.dk), 0.0);
  EXPECT_EQ(max_abs_error(plain.dv, streamed.dv), 0.0);
  EXPECT_LE(max_abs_error(plain.dq, streamed.dq), 1e-2 * max_abs(plain.dq) + 1e-4);
}

// The dQ pass (d = 256, sm90/backward_dq.cuh): dq written once per element,
// so the backward is deterministic there (and accepted with
// deterministic = true): two runs give dq, dk, dv bit for bit, in both
// modes, on tails of both lengths, GQA, a window and dropout, each also
// checked against float64 (check_case).
// Two flash runs of the same inputs give dq, dk, dv bit for bit.
void expect_repeats_bit_identical(const Case& c, bool deterministic) {
  FA_SEEDED(seed);
  Runner r(c);
  r.randomize(seed);
  const Outputs a = r.run(Algorithm::flash, nullptr, deterministic);
  const Outputs b = r.run(Algorithm::flash, nullptr, deterministic);
  EXPECT_EQ(max_abs_error(a.dq, b.dq), 0.0);
  EXPECT_EQ(max_abs_error(a.dk, b.dk), 0.0);
  EXPECT_EQ(max_abs_error(a.dv, b.dv), 0.0);
}

TEST_F(Sm90BackwardGpu, DqPassIsDeterministic) {
  for (DType t : kDTypes)
    for (bool deterministic : {true, false}) {
      Case c;
      c.dtype = t;
      c.d = 256;
      c.sq = 333;
      c.sk = 517;
      c.hq = 4;
      c.hk = 2;
      c.deterministic = deterministic;
      std::vector<Case> cases = {c};
      c.causal = true;
      c.dropout_p = 0.2f;
      cases.push_back(c);
      c.causal = false;
      c.window_left = 70;
      c.window_right = 5;
      cases.push_back(c);
      for (const Case& k : cases) {
        SCOPED_TRACE(k.describe());
        check_case(k);
        expect_repeats_bit_identical(k, deterministic);
      }
    }
  // Varlen, deterministic: bit-identical over repeats too.
  Case v;
  v.d = 256;
  v.lens_q = {0, 1, 130, 300};
  v.lens_k = {3, 1, 129, 250};
  v.hq = 4;
  v.hk = 2;
  v.causal = true;
  v.deterministic = true;
  check_case(v);
  expect_repeats_bit_identical(v, true);
}

// Forced sm90 on a backward it does not implement is an Error naming the
// argument and the switch, never a silent fallback. The forward runs first
// on the path that has the feature (sm80 where the sm90 forward refuses it).
TEST_F(Sm90BackwardGpu, UnsupportedIsAnError) {
  auto expect_refused = [](Case c, const char* arg, bool deterministic, bool forward_on_sm80) {
    SCOPED_TRACE(c.describe());
    FA_SEEDED(seed);
    Runner r(c);
    r.randomize(seed);
    Context ctx;
    ctx.device = Device::cuda;
    ctx.algorithm = Algorithm::flash;
    {
      std::optional<ScopedEnv> fwd_env;
      if (forward_on_sm80) fwd_env.emplace("FLASHATTN_CUDA_KERNELS", "sm80");
      flashattn::forward(r.forward_args(), ctx);
      cuda_ok(cudaDeviceSynchronize(), "forward");
    }
    try {
      flashattn::backward(r.backward_args(deterministic), ctx);
      ADD_FAILURE() << "sm90 backward accepted a case it does not implement";
    } catch (const flashattn::Error& e) {
      EXPECT_NE(std::string(e.what()).find(arg), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("sm90 backward"), std::string::npos) << e.what();
    }
    cuda_ok(cudaDeviceSynchronize(), "after the refusal");
  };
  Case base;
  base.sq = 100;
  base.sk = 90;
  {
    Case c = base;
    c.d = 96;
    expect_refused(c, "head_dim", false, true);
  }
  expect_refused(base, "deterministic", true, false);
  for (const auto& [c, arg] : sm90_unsupported_features()) expect_refused(c, arg, false, true);
}

}  // namespace
}  // namespace fa_gpu
