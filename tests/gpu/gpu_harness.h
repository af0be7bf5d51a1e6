// The GPU test harness: one attention case (shapes + options) run on the
// GPU by both algorithms and judged against the float64 CPU reference.
//
// Accuracy rule (as flash-attn's tests): with inputs rounded to the 16-bit
// dtype, the reference computes in float64 on exactly those values, and
//   err(flash)    <= 2 err(standard) + floor   (O, LSE)
//   err(flash)    <= 3 err(standard) + floor   (dQ, dK, dV)
// where err is the max abs difference to the reference and "standard" is
// the cuBLAS materialising path computed in the same low precision. The
// standard path itself must be within a fixed norm-wise relative error of
// the reference, so a broken baseline cannot loosen the rule.
//
// Every output is poisoned with NaN before each call; rows of no sequence
// (varlen tail) must still hold the poison afterwards.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "test_util.h"

namespace fa_gpu {

using namespace fa_test;  // seeds, HostBuffer, errors, Dense/gather, varlen and block-mask builders
using flashattn::BackwardArgs;
using flashattn::CudaKernels;
using flashattn::ForwardArgs;

// --------------------------------------------------------------- device ---

inline bool gpu_available() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

inline void cuda_ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

// The current device's compute capability.
struct ComputeCapability {
  int major = 0, minor = 0;
  std::string text() const { return std::to_string(major) + "." + std::to_string(minor); }
};

inline ComputeCapability compute_capability() {
  int dev = 0;
  ComputeCapability cc;
  cuda_ok(cudaGetDevice(&dev), "cudaGetDevice");
  cuda_ok(cudaDeviceGetAttribute(&cc.major, cudaDevAttrComputeCapabilityMajor, dev), "cudaDeviceGetAttribute");
  cuda_ok(cudaDeviceGetAttribute(&cc.minor, cudaDevAttrComputeCapabilityMinor, dev), "cudaDeviceGetAttribute");
  return cc;
}

// Whether the current device runs sm_90a code (the Hopper kernels): compute
// capability 9.0 exactly, not later major versions.
inline bool is_sm90() {
  const ComputeCapability cc = compute_capability();
  return cc.major == 9 && cc.minor == 0;
}

// FLASHATTN_GPU_TESTS_NO_FLASH=1 runs the standard path alone (to check the
// baseline and the harness while the flash kernels are being worked on).
inline bool flash_enabled() {
  const char* env = std::getenv("FLASHATTN_GPU_TESTS_NO_FLASH");
  return env == nullptr || std::string(env) != "1";
}

// FLASHATTN_GPU_TESTS_VERBOSE=1 prints the errors of every case (to see
// how close the tolerances are).
inline bool verbose() {
  const char* env = std::getenv("FLASHATTN_GPU_TESTS_VERBOSE");
  return env != nullptr && std::string(env) == "1";
}

inline std::vector<Algorithm> algorithms() {
  if (flash_enabled()) return {Algorithm::standard, Algorithm::flash};
  return {Algorithm::standard};
}

// Every GPU test derives from this: it skips cleanly on machines without a
// GPU (CI), and checks that no test leaves a CUDA error behind.
class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!gpu_available()) GTEST_SKIP() << "no CUDA device: GPU test skipped";
  }
  void TearDown() override {
    if (gpu_available()) {
      EXPECT_EQ(cudaSuccess, cudaDeviceSynchronize());
    }
  }
};

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t bytes) : bytes_(bytes) {
    cuda_ok(cudaMalloc(&ptr_, bytes == 0 ? 16 : bytes), "cudaMalloc");
  }
  ~DeviceBuffer() {
    if (ptr_) cudaFree(ptr_);
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  void* get() const { return ptr_; }
  std::size_t bytes() const { return bytes_; }
  void upload(const void* host) { cuda_ok(cudaMemcpy(ptr_, host, bytes_, cudaMemcpyHostToDevice), "upload"); }
  void download(void* host) const {
    cuda_ok(cudaMemcpy(host, ptr_, bytes_, cudaMemcpyDeviceToHost), "download");
  }
  // All-ones bytes: NaN in f16, bf16 and f32.
  void poison() { cuda_ok(cudaMemset(ptr_, 0xFF, bytes_), "poison"); }

 private:
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

template <typename T>
DeviceBuffer to_device(const std::vector<T>& v) {
  DeviceBuffer d(v.size() * sizeof(T));
  if (!v.empty()) d.upload(v.data());
  return d;
}

// ---------------------------------------------------------------- tensors ---

// A (b, s, h, d) view. The padded layout leaves gaps after every head, row
// and batch (still 16-byte multiples, as CUDA requires), so kernels that
// assume contiguity read the gaps and fail.
inline Tensor make_view(void* data, DType dtype, std::int64_t b, std::int64_t s, std::int64_t h, std::int64_t d,
                        bool padded) {
  Tensor t = Tensor::contiguous(data, dtype, b, s, h, d);
  if (padded) {
    t.stride_head = d + 8;
    t.stride_seq = h * t.stride_head + 16;
    t.stride_batch = s * t.stride_seq + 24;
  }
  return t;
}

inline std::int64_t span_of(const Tensor& t) {
  if (t.numel() == 0) return 0;
  return (t.batch - 1) * t.stride_batch + (t.seqlen - 1) * t.stride_seq + (t.heads - 1) * t.stride_head + t.head_dim;
}

// One tensor in three copies with identical strides: the 16-bit host
// values, their exact float64 twin (the reference's input or output), and
// the device buffer.
struct TensorSet {
  Tensor host, host64, dev;
  HostBuffer hbuf, h64buf;
  DeviceBuffer dbuf;

  TensorSet(DType dtype, std::int64_t b, std::int64_t s, std::int64_t h, std::int64_t d, bool padded) {
    const Tensor shape = make_view(nullptr, dtype, b, s, h, d, padded);
    const std::int64_t span = std::max<std::int64_t>(span_of(shape), 1);
    hbuf = HostBuffer(dtype, span);
    h64buf = HostBuffer(DType::f64, span);
    dbuf = DeviceBuffer(static_cast<std::size_t>(span) * flashattn::dtype_size(dtype));
    host = make_view(hbuf.data(), dtype, b, s, h, d, padded);
    host64 = make_view(h64buf.data(), DType::f64, b, s, h, d, padded);
    dev = make_view(dbuf.get(), dtype, b, s, h, d, padded);
  }
  // Normal(0, sigma) values rounded to the dtype, the same values in f64,
  // copied to the device.
  void randomize(std::uint64_t seed, double sigma = 1.0) {
    std::mt19937_64 gen(seed);
    std::normal_distribution<double> dist(0.0, sigma);
    for (std::int64_t i = 0; i < hbuf.size(); ++i) hbuf.set(i, dist(gen));
    set_from_host();
  }
  void set_from_host() {
    for (std::int64_t i = 0; i < hbuf.size(); ++i) h64buf.set(i, hbuf.get(i));
    dbuf.upload(hbuf.data());
  }
  void poison_device() { dbuf.poison(); }
  void fetch() { dbuf.download(hbuf.data()); }
};

// Elements of rows [0, rows) of every (batch, head) of a view, in double.
inline std::vector<double> rows_of(const Tensor& t, std::int64_t rows) {
  std::vector<double> out;
  for (std::int64_t b = 0; b < t.batch; ++b)
    for (std::int64_t s = 0; s < rows && s < t.seqlen; ++s)
      for (std::int64_t h = 0; h < t.heads; ++h)
        for (std::int64_t c = 0; c < t.head_dim; ++c)
          out.push_back(flashattn::detail::load_as_double(t.data, t.dtype, flashattn::detail::offset_of(t, b, s, h) + c));
  return out;
}

// True iff every element of rows [from, seqlen) is still NaN.
inline bool tail_poisoned(const Tensor& t, std::int64_t from) {
  for (std::int64_t b = 0; b < t.batch; ++b)
    for (std::int64_t s = from; s < t.seqlen; ++s)
      for (std::int64_t h = 0; h < t.heads; ++h)
        for (std::int64_t c = 0; c < t.head_dim; ++c)
          if (!std::isnan(flashattn::detail::load_as_double(t.data, t.dtype, flashattn::detail::offset_of(t, b, s, h) + c)))
            return false;
  return true;
}

// ------------------------------------------------------------------ case ---

// The dropout stream of every case (tests that rebuild the mask read these).
constexpr std::uint64_t kDropoutSeed = 0x1234567887654321ull, kDropoutOffset = 77;

struct Case {
  DType dtype = DType::bf16;
  std::int64_t batch = 1, sq = 64, sk = 64, hq = 2, hk = 2, d = 64;
  bool causal = false;
  std::int64_t window_left = -1, window_right = -1;
  float dropout_p = 0.0f;
  std::vector<std::int64_t> lens_q, lens_k;  // varlen when non-empty (batch = lens_q.size())
  bool varlen_host_copies = true;            // also hand the host copies of cu_seqlens / block lists
  std::int64_t varlen_tail = 3;              // rows past the last sequence (must stay untouched)
  std::int64_t block_q = 0, block_k = 0;     // block-sparse when > 0
  bool block_full_lists = true, block_broadcast = false;
  double block_skip = 0.3;                   // chance that a (query block, key block) is skipped
  bool padded = false;
  bool backward = true;
  bool deterministic = false;  // BackwardArgs::deterministic
  bool flash = true, standard = true;
  // Block sizes off the flash kernels' tiles: flash may refuse them with a
  // flashattn::Error naming block_mask instead (never a crash or a wrong
  // result); the standard path takes any block size.
  bool flash_may_refuse = false;

  bool varlen() const { return !lens_q.empty(); }
  std::string describe() const {
    std::ostringstream os;
    os << flashattn::to_string(dtype) << " b" << batch << " sq" << sq << " sk" << sk << " hq" << hq << " hk" << hk
       << " d" << d;
    if (causal) os << " causal";
    if (window_left >= 0 || window_right >= 0) os << " window(" << window_left << "," << window_right << ")";
    if (dropout_p > 0) os << " dropout" << dropout_p;
    if (varlen()) {
      os << " varlen[";
      for (std::size_t i = 0; i < lens_q.size(); ++i) os << (i ? " " : "") << lens_q[i] << "/" << lens_k[i];
      os << "]" << (varlen_host_copies ? "" : " (device-only offsets)");
    }
    if (block_q > 0)
      os << " blocks " << block_q << "x" << block_k << (block_full_lists ? " +full" : "")
         << (block_broadcast ? " broadcast" : "");
    if (padded) os << " padded-strides";
    if (deterministic) os << " deterministic";
    return os.str();
  }
};

struct Outputs {
  std::vector<double> o, lse, dq, dk, dv;
  bool tail_ok = true;  // varlen rows of no sequence still poisoned
};

struct ErrorSet {
  double o = 0, lse = 0, dq = 0, dk = 0, dv = 0;
};

inline ErrorSet max_errors(const Outputs& a, const Outputs& ref) {
  ErrorSet e;
  e.o = max_abs_error(a.o, ref.o);
  e.lse = max_abs_error(a.lse, ref.lse);
  e.dq = max_abs_error(a.dq, ref.dq);
  e.dk = max_abs_error(a.dk, ref.dk);
  e.dv = max_abs_error(a.dv, ref.dv);
  return e;
}

inline double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v)
    if (std::isfinite(x)) m = std::max(m, std::abs(x));
  return m;
}

// One case's inputs on host and device, and the calls.
class Runner {
 public:
  explicit Runner(const Case& c)
      : c_(c),
        rows_q_(c.varlen() ? total(c.lens_q) + c.varlen_tail : c.sq),
        rows_k_(c.varlen() ? total(c.lens_k) + c.varlen_tail : c.sk),
        tb_(c.varlen() ? 1 : c.batch),
        q_(c.dtype, tb_, rows_q_, c.hq, c.d, c.padded),
        k_(c.dtype, tb_, rows_k_, c.hk, c.d, c.padded),
        v_(c.dtype, tb_, rows_k_, c.hk, c.d, c.padded),
        o_(c.dtype, tb_, rows_q_, c.hq, c.d, c.padded),
        do_(c.dtype, tb_, rows_q_, c.hq, c.d, c.padded),
        dq_(c.dtype, tb_, rows_q_, c.hq, c.d, c.padded),
        dk_(c.dtype, tb_, rows_k_, c.hk, c.d, c.padded),
        dv_(c.dtype, tb_, rows_k_, c.hk, c.d, c.padded) {
    if (c.varlen()) {
      vl_ = make_varlen(c.lens_q, c.lens_k);
      dcu_q_ = to_device(vl_.cu_q);
      dcu_k_ = to_device(vl_.cu_k);
      dev_vl_ = *vl_.get();
      dev_vl_.cu_seqlens_q = static_cast<const std::int32_t*>(dcu_q_.get());
      dev_vl_.cu_seqlens_k = static_cast<const std::int32_t*>(dcu_k_.get());
      if (c.varlen_host_copies) {
        dev_vl_.cu_seqlens_q_host = vl_.cu_q.data();
        dev_vl_.cu_seqlens_k_host = vl_.cu_k.data();
      }
    }
    const std::int64_t nseq = c.varlen() ? static_cast<std::int64_t>(c.lens_q.size()) : c.batch;
    lse_entries_ = c.varlen() ? c.hq * rows_q_ : c.batch * c.hq * c.sq;
    lse_dev_ = DeviceBuffer(static_cast<std::size_t>(std::max<std::int64_t>(lse_entries_, 1)) * sizeof(float));
    if (c.block_q > 0) {
      const std::int64_t msq = c.varlen() ? vl_.vl.max_seqlen_q : c.sq, msk = c.varlen() ? vl_.vl.max_seqlen_k : c.sk;
      states_ = random_block_states(fresh_seed(), c.block_broadcast ? 1 : nseq, c.block_broadcast ? 1 : c.hq, msq, msk,
                                    c.block_q, c.block_k, c.block_skip,
                                    c.block_full_lists ? (1.0 - c.block_skip) / 2 : 1.0 - c.block_skip);
      bm_ = make_block_mask(states_, c.block_full_lists, fresh_seed());
      dcount_ = to_device(bm_.count);
      dindices_ = to_device(bm_.indices);
      dfull_count_ = to_device(bm_.full_count);
      dfull_indices_ = to_device(bm_.full_indices);
      dev_bm_ = *bm_.get();
      dev_bm_.kv_count = static_cast<const std::int32_t*>(dcount_.get());
      dev_bm_.kv_indices = static_cast<const std::int32_t*>(dindices_.get());
      dev_bm_.full_kv_count = c.block_full_lists ? static_cast<const std::int32_t*>(dfull_count_.get()) : nullptr;
      dev_bm_.full_kv_indices = c.block_full_lists ? static_cast<const std::int32_t*>(dfull_indices_.get()) : nullptr;
      if (c.varlen_host_copies) {
        dev_bm_.kv_count_host = bm_.m.kv_count;
        dev_bm_.kv_indices_host = bm_.m.kv_indices;
        dev_bm_.full_kv_count_host = bm_.m.full_kv_count;
        dev_bm_.full_kv_indices_host = bm_.m.full_kv_indices;
      }
    }
  }

  static std::int64_t total(const std::vector<std::int64_t>& lens) {
    std::int64_t t = 0;
    for (auto l : lens) t += l;
    return t;
  }

  // Fresh random inputs. sigma_qk sets how peaked the softmax is.
  void randomize(std::uint64_t seed, double sigma_qk = 1.0) {
    q_.randomize(seed * 8 + 1, sigma_qk);
    k_.randomize(seed * 8 + 2, sigma_qk);
    v_.randomize(seed * 8 + 3);
    do_.randomize(seed * 8 + 4);
  }
  TensorSet& q() { return q_; }
  TensorSet& k() { return k_; }
  TensorSet& v() { return v_; }
  TensorSet& dout() { return do_; }
  TensorSet& o() { return o_; }
  TensorSet& dq() { return dq_; }
  TensorSet& dk() { return dk_; }
  TensorSet& dv() { return dv_; }

  flashattn::Options options(bool on_device) const {
    flashattn::Options opt;
    opt.causal = c_.causal;
    opt.window_left = c_.window_left;
    opt.window_right = c_.window_right;
    opt.dropout_p = c_.dropout_p;
    opt.seed = kDropoutSeed;
    opt.offset = kDropoutOffset;
    if (c_.varlen()) opt.varlen = on_device ? &dev_vl_ : &vl_.vl;
    if (c_.block_q > 0) opt.block_mask = on_device ? &dev_bm_ : &bm_.m;
    return opt;
  }

  // The float64 reference on the exact f64 twins of the 16-bit inputs.
  Outputs reference() {
    vl_.get();
    bm_.get();
    std::vector<float> lse(static_cast<std::size_t>(std::max<std::int64_t>(lse_entries_, 1)), 0.0f);
    ForwardArgs f;
    f.q = q_.host64;
    f.k = k_.host64;
    f.v = v_.host64;
    f.o = o_.host64;
    f.lse = lse.data();
    f.options = options(false);
    flashattn::reference::forward(f);
    Outputs r;
    r.o = rows_of(o_.host64, real_rows_q());
    r.lse = lse_values(lse);
    if (c_.backward) {
      BackwardArgs b;
      b.q = q_.host64;
      b.k = k_.host64;
      b.v = v_.host64;
      b.o = o_.host64;
      b.dout = do_.host64;
      b.lse = lse.data();
      b.dq = dq_.host64;
      b.dk = dk_.host64;
      b.dv = dv_.host64;
      b.options = options(false);
      flashattn::reference::backward(b);
      r.dq = rows_of(dq_.host64, real_rows_q());
      r.dk = rows_of(dk_.host64, real_rows_k());
      r.dv = rows_of(dv_.host64, real_rows_k());
    }
    return r;
  }

  ForwardArgs forward_args() {
    ForwardArgs f;
    f.q = q_.dev;
    f.k = k_.dev;
    f.v = v_.dev;
    f.o = o_.dev;
    f.lse = static_cast<float*>(lse_dev_.get());
    f.options = options(true);
    return f;
  }
  BackwardArgs backward_args(bool deterministic) {
    BackwardArgs b;
    b.q = q_.dev;
    b.k = k_.dev;
    b.v = v_.dev;
    b.o = o_.dev;
    b.dout = do_.dev;
    b.lse = static_cast<const float*>(lse_dev_.get());
    b.dq = dq_.dev;
    b.dk = dk_.dev;
    b.dv = dv_.dev;
    b.options = options(true);
    b.deterministic = deterministic;
    return b;
  }

  // Forward (+ backward) on the GPU with poisoned outputs, results fetched.
  Outputs run(Algorithm algo, cudaStream_t stream = nullptr, bool deterministic = false, bool own_workspace = false,
              CudaKernels kernels = CudaKernels::automatic) {
    Context ctx;
    ctx.device = Device::cuda;
    ctx.algorithm = algo;
    ctx.stream = stream;
    ctx.cuda_kernels = kernels;
    const ForwardArgs f = forward_args();
    DeviceBuffer ws;
    o_.poison_device();
    lse_dev_.poison();
    if (own_workspace) {
      ws = DeviceBuffer(flashattn::forward_workspace_bytes(f, ctx));
      ctx.workspace = ws.get();
      ctx.workspace_bytes = ws.bytes();
    }
    flashattn::forward(f, ctx);
    cuda_ok(cudaStreamSynchronize(stream), "forward");
    o_.fetch();
    std::vector<float> lse(static_cast<std::size_t>(std::max<std::int64_t>(lse_entries_, 1)));
    lse_dev_.download(lse.data());
    Outputs r;
    r.o = rows_of(o_.host, real_rows_q());
    r.lse = lse_values(lse);
    if (c_.varlen()) r.tail_ok = tail_poisoned(o_.host, real_rows_q()) && lse_tail_poisoned(lse);
    if (c_.backward) {
      const BackwardArgs b = backward_args(deterministic);
      dq_.poison_device();
      dk_.poison_device();
      dv_.poison_device();
      if (own_workspace) {
        ws = DeviceBuffer(flashattn::backward_workspace_bytes(b, ctx));
        ctx.workspace = ws.get();
        ctx.workspace_bytes = ws.bytes();
      }
      flashattn::backward(b, ctx);
      cuda_ok(cudaStreamSynchronize(stream), "backward");
      dq_.fetch();
      dk_.fetch();
      dv_.fetch();
      r.dq = rows_of(dq_.host, real_rows_q());
      r.dk = rows_of(dk_.host, real_rows_k());
      r.dv = rows_of(dv_.host, real_rows_k());
      if (c_.varlen())
        r.tail_ok = r.tail_ok && tail_poisoned(dq_.host, real_rows_q()) && tail_poisoned(dk_.host, real_rows_k()) &&
                    tail_poisoned(dv_.host, real_rows_k());
    }
    return r;
  }

  std::int64_t real_rows_q() const { return c_.varlen() ? total(c_.lens_q) : c_.sq; }
  std::int64_t real_rows_k() const { return c_.varlen() ? total(c_.lens_k) : c_.sk; }

 private:
  // LSE entries of real rows only ([hq, total] varlen, [b, hq, sq] dense).
  std::vector<double> lse_values(const std::vector<float>& lse) const {
    std::vector<double> out;
    if (!c_.varlen()) {
      for (std::int64_t i = 0; i < lse_entries_; ++i) out.push_back(lse[i]);
      return out;
    }
    for (std::int64_t h = 0; h < c_.hq; ++h)
      for (std::int64_t i = 0; i < real_rows_q(); ++i) out.push_back(lse[h * rows_q_ + i]);
    return out;
  }
  bool lse_tail_poisoned(const std::vector<float>& lse) const {
    for (std::int64_t h = 0; h < c_.hq; ++h)
      for (std::int64_t i = real_rows_q(); i < rows_q_; ++i)
        if (!std::isnan(lse[h * rows_q_ + i])) return false;
    return true;
  }

  Case c_;
  std::int64_t rows_q_, rows_k_, tb_;
  TensorSet q_, k_, v_, o_, do_, dq_, dk_, dv_;
  std::int64_t lse_entries_ = 0;
  DeviceBuffer lse_dev_;
  VarlenBuf vl_;
  Varlen dev_vl_;
  DeviceBuffer dcu_q_, dcu_k_;
  BlockStates states_;
  BlockMaskBuf bm_;
  BlockMask dev_bm_;
  DeviceBuffer dcount_, dindices_, dfull_count_, dfull_indices_;
};

// Norm-wise relative error the standard (cuBLAS, 16-bit) path must meet
// against float64: bf16 keeps 8 significant bits, f16 11, and S, P, dP, dS
// are each rounded once to the dtype. Measured on an H100 over two runs of
// the whole suite: at most 8.8e-3 (bf16, a single-row case)
// and 6.2e-4 (f16), gradients included. The bounds leave a factor 3 to 8:
// they only need to catch a broken baseline (a wrong mask, a missed row or
// a wrong GEMM gives errors of order 1), the fine rule is the flash one.
inline double standard_tolerance(DType dtype, bool gradient) {
  const double base = dtype == DType::bf16 ? 3e-2 : 5e-3;
  return gradient ? 2 * base : base;
}

inline void expect_nonnan(const std::vector<double>& v, const char* what, const char* algo) {
  std::int64_t nans = 0;
  for (double x : v) nans += std::isnan(x) ? 1 : 0;
  EXPECT_EQ(nans, 0) << what << " of " << algo << " has NaN (unwritten or broken) elements";
}

// Runs the case on the GPU by both algorithms and applies the accuracy rule.
inline void check_case(const Case& c) {
  SCOPED_TRACE(c.describe());
  FA_SEEDED(seed);
  Runner r(c);
  r.randomize(seed);
  const Outputs ref = r.reference();
  const Outputs std_out = r.run(Algorithm::standard, nullptr, c.deterministic);
  const ErrorSet es = max_errors(std_out, ref);
  EXPECT_TRUE(std_out.tail_ok) << "standard wrote rows that belong to no sequence";
  expect_nonnan(std_out.o, "O", "standard");
  if (c.standard) {
    EXPECT_LE(rel_error(std_out.o, ref.o), standard_tolerance(c.dtype, false)) << "standard O vs float64";
    // The LSE of the 16-bit S row: |S| rounding error, about |S| 2^-8 (bf16).
    EXPECT_LE(es.lse, (c.dtype == DType::bf16 ? 4e-2 : 6e-3) * std::max(1.0, max_abs(ref.lse))) << "standard LSE";
    if (c.backward) {
      expect_nonnan(std_out.dq, "dQ", "standard");
      expect_nonnan(std_out.dk, "dK", "standard");
      expect_nonnan(std_out.dv, "dV", "standard");
      EXPECT_LE(rel_error(std_out.dq, ref.dq), standard_tolerance(c.dtype, true)) << "standard dQ vs float64";
      EXPECT_LE(rel_error(std_out.dk, ref.dk), standard_tolerance(c.dtype, true)) << "standard dK vs float64";
      EXPECT_LE(rel_error(std_out.dv, ref.dv), standard_tolerance(c.dtype, true)) << "standard dV vs float64";
    }
  }
  if (verbose())
    std::printf("[ errors   ] %s | standard rel O %.2e dQ %.2e dK %.2e dV %.2e | max O %.2e LSE %.2e dQ %.2e dK %.2e dV %.2e\n",
                c.describe().c_str(), rel_error(std_out.o, ref.o), rel_error(std_out.dq, ref.dq),
                rel_error(std_out.dk, ref.dk), rel_error(std_out.dv, ref.dv), es.o, es.lse, es.dq, es.dk, es.dv);
  if (!c.flash || !flash_enabled()) return;
  Outputs fl;
  try {
    fl = r.run(Algorithm::flash, nullptr, c.deterministic);
  } catch (const flashattn::Error& e) {
    if (!c.flash_may_refuse) {
      ADD_FAILURE() << "flash refused a supported case: " << e.what();
    } else {
      EXPECT_NE(std::string(e.what()).find("block_mask"), std::string::npos) << e.what();
    }
    return;
  }
  const ErrorSet ef = max_errors(fl, ref);
  if (verbose())
    std::printf("[ errors   ] %s | flash max O %.2e LSE %.2e dQ %.2e dK %.2e dV %.2e\n", c.describe().c_str(), ef.o,
                ef.lse, ef.dq, ef.dk, ef.dv);
  EXPECT_TRUE(fl.tail_ok) << "flash wrote rows that belong to no sequence";
  expect_nonnan(fl.o, "O", "flash");
  constexpr double kFloor = 1e-4;
  EXPECT_LE(ef.o, 2 * es.o + kFloor) << "flash O: max error " << ef.o << " vs standard " << es.o;
  EXPECT_LE(ef.lse, 2 * es.lse + kFloor) << "flash LSE: max error " << ef.lse << " vs standard " << es.lse;
  if (c.backward) {
    expect_nonnan(fl.dq, "dQ", "flash");
    expect_nonnan(fl.dk, "dK", "flash");
    expect_nonnan(fl.dv, "dV", "flash");
    EXPECT_LE(ef.dq, 3 * es.dq + kFloor) << "flash dQ: max error " << ef.dq << " vs standard " << es.dq;
    EXPECT_LE(ef.dk, 3 * es.dk + kFloor) << "flash dK: max error " << ef.dk << " vs standard " << es.dk;
    EXPECT_LE(ef.dv, 3 * es.dv + kFloor) << "flash dV: max error " << ef.dv << " vs standard " << es.dv;
  }
}

}  // namespace fa_gpu
