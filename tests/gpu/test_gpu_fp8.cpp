// The FP8 (e4m3) forward on CUDA, the Hopper kernel (sm_90a): head_dim 64,
// 128 and 256, causal and not, windows, GQA, unequal lengths (key counts
// that are not tile multiples, one query row), a varlen batch and block
// masks (random lists and the butterfly pattern), e4m3 Q,
// K, V with per-(sequence, KV head) descales and a bf16 O; the workspace
// from the library or from the caller.
//
// Accuracy rule (as FlashAttention-3's FP8 tests). The oracle is the
// float64 reference on the dequantised inputs (code x descale, exact). The
// yardstick is standard attention emulating the FP8 kernel's rounding in
// plain C++ (fp8_emulation below): scores in float32 from the dequantised
// inputs, P = exp(S - rowmax) rounded to e4m3 for the PV product, the row
// sum l from the unrounded P in float32, O = (P_e4m3 V) / l rounded to
// bf16. Then
//   max|O - O_ref|     <= 2 max|O_emul - O_ref|     + 2^-10 max|O_ref|
//   max|lse - lse_ref| <= 2 max|lse_emul - lse_ref| + 1e-4 + 2^-13 A
// with the emulation itself within a norm-wise relative error of 0.1 of
// the reference, so that a broken yardstick cannot loosen the rule. A is
// the largest scale x sum_c |q_c k_c| of a visible (query, key) pair: the
// FP8 tensor cores add a dot product's terms keeping about 14 bits of
// mantissa (not float32's 24; DeepSeek-V3's report, section 3.3.2), so a
// score computed on them carries an error up to about 2^-14 of that sum
// per accumulation, which the float32 emulation does not have and which
// reaches the LSE one for one (measured on an H100: 1.5e-4 to 4.9e-4 at
// d 64-128, against 2^-13 A of about 1e-3). O, a weighted mean, is not
// moved by it beyond its own bound. O is
// poisoned (NaN) before the call; every row of a sequence must be written.
//
// Suites. Sm90GpuFp8*: the kernel, on a GPU of compute capability 9.0,
// where any Error fails (gpu-check runs them in its Hopper step, filter
// *Sm90*); they skip on other GPUs. GpuFp8OtherGpus: elsewhere the call is
// an Error naming ctx.device, and nothing is written; it skips on 9.0.
// FLASHATTN_CUDA_KERNELS is unset around every call (NoKernelOverride): the
// FP8 forward has one kernel family, and gpu-check runs the portable tests
// again with sm80 forced.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "gpu_harness.h"

namespace fa_gpu {
namespace {

// The refusal on GPUs other than compute capability 9.0 (src/cuda/api.cu).
std::string other_gpu_refusal(const ComputeCapability& cc) {
  return "ctx.device: expected a GPU of compute capability 9.0 (H100, H200) for e4m3 inputs (the FP8 forward is a "
         "Hopper kernel), got compute capability " +
         cc.text();
}

// Unsets FLASHATTN_CUDA_KERNELS for one scope and restores what was there.
class NoKernelOverride {
 public:
  NoKernelOverride() {
    if (const char* old = std::getenv(kVar)) old_ = std::string(old);
    unsetenv(kVar);
  }
  ~NoKernelOverride() {
    if (old_) setenv(kVar, old_->c_str(), 1);
  }
  NoKernelOverride(const NoKernelOverride&) = delete;
  NoKernelOverride& operator=(const NoKernelOverride&) = delete;

 private:
  static constexpr const char* kVar = "FLASHATTN_CUDA_KERNELS";
  std::optional<std::string> old_;
};

float round_bf16(float x) { return flashattn::detail::bf16_to_float(flashattn::detail::float_to_bf16(x)); }

// The state of key block kb for query block qb of (sequence b, query head
// h) in m's host lists, read as the API documents them (not through the
// library's own decoding): kFull, kPartial or kSkip.
int block_state(const BlockMask& m, std::int64_t b, std::int64_t h, std::int64_t qb, std::int64_t kb) {
  const std::int64_t row = ((m.batch == 1 ? 0 : b) * m.heads + (m.heads == 1 ? 0 : h)) * m.num_q_blocks + qb;
  for (std::int32_t i = 0; i < m.kv_count[row]; ++i)
    if (m.kv_indices[row * m.num_k_blocks + i] == kb) return kPartial;
  if (m.full_kv_count != nullptr)
    for (std::int32_t i = 0; i < m.full_kv_count[row]; ++i)
      if (m.full_kv_indices[row * m.num_k_blocks + i] == kb) return kFull;
  return kSkip;
}

// The FP8 yardstick (top comment) on p's inputs: O as bf16 values and the
// LSE, laid out as the call's (dense or varlen).
// score_mag: A of the rule (the top comment).
fa_test::Outputs fp8_emulation(const Fp8Problem& p, double* score_mag) {
  const auto* cq = p.cu_q();
  const auto* ck = p.cu_k();
  const Dense q = dequantise_e4m3(p.q.t, p.q_descale.data(), p.hk, cq),
              k = dequantise_e4m3(p.k.t, p.k_descale.data(), p.hk, ck),
              v = dequantise_e4m3(p.v.t, p.v_descale.data(), p.hk, ck);
  Dense o(q.batch, q.seqlen, q.heads, q.head_dim);
  std::vector<double> lse(p.lse.size(), -std::numeric_limits<double>::infinity());
  const std::int64_t group = p.hq / p.hk, d = p.d;
  const auto scale = static_cast<float>(p.scale());
  *score_mag = 0;
  for (std::int64_t b = 0; b < p.batch; ++b) {
    const std::int64_t tb = cq ? 0 : b, q0 = cq ? (*cq)[b] : 0, k0 = ck ? (*ck)[b] : 0;
    const std::int64_t sq = cq ? (*cq)[b + 1] - q0 : p.sq, sk = ck ? (*ck)[b + 1] - k0 : p.sk;
    for (std::int64_t h = 0; h < p.hq; ++h)
      for (std::int64_t i = 0; i < sq; ++i) {
        std::vector<float> s(static_cast<std::size_t>(sk), -std::numeric_limits<float>::infinity());
        float m = -std::numeric_limits<float>::infinity();
        for (std::int64_t j = 0; j < sk; ++j) {
          bool visible =
              window_visible(i, j, sq, sk, p.options.window_left, p.options.causal ? 0 : p.options.window_right);
          if (const BlockMask* bm = p.options.block_mask) {
            const int st = block_state(*bm, b, h, i / bm->block_q, j / bm->block_k);
            visible = st == kFull || (st == kPartial && visible);
          }
          if (!visible) continue;
          float dot = 0;
          double mag = 0;
          for (std::int64_t c = 0; c < d; ++c) {
            const float t = static_cast<float>(q.at(tb, q0 + i, h, c)) * static_cast<float>(k.at(tb, k0 + j, h / group, c));
            dot += t;
            mag += std::fabs(t);
          }
          *score_mag = std::max(*score_mag, scale * mag);
          s[j] = scale * dot;
          m = std::max(m, s[j]);
        }
        if (m == -std::numeric_limits<float>::infinity()) continue;  // O row 0, lse -inf
        float l = 0;
        std::vector<float> acc(static_cast<std::size_t>(d), 0.0f);
        for (std::int64_t j = 0; j < sk; ++j) {
          if (s[j] == -std::numeric_limits<float>::infinity()) continue;
          const float pj = std::exp(s[j] - m);
          l += pj;
          const float p8 = flashattn::from_e4m3(flashattn::to_e4m3(pj));
          for (std::int64_t c = 0; c < d; ++c) acc[c] += p8 * static_cast<float>(v.at(tb, k0 + j, h / group, c));
        }
        for (std::int64_t c = 0; c < d; ++c) o.at(tb, q0 + i, h, c) = round_bf16(acc[c] / l);
        const std::int64_t li = cq ? h * p.q.t.seqlen + q0 + i : (b * p.hq + h) * p.sq + i;
        lse[li] = static_cast<double>(m) + std::log(static_cast<double>(l));
      }
  }
  fa_test::Outputs out;
  out.o = o.x;
  out.lse = lse;
  return out;
}

// p on the device: inputs uploaded, O and LSE poisoned, and the
// ForwardArgs that name them (not copyable: args point at vl).
struct DeviceFp8 {
  DeviceBuffer q, k, v, o, lse, q_descale, k_descale, v_descale, cu_q, cu_k, bm_count, bm_idx, bm_fcount, bm_fidx;
  Varlen vl;
  BlockMask bm;
  flashattn::ForwardArgs args;

  explicit DeviceFp8(Fp8Problem& p)
      : q(static_cast<std::size_t>(p.q.t.numel())), k(static_cast<std::size_t>(p.k.t.numel())),
        v(static_cast<std::size_t>(p.v.t.numel())), o(static_cast<std::size_t>(p.o.t.numel()) * 2),
        lse(p.lse.size() * sizeof(float)) {
    q.upload(p.q.buf.data());
    k.upload(p.k.buf.data());
    v.upload(p.v.buf.data());
    o.poison();
    lse.poison();
    q_descale = to_device(p.q_descale);
    k_descale = to_device(p.k_descale);
    v_descale = to_device(p.v_descale);
    args = p.forward_args();
    args.q.data = q.get();
    args.k.data = k.get();
    args.v.data = v.get();
    args.o.data = o.get();
    args.lse = static_cast<float*>(lse.get());
    args.q_descale = static_cast<const float*>(q_descale.get());
    args.k_descale = static_cast<const float*>(k_descale.get());
    args.v_descale = static_cast<const float*>(v_descale.get());
    if (p.varlen) {
      cu_q = to_device(p.varlen->cu_q);
      cu_k = to_device(p.varlen->cu_k);
      vl = p.varlen->vl;
      vl.cu_seqlens_q = static_cast<const std::int32_t*>(cu_q.get());
      vl.cu_seqlens_k = static_cast<const std::int32_t*>(cu_k.get());
      vl.cu_seqlens_q_host = p.varlen->cu_q.data();
      vl.cu_seqlens_k_host = p.varlen->cu_k.data();
      args.options.varlen = &vl;
    }
    if (const BlockMask* h = p.options.block_mask) {
      // The lists on the device, their host copies beside them (so the call checks them).
      const std::size_t rows = static_cast<std::size_t>(h->batch * h->heads * h->num_q_blocks);
      const std::size_t cells = rows * static_cast<std::size_t>(h->num_k_blocks);
      auto up = [](const std::int32_t* x, std::size_t n) { return to_device(std::vector<std::int32_t>(x, x + n)); };
      bm = *h;
      bm_count = up(h->kv_count, rows);
      bm_idx = up(h->kv_indices, cells);
      bm.kv_count = static_cast<const std::int32_t*>(bm_count.get());
      bm.kv_indices = static_cast<const std::int32_t*>(bm_idx.get());
      bm.kv_count_host = h->kv_count;
      bm.kv_indices_host = h->kv_indices;
      if (h->full_kv_count != nullptr) {
        bm_fcount = up(h->full_kv_count, rows);
        bm_fidx = up(h->full_kv_indices, cells);
        bm.full_kv_count = static_cast<const std::int32_t*>(bm_fcount.get());
        bm.full_kv_indices = static_cast<const std::int32_t*>(bm_fidx.get());
        bm.full_kv_count_host = h->full_kv_count;
        bm.full_kv_indices_host = h->full_kv_indices;
      }
      args.options.block_mask = &bm;
    }
  }
  DeviceFp8(const DeviceFp8&) = delete;
  DeviceFp8& operator=(const DeviceFp8&) = delete;

  // O (bf16 values) and LSE, read back.
  fa_test::Outputs download(Fp8Problem& p) const {
    o.download(p.o.buf.data());
    std::vector<float> l(p.lse.size());
    lse.download(l.data());
    fa_test::Outputs out;
    out.o = p.o.values();
    out.lse = to_double(l);
    return out;
  }
};

// Where the FP8 forward's scratch (a transposed copy of V) comes from.
enum class Workspace { library, caller };

// Runs p on the GPU (compute capability 9.0: any Error fails the test).
// unwritten (with a caller's workspace): the count of its bytes still
// holding the poison (0xFF, an e4m3 NaN, which no quantised V has) after
// the call.
fa_test::Outputs run_on_gpu(Fp8Problem& p, Workspace ws = Workspace::library, std::size_t* unwritten = nullptr) {
  EXPECT_TRUE(flashattn::supports(Device::cuda, Algorithm::flash, DType::e4m3, p.d));
  DeviceFp8 dp(p);
  Context ctx;
  ctx.device = Device::cuda;
  const NoKernelOverride no_override;
  DeviceBuffer scratch;
  if (ws == Workspace::caller) {
    const std::size_t bytes = flashattn::forward_workspace_bytes(dp.args, ctx);
    EXPECT_GT(bytes, 0u) << "the FP8 forward transposes V into the workspace";
    scratch = DeviceBuffer(bytes);  // cudaMalloc: 256-byte aligned
    scratch.poison();
    ctx.workspace = scratch.get();
    ctx.workspace_bytes = bytes;
  }
  flashattn::forward(dp.args, ctx);
  cuda_ok(cudaDeviceSynchronize(), "fp8 forward");
  if (unwritten != nullptr && ws == Workspace::caller) {
    std::vector<unsigned char> bytes(ctx.workspace_bytes);
    scratch.download(bytes.data());
    *unwritten = static_cast<std::size_t>(std::count(bytes.begin(), bytes.end(), static_cast<unsigned char>(0xFF)));
  }
  return dp.download(p);
}

// The rule of the top comment; a NaN left in O (an unwritten row) fails
// through max_abs_error's +inf.
void expect_fp8_rule(const fa_test::Outputs& got, const fa_test::Outputs& emul, double score_mag,
                     const fa_test::Outputs& ref) {
  ASSERT_LT(rel_error(emul.o, ref.o), 0.1) << "the FP8 emulation itself is off";
  const double err = max_abs_error(got.o, ref.o), err_emul = max_abs_error(emul.o, ref.o);
  EXPECT_LE(err, 2 * err_emul + std::ldexp(max_abs(ref.o), -10)) << "o (emulation " << err_emul << ")";
  const double err_lse = max_abs_error(got.lse, ref.lse), err_lse_emul = max_abs_error(emul.lse, ref.lse);
  EXPECT_LE(err_lse, 2 * err_lse_emul + 1e-4 + std::ldexp(score_mag, -13))
      << "lse (emulation " << err_lse_emul << ", score magnitude " << score_mag << ")";
  if (verbose())
    std::printf("fp8: o err %.3g (emulation %.3g), lse err %.3g (emulation %.3g, 2^-13 A %.3g)\n", err, err_emul,
                err_lse, err_lse_emul, std::ldexp(score_mag, -13));
}

// The kernel's tests: compute capability 9.0 only.
class Sm90GpuFp8Test : public GpuTest {
 protected:
  void SetUp() override {
    GpuTest::SetUp();
    if (IsSkipped()) return;
    const ComputeCapability cc = compute_capability();
    if (!is_sm90())
      GTEST_SKIP() << "the FP8 forward is a Hopper kernel (compute capability 9.0), this GPU is " << cc.text()
                   << " (GpuFp8OtherGpus checks its refusal)";
    if (!flash_enabled()) GTEST_SKIP() << "FLASHATTN_GPU_TESTS_NO_FLASH=1 (the FP8 forward is a flash kernel)";
  }
};

class Sm90GpuFp8 : public Sm90GpuFp8Test, public ::testing::WithParamInterface<std::tuple<int, bool>> {};

// Key counts 700 and 129 are no multiple of the key tile (128, or 64 at
// d = 256) nor of 16; 200 x 700 and 333 x 129 are unequal lengths; one
// problem has a single query row (decode-like, GQA 4:1) and one a window.
TEST_P(Sm90GpuFp8, ForwardMatchesTheReferenceOfTheDequantisedInputs) {
  const auto [d, causal] = GetParam();
  FA_SEEDED(seed);
  struct Shape {
    std::int64_t b, sq, sk, hq, hk, window_left, window_right;
  };
  for (const Shape s : {Shape{2, 512, 512, 2, 2, -1, -1}, Shape{1, 200, 700, 4, 2, -1, -1},
                        Shape{2, 333, 129, 3, 1, -1, -1}, Shape{2, 1, 300, 4, 1, -1, -1},
                        Shape{1, 300, 400, 2, 1, 100, causal ? -1 : 30}}) {
    SCOPED_TRACE("b " + std::to_string(s.b) + " sq " + std::to_string(s.sq) + " sk " + std::to_string(s.sk) +
                 " hq " + std::to_string(s.hq) + " hk " + std::to_string(s.hk) + " window (" +
                 std::to_string(s.window_left) + ", " + std::to_string(s.window_right) + ")");
    Fp8Problem p(s.b, s.sq, s.sk, s.hq, s.hk, d);
    p.options.causal = causal;
    p.options.window_left = s.window_left;
    p.options.window_right = s.window_right;
    p.randomize(seed + static_cast<std::uint64_t>(s.sq));
    const fa_test::Outputs got = run_on_gpu(p);
    double mag = 0;
    const fa_test::Outputs emul = fp8_emulation(p, &mag);
    expect_fp8_rule(got, emul, mag, fp8_reference(p));
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, Sm90GpuFp8, ::testing::Combine(::testing::Values(64, 128, 256), ::testing::Bool()),
                         [](const auto& info) {
                           std::string n = std::to_string(std::get<0>(info.param));
                           n += std::get<1>(info.param) ? "_causal" : "_full";
                           return "d" + n;
                         });

class Sm90GpuFp8Varlen : public Sm90GpuFp8Test {};

// The caller's workspace (forward_workspace_bytes, poisoned) here. The
// key lengths leave a group of 16 V^T columns after three of the four
// sequences and none after the third: the transpose must write every byte
// (no clear goes first, and the last key tile's box reads past a
// sequence's keys).
TEST_F(Sm90GpuFp8Varlen, DescalesPerSequence) {
  FA_SEEDED(seed);
  Fp8Problem p({100, 0, 300, 17}, {250, 9, 300, 40}, 4, 2, 128, 0);
  p.options.causal = true;
  p.randomize(seed);
  std::size_t unwritten = 0;
  const fa_test::Outputs got = run_on_gpu(p, Workspace::caller, &unwritten);
  EXPECT_EQ(unwritten, 0u) << "bytes of the V^T workspace the call left unwritten";
  double mag = 0;
  const fa_test::Outputs emul = fp8_emulation(p, &mag);
  expect_fp8_rule(got, emul, mag, fp8_reference(p));
}

// The small problem gpu-check's compute-sanitizer steps run (filter
// *QuickGpu*): every tile kind once (a partial last key tile, a causal
// diagonal, GQA), the library's own scratch.
TEST_F(Sm90GpuFp8Varlen, QuickGpuDenseCausalD128) {
  FA_SEEDED(seed);
  Fp8Problem p(1, 200, 300, 2, 1, 128);
  p.options.causal = true;
  p.randomize(seed);
  const fa_test::Outputs got = run_on_gpu(p);
  double mag = 0;
  const fa_test::Outputs emul = fp8_emulation(p, &mag);
  expect_fp8_rule(got, emul, mag, fp8_reference(p));
}

class Sm90GpuFp8Sparse : public Sm90GpuFp8Test, public ::testing::WithParamInterface<int> {};

// Block-sparse: random skip / partial / full blocks of 128 x 128 per
// (sequence, query head) with GQA 2:1, lengths that cut the last blocks,
// the lists shuffled, one query block with no key block at all (its rows:
// O = 0, LSE = -inf, no NaN), causal and not (causal applies inside
// partial blocks only); and the paper's butterfly broadcast over batch and
// heads with 256 x 256 blocks (two query tiles a block).
TEST_P(Sm90GpuFp8Sparse, BlockMasksMatchTheReference) {
  const int d = GetParam();
  FA_SEEDED(seed);
  for (const bool causal : {false, true}) {
    SCOPED_TRACE(causal ? "random blocks, causal" : "random blocks");
    const std::int64_t b = 2, sq = 400, sk = 700, hq = 4, hk = 2;
    BlockStates st = random_block_states(seed + 100 + causal, b, hq, sq, sk, 128, 128);
    for (std::int64_t kb = 0; kb < st.nkb; ++kb) st.s[((1 * hq + 2) * st.nqb + 1) * st.nkb + kb] = kSkip;
    BlockMaskBuf mb = make_block_mask(st, true, seed + 200 + causal);
    Fp8Problem p(b, sq, sk, hq, hk, d);
    p.options.causal = causal;
    p.options.block_mask = mb.get();
    p.randomize(seed + 300 + causal);
    const fa_test::Outputs got = run_on_gpu(p);
    double mag = 0;
    const fa_test::Outputs emul = fp8_emulation(p, &mag);
    expect_fp8_rule(got, emul, mag, fp8_reference(p));
    // The empty query block (sequence 1, head 2, rows 128 .. 255).
    for (std::int64_t i = 128; i < 256; ++i) {
      EXPECT_EQ(got.lse[static_cast<std::size_t>((1 * hq + 2) * sq + i)], -std::numeric_limits<double>::infinity())
          << "row " << i;
      for (std::int64_t c = 0; c < d; ++c)
        ASSERT_EQ(got.o[static_cast<std::size_t>(((1 * sq + i) * hq + 2) * d + c)], 0.0) << "row " << i;
    }
  }
  {
    SCOPED_TRACE("butterfly, broadcast, 256 x 256 blocks");
    const std::int64_t sq = 1024, sk = 1024;
    const flashattn::BlockPattern pattern = flashattn::BlockPattern::butterfly(sq, sk, 256, 256, 2, 1, true);
    const BlockMask mask = pattern.mask();
    Fp8Problem p(1, sq, sk, 2, 2, d);
    p.options.causal = true;
    p.options.block_mask = &mask;
    p.randomize(seed + 400);
    const fa_test::Outputs got = run_on_gpu(p);
    double mag = 0;
    const fa_test::Outputs emul = fp8_emulation(p, &mag);
    expect_fp8_rule(got, emul, mag, fp8_reference(p));
  }
}

INSTANTIATE_TEST_SUITE_P(HeadDims, Sm90GpuFp8Sparse, ::testing::Values(64, 128, 256),
                         [](const auto& info) {
                           std::string n = "d";
                           n += std::to_string(info.param);
                           return n;
                         });

class Sm90GpuFp8Refusals : public Sm90GpuFp8Test {};

// A workspace off 256-byte alignment is an Error naming ctx.workspace;
// ctx.cuda_kernels = sm80 (a family without an FP8 kernel) one naming
// ctx.cuda_kernels. Neither writes O.
TEST_F(Sm90GpuFp8Refusals, MisalignedWorkspaceAndForcedSm80) {
  FA_SEEDED(seed);
  Fp8Problem p(1, 64, 64, 2, 2, 128);
  p.randomize(seed);
  DeviceFp8 dp(p);
  Context ctx;
  ctx.device = Device::cuda;
  const NoKernelOverride no_override;
  const std::size_t bytes = flashattn::forward_workspace_bytes(dp.args, ctx);
  ASSERT_GT(bytes, 0u);
  DeviceBuffer scratch(bytes + 256);
  ctx.workspace = static_cast<char*>(scratch.get()) + 16;
  ctx.workspace_bytes = bytes;
  const auto starts_with = [](const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; };
  try {
    flashattn::forward(dp.args, ctx);
    ADD_FAILURE() << "a workspace 16 bytes past a 256-byte boundary was accepted";
  } catch (const flashattn::Error& e) {
    EXPECT_TRUE(starts_with(e.what(), "ctx.workspace:")) << e.what();
  }
  ctx.workspace = nullptr;
  ctx.workspace_bytes = 0;
  ctx.cuda_kernels = CudaKernels::sm80;
  try {
    flashattn::forward(dp.args, ctx);
    ADD_FAILURE() << "ctx.cuda_kernels = sm80 ran e4m3 inputs";
  } catch (const flashattn::Error& e) {
    EXPECT_TRUE(starts_with(e.what(), "ctx.cuda_kernels:")) << e.what();
  }
  cuda_ok(cudaDeviceSynchronize(), "refused fp8 forward");
  const fa_test::Outputs out = dp.download(p);
  for (const double x : out.o) ASSERT_TRUE(std::isnan(x)) << "a refused call wrote O";
}

// On GPUs other than compute capability 9.0: the call and the workspace
// query are an Error naming ctx.device (supports() answers for the build,
// not the GPU), and O keeps its poison.
class GpuFp8OtherGpus : public GpuTest {};

TEST_F(GpuFp8OtherGpus, RefusedNamingCtxDevice) {
  if (is_sm90()) GTEST_SKIP() << "compute capability 9.0 runs the kernel: see Sm90GpuFp8";
  const ComputeCapability cc = compute_capability();
  FA_SEEDED(seed);
  Fp8Problem p(1, 64, 64, 2, 2, 128);
  p.randomize(seed);
  EXPECT_TRUE(flashattn::supports(Device::cuda, Algorithm::flash, DType::e4m3, p.d));
  DeviceFp8 dp(p);
  Context ctx;
  ctx.device = Device::cuda;
  const NoKernelOverride no_override;
  const std::string want = other_gpu_refusal(cc);
  try {
    (void)flashattn::forward_workspace_bytes(dp.args, ctx);
    ADD_FAILURE() << "forward_workspace_bytes accepted e4m3 on compute capability " << cc.text();
  } catch (const flashattn::Error& e) {
    EXPECT_EQ(std::string(e.what()), want);
  }
  try {
    flashattn::forward(dp.args, ctx);
    ADD_FAILURE() << "forward ran e4m3 on compute capability " << cc.text();
  } catch (const flashattn::Error& e) {
    // Below 8.0 the flash kernels' own requirement comes first.
    if (cc.major >= 8) EXPECT_EQ(std::string(e.what()), want);
    else EXPECT_EQ(std::string(e.what()).rfind("ctx.device: expected a", 0), 0u) << e.what();
  }
  cuda_ok(cudaDeviceSynchronize(), "refused fp8 forward");
  const fa_test::Outputs out = dp.download(p);
  for (const double x : out.o) ASSERT_TRUE(std::isnan(x)) << "a refused call wrote O";
}

}  // namespace
}  // namespace fa_gpu
