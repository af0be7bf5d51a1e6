// flashattn: IO-aware exact attention (FlashAttention), forward and backward.
//
// One public header. Every backend (CPU, CUDA) takes the same argument
// structs, is validated by the same code (src/common/validate.cpp) and
// reports bad input through one exception type, flashattn::Error (device
// failures are flashattn::RuntimeError; see below).
//
// Layout convention (as flash-attn): Q, K, V, O are (batch, seqlen, heads,
// head_dim) with explicit element strides for batch, seq and head; the last
// dimension is contiguous. For variable-length batches the tensors are
// (total_tokens, heads, head_dim), given as batch = 1 and seqlen = total, and
// Varlen carries the cumulative sequence lengths.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace flashattn {

// ---------------------------------------------------------------- errors ---

// Every exception the library throws derives from flashattn::Exception
// (catch it to catch them all). Two kinds, never mixed:
//  - Error (a std::invalid_argument): the arguments of the call are bad.
//    The message always names the argument and gives the expected and the
//    actual value ("arg: expected X, got Y"). Nothing was computed.
//  - RuntimeError (a std::runtime_error): the arguments were accepted but
//    the device failed (a CUDA or cuBLAS call, a kernel launch);
//    OutOfMemory is the device allocation failure among them.
// The Python binding raises ValueError, RuntimeError and
// torch.OutOfMemoryError for them.
class Exception {
 public:
  virtual ~Exception() = default;
  virtual const char* what() const noexcept = 0;
};

class Error : public std::invalid_argument, public Exception {
 public:
  using std::invalid_argument::invalid_argument;
  const char* what() const noexcept override { return std::invalid_argument::what(); }
};

class RuntimeError : public std::runtime_error, public Exception {
 public:
  using std::runtime_error::runtime_error;
  const char* what() const noexcept override { return std::runtime_error::what(); }
};

class OutOfMemory : public RuntimeError {
 public:
  using RuntimeError::RuntimeError;
};

// ----------------------------------------------------------------- types ---

// e4m3 is OCP FP8 E4M3FN (torch.float8_e4m3fn): 1 sign bit, 4 exponent
// bits of bias 7, 3 mantissa bits; no infinities, NaN = S.1111.111, largest
// finite 448, smallest subnormal 2^-9. It is an input dtype of the forward
// only (see ForwardArgs, "FP8").
enum class DType : int { f32 = 0, f16 = 1, bf16 = 2, f64 = 3, e4m3 = 4 };
enum class Device : int { cpu = 0, cuda = 1 };

const char* to_string(DType dtype);
const char* to_string(Device device);
std::size_t dtype_size(DType dtype);

// e4m3 codes and floats. from_e4m3 is exact (every code is a float).
// to_e4m3 rounds to nearest, ties to even, as torch's
// x.to(torch.float8_e4m3fn) does: magnitudes above 464 (the midpoint
// between 448 and the NaN code), infinities and NaN give NaN (sign kept);
// no saturation, so scale inputs into [-448, 448] first.
float from_e4m3(std::uint8_t code);
std::uint8_t to_e4m3(float x);

// A strided 4-D view (batch, seqlen, heads, head_dim). Strides are in
// elements; the head_dim stride is 1 by construction. Sizes and strides are
// 64-bit so that no index arithmetic overflows on large problems.
struct Tensor {
  void* data = nullptr;
  DType dtype = DType::f32;
  std::int64_t batch = 0, seqlen = 0, heads = 0, head_dim = 0;
  std::int64_t stride_batch = 0, stride_seq = 0, stride_head = 0;

  // A densely packed (batch, seqlen, heads, head_dim) tensor.
  static Tensor contiguous(void* data, DType dtype, std::int64_t batch,
                           std::int64_t seqlen, std::int64_t heads,
                           std::int64_t head_dim);
  std::int64_t numel() const { return batch * seqlen * heads * head_dim; }
};

// Variable-length batch (key padding): sequence b owns rows
// [cu_seqlens_q[b], cu_seqlens_q[b+1]) of Q/O and [cu_seqlens_k[b],
// cu_seqlens_k[b+1]) of K/V. Both arrays have batch + 1 int32 entries, start
// at 0 and never decrease. Rows past cu_seqlens[batch] belong to no
// sequence: no backend reads or writes them (their outputs are left as
// they were).
//
// The arrays live on the device of the call. A CUDA call cannot read them
// without synchronising, so it validates their contents only when the host
// copies are also given (cu_seqlens_*_host); without them it checks what it
// can and clamps every sequence to the tensor, so bad values cannot touch
// memory outside the tensors (their results are then undefined).
struct Varlen {
  const std::int32_t* cu_seqlens_q = nullptr;
  const std::int32_t* cu_seqlens_k = nullptr;
  std::int64_t batch = 0;
  std::int64_t max_seqlen_q = 0;  // max over b of the query lengths
  std::int64_t max_seqlen_k = 0;
  const std::int32_t* cu_seqlens_q_host = nullptr;  // optional (CUDA)
  const std::int32_t* cu_seqlens_k_host = nullptr;  // optional (CUDA)
};

// Block-sparse attention in compressed form (the shape of FlexAttention's
// BlockMask). Queries are cut into blocks of block_q rows and keys into
// blocks of block_k columns. For query block qb of (batch b, head h):
//  - kv_indices[b, h, qb, 0 .. kv_count[b, h, qb]) are the "partial" key
//    blocks: attended, with the element mask (causal / window) applied;
//  - full_kv_indices[b, h, qb, 0 .. full_kv_count[b, h, qb]) are the "full"
//    key blocks: attended with no element mask (the caller asserts that
//    every element in them is visible; only the sequence bounds apply).
// Every other key block is skipped. A key block may not appear twice in one
// row of either list, nor in both lists.
// Layouts are dense int32 [batch, heads, num_q_blocks] for counts and
// [batch, heads, num_q_blocks, num_k_blocks] for indices; batch and heads may
// be 1 to broadcast. num_q_blocks = ceil(seqlen_q / block_q) and
// num_k_blocks = ceil(seqlen_k / block_k) (max seqlens for varlen). The
// indices live on the device of the call; as for Varlen, a CUDA call checks
// their contents only when the host copies are given.
struct BlockMask {
  std::int64_t block_q = 128, block_k = 128;
  std::int64_t batch = 1, heads = 1;
  std::int64_t num_q_blocks = 0, num_k_blocks = 0;
  const std::int32_t* kv_count = nullptr;
  const std::int32_t* kv_indices = nullptr;
  const std::int32_t* full_kv_count = nullptr;    // optional
  const std::int32_t* full_kv_indices = nullptr;  // optional
  const std::int32_t* kv_count_host = nullptr;          // optional (CUDA)
  const std::int32_t* kv_indices_host = nullptr;        // optional (CUDA)
  const std::int32_t* full_kv_count_host = nullptr;     // optional (CUDA)
  const std::int32_t* full_kv_indices_host = nullptr;   // optional (CUDA)
};

// Block-sparse patterns of the FlashAttention paper (Section 3.3) and the
// long-range literature, built on the host as the lists of a BlockMask for
// one (batch, head) (batch = heads = 1: broadcast over both). Query block
// qb's diagonal is the key block of its last row under the bottom-right
// alignment (row i sees key i + seqlen_k - seqlen_q). With causal = true a
// block the causal rule hides wholly is dropped, one it cuts goes to the
// partial list (the element rule applies inside: pass causal = true in the
// Options too) and one it leaves whole to the full list; without, every
// kept block is full.
//  - local_global: the `local` key blocks ending at the diagonal (local 1:
//    the diagonal alone), plus the first `global` key blocks (global
//    tokens every query sees);
//  - butterfly: the flat block butterfly (Pixelfly, Chen et al. 2021):
//    block (qb, kb) kept iff (qb / width) xor (kb / width) is 0 or a power
//    of two below 2^factors (identity plus butterfly factors of strides 1
//    .. 2^(factors - 1) over super-blocks of `width` blocks); density
//    width (factors + 1) / num_k_blocks for a square power-of-two grid;
//  - strided (Sparse Transformer, Child et al. 2019): the `local` key
//    blocks ending at the diagonal, plus every `stride`-th block before
//    them counted back from the diagonal.
// mask() points a BlockMask at the lists for a CPU call; for CUDA, copy the
// four vectors to the device and pass their device addresses to
// device_mask(), which also sets the host copies (so that the call checks
// the lists). The pattern must outlive every mask made from it.
class BlockPattern {
 public:
  static BlockPattern local_global(std::int64_t seqlen_q, std::int64_t seqlen_k, std::int64_t block_q,
                                   std::int64_t block_k, std::int64_t local, std::int64_t global, bool causal);
  static BlockPattern butterfly(std::int64_t seqlen_q, std::int64_t seqlen_k, std::int64_t block_q,
                                std::int64_t block_k, std::int64_t factors, std::int64_t width, bool causal);
  static BlockPattern strided(std::int64_t seqlen_q, std::int64_t seqlen_k, std::int64_t block_q,
                              std::int64_t block_k, std::int64_t local, std::int64_t stride, bool causal);

  BlockMask mask() const;
  BlockMask device_mask(const std::int32_t* kv_count, const std::int32_t* kv_indices,
                        const std::int32_t* full_kv_count, const std::int32_t* full_kv_indices) const;
  // Kept share of the (query block, key block) grid.
  double density() const;

  std::vector<std::int32_t> kv_count, kv_indices, full_kv_count, full_kv_indices;
  std::int64_t block_q = 0, block_k = 0, num_q_blocks = 0, num_k_blocks = 0;
};

// Options shared by forward and backward. Backward must be called with the
// same options as the forward it differentiates.
struct Options {
  // Scale applied to QK^T before the softmax; default 1/sqrt(head_dim)
  // (a float also for f64 inputs: docs/api.md, "Scale").
  std::optional<float> softmax_scale;
  // Causal masking. When seqlen_q != seqlen_k the mask is aligned to the
  // bottom-right corner (as flash-attn >= 2.1): query i sees key j iff
  // j <= i + seqlen_k - seqlen_q. Equivalent to window_right = 0.
  bool causal = false;
  // Sliding window, bottom-right aligned: query i sees key j iff
  // i + sk - sq - window_left <= j <= i + sk - sq + window_right.
  // -1 means unbounded on that side.
  std::int64_t window_left = -1, window_right = -1;
  // Dropout on the attention probabilities (forward and backward). The
  // mask is a pure function of (seed, offset, batch, head, row, col) through
  // Philox4x32-7 (7 rounds), identical on every backend; see dropout_mask().
  float dropout_p = 0.0f;
  std::uint64_t seed = 0, offset = 0;
  const Varlen* varlen = nullptr;          // key padding / packed batches
  const BlockMask* block_mask = nullptr;   // block-sparse attention
};

// Which computation a call performs. `flash` is the tiled FlashAttention
// algorithm (memory O(N)). `standard` materialises S = QK^T and P =
// softmax(S) (memory O(N^2)): the baseline that the paper compares against,
// with exactly the same options and semantics.
enum class Algorithm : int { flash = 0, standard = 1 };

// Which family of CUDA flash kernels runs a call (Algorithm::flash on
// Device::cuda). Both give the same results to the accuracy rule of the
// tests; the choice is one of speed.
//  - automatic: the Hopper kernels (sm_90a: TMA, wgmma) on a GPU of
//    compute capability 9.0 for every problem they cover, the portable
//    sm_80 kernels for the rest;
//  - sm80: the portable kernels on every GPU;
//  - sm90: the Hopper kernels, and an Error naming the reason for a
//    problem (or GPU) they do not cover.
// e4m3 inputs have the Hopper FP8 kernel only: automatic and sm90 run it,
// sm80 is an Error naming ctx.cuda_kernels.
// The environment variable FLASHATTN_CUDA_KERNELS ("sm80", "sm90"), when
// set, overrides this field (for tests and benchmarks of a whole program).
enum class CudaKernels : int { automatic = 0, sm80 = 1, sm90 = 2 };

// Where and how a call runs.
//  - device: where every pointer of the call lives.
//  - stream: a cudaStream_t for CUDA calls (nullptr = legacy default
//    stream); ignored on CPU. No call synchronises the stream.
//  - workspace: scratch memory on the device of the call, at least
//    *_workspace_bytes() bytes, 256-byte aligned on CUDA (as cudaMalloc
//    gives). When null and the call needs scratch, the library allocates
//    it (stream-ordered on CUDA) and frees it after use.
//  - num_threads: CPU threads (0 = OpenMP's default).
//  - cuda_kernels: the CUDA kernel family (CudaKernels above).
struct Context {
  Device device = Device::cpu;
  void* stream = nullptr;
  void* workspace = nullptr;
  std::size_t workspace_bytes = 0;
  int num_threads = 0;
  Algorithm algorithm = Algorithm::flash;
  CudaKernels cuda_kernels = CudaKernels::automatic;
};

// ----------------------------------------------------------- the calls ---

// O = softmax(scale * Q K^T + mask) V, with dropout on the probabilities.
// lse (optional, float32) receives the natural-log log-sum-exp of each
// scaled score row, laid out [batch, heads_q, seqlen_q] (varlen:
// [heads_q, total_q]). Rows whose keys are all masked give O = 0 and
// lse = -inf. GQA/MQA: heads_q must be a multiple of heads_k; query head h
// reads key/value head h / (heads_q / heads_k).
//
// FP8 (FlashAttention-3's API): q, k and v of dtype e4m3 (all three) hold
// quantised values with descale factors q_descale, k_descale, v_descale,
// each a dense float32 [batch, heads_k] array on the device of the call
// (varlen: batch = the number of sequences), null meaning 1 everywhere.
// The real value of an element of sequence b is
//   q[b, s, h, c]  * q_descale[b, h / (heads_q / heads_k)]
//   k[b, s, hk, c] * k_descale[b, hk]   (v likewise with v_descale),
// i.e. a query head takes the factor of its KV head, as in FlashAttention-3
// (one factor per KV head group: the q descale then folds into the score
// scale of the group's shared K tile). The attention above is computed on
// those real values, softmax_scale applied on top; o must be bf16, lse is
// as above. Causal, windows, varlen and block masks apply as for the other
// dtypes; dropout_p must be 0 (FP8 is an inference forward). e4m3 is
// forward only: backward and forward_kvcache reject it, as they reject
// descales, which are an Error with any other dtype. A NaN code, or a
// descale that is not finite, follows the NaN rule like any non-finite
// input. Numerics: the CPU dequantises exactly (code to float, times the
// descale, one float32 rounding) and runs its float32 path, P included (no
// FP8 rounding of P). CUDA: a Hopper kernel on GPUs of compute capability
// 9.0 (H100, H200): e4m3 tensor-core products (which keep about 14 bits
// of a dot product's running sum), flash only (Algorithm::standard is an
// Error naming ctx.algorithm), head_dim 64, 128 or 256 (others: an Error
// naming q.head_dim). On other GPUs the call is an Error naming
// ctx.device, and with ctx.cuda_kernels = sm80 (or
// FLASHATTN_CUDA_KERNELS=sm80) one naming ctx.cuda_kernels; causal,
// windows, GQA, varlen and block masks as above. It rounds P to e4m3 for
// the PV product, as
// FlashAttention-3 does, and is judged against the float64 reference of
// the dequantised inputs, with an FP8 emulation of standard attention as
// the yardstick (tests/gpu/test_gpu_fp8.cpp). It needs scratch for a
// transposed copy of V: forward_workspace_bytes() sizes it (0 on the
// CPU); a ctx.workspace given on CUDA must be 256-byte aligned.
struct ForwardArgs {
  Tensor q, k, v;
  Tensor o;
  float* lse = nullptr;
  Options options;
  const float* q_descale = nullptr;  // e4m3 only: [batch, heads_k]
  const float* k_descale = nullptr;
  const float* v_descale = nullptr;
};

// Gradients of the forward above. lse is the forward's output (required).
// dq, dk, dv have the shapes of q, k, v. deterministic = true makes dq, dk
// and dv bit-identical from run to run (and across CPU thread counts).
struct BackwardArgs {
  Tensor q, k, v, o, dout;
  const float* lse = nullptr;
  Tensor dq, dk, dv;
  Options options;
  bool deterministic = false;
};

// ------------------------------------------------------------ KV cache ---

// Inference over a KV cache (flash-attn's flash_attn_with_kvcache): append
// the new keys/values of each sequence into the cache in place, then attend
// q over the updated cache. For sequence b with L0 = cache_seqlens[b] (the
// length BEFORE the call) and n = k_new.seqlen (0 without new keys):
//  1. append: new row t (0 <= t < n) is written at cache position L0 + t,
//     k with rotary applied at position L0 + t when rotary is given, v as
//     is. Rows past L0 + n are neither read nor written. The caller keeps
//     its own lengths: after the call sequence b holds L = L0 + n entries.
//  2. attention: q (batch, seqlen_q, heads_q, head_dim) over the L cache
//     entries, with options.causal / window bottom-right aligned per
//     sequence (query i sees key j iff j <= L - seqlen_q + i when causal).
//     With rotary, q is rotated first: at positions L0 + i when causal or a
//     window is set, otherwise every query row at position L0 (flash-attn's
//     rule: a non-causal q block is taken as one position). Rotated q is
//     rounded to its dtype, as flash-attn does.
// o has q's shape; lse (optional, float32) is [batch, heads_q, seqlen_q];
// rows with no visible key give o = 0 and lse = -inf.
//
// Cache layouts (k_cache and v_cache of equal shape and q's dtype):
//  - contiguous: (batch_cache, seqlen_cache, heads_k, head_dim); sequence b
//    uses cache row cache_batch_idx[b] (or b when cache_batch_idx is null,
//    and then batch_cache must equal the batch); capacity seqlen_cache.
//  - paged (block_table non-null): (num_blocks, page_size, heads_k,
//    head_dim); position s of sequence b lives in page
//    block_table[b * max_blocks_per_seq + s / page_size] at row
//    s % page_size; capacity max_blocks_per_seq * page_size; page_size
//    (= k_cache.seqlen) is a multiple of 16 in [16, 256]. Only the pages
//    that hold positions < L are read, so the table's other entries may be
//    anything. cache_batch_idx is not allowed with a block table.
// Rotary: rotary_cos / rotary_sin are dense (rotary_seqlen, rotary_dim / 2)
// of dtype f32 or q's dtype; the first rotary_dim (even, <= head_dim)
// channels are rotated, as pairs (2i, 2i+1) when rotary_interleaved (GPT-J)
// or (i, i + rotary_dim/2) otherwise (GPT-NeoX), with cos/sin row = position.
// Rotary needs new keys (the cached keys are already rotated).
// GQA/MQA: heads_q a multiple of heads_k; the query heads of one KV head are
// computed from one pass over its keys.
// Split-KV (flash-decoding): the keys of each (sequence, KV head) are cut
// into num_splits chunks whose partial results are merged through their
// LSEs; num_splits = 0 picks a count (kvcache_num_splits below), >= 1 forces
// one (at most 128). The split only changes rounding.
// CUDA: f16 / bf16, head_dim 64, 128 or 256 (an Error naming q.head_dim
// otherwise); scratch (rotated q, split partials) from ctx.workspace or
// stream-ordered allocation; num_splits = 0 takes the longest length from
// cache_seqlens_host, else the capacity.
// The index arrays live on the device of the call; as for Varlen, a CUDA
// call checks their contents only when the host copies are given (without
// them, bad contents are clamped into the cache: undefined results, no
// memory outside the tensors touched). The CPU
// checks them always: cache lengths (>= 0, L0 + n <= capacity), block table
// entries of the pages used (in [0, num_blocks)), cache_batch_idx (in
// [0, batch_cache), distinct when appending), rotary positions (below
// rotary_seqlen).
struct KvCacheArgs {
  Tensor q;
  Tensor k_cache, v_cache;            // read, and written at the appended rows
  Tensor k_new, v_new;                // optional: both null (data) or both set
  const std::int32_t* cache_seqlens = nullptr;     // [batch], lengths before the append
  const std::int32_t* block_table = nullptr;       // optional: [batch, max_blocks_per_seq], dense
  std::int64_t max_blocks_per_seq = 0;
  const std::int32_t* cache_batch_idx = nullptr;   // optional: [batch]
  const void* rotary_cos = nullptr;                // optional: [rotary_seqlen, rotary_dim / 2]
  const void* rotary_sin = nullptr;
  DType rotary_dtype = DType::f32;
  std::int64_t rotary_seqlen = 0, rotary_dim = 0;
  bool rotary_interleaved = true;
  Tensor o;
  float* lse = nullptr;
  Options options;   // softmax_scale, causal, window; no dropout, varlen or block mask
  int num_splits = 0;  // 0: heuristic
  const std::int32_t* cache_seqlens_host = nullptr;    // optional (CUDA)
  const std::int32_t* block_table_host = nullptr;      // optional (CUDA)
  const std::int32_t* cache_batch_idx_host = nullptr;  // optional (CUDA)
};

void forward_kvcache(const KvCacheArgs& args, const Context& ctx = {});

// The split count that num_splits = 0 gives. The batch * heads_k work
// items, each cut into that many splits, run in waves of num_workers (CPU
// threads; on CUDA, SMs x the attention CTAs an SM holds): the smallest
// count whose wave efficiency, (items / workers) / ceil(items / workers),
// is within 0.95 of the best, among counts up to one per 256 keys of the
// longest sequence and 128 (that most when it does not fill the workers).
int kvcache_num_splits(std::int64_t batch_heads_k, std::int64_t max_seqlen_k, int num_workers);

std::size_t forward_workspace_bytes(const ForwardArgs& args, const Context& ctx);
std::size_t backward_workspace_bytes(const BackwardArgs& args, const Context& ctx);

void forward(const ForwardArgs& args, const Context& ctx = {});
void backward(const BackwardArgs& args, const Context& ctx = {});

// ------------------------------------------------------------- helpers ---

// The dropout keep-mask of one (batch, head) attention matrix, rows x cols,
// row-major into keep (1 = kept, and scaled by 1/(1-p); 0 = dropped).
// batch is the sequence index (for varlen too), heads_q the number of query
// heads of the call, head the query head; rows / cols are positions inside
// the sequence. Bit-identical to what every backend applies.
void dropout_mask(std::uint64_t seed, std::uint64_t offset, float dropout_p,
                  std::int64_t batch, std::int64_t heads_q, std::int64_t head,
                  std::int64_t rows, std::int64_t cols, std::uint8_t* keep);

// What a backend supports, for callers that want to ask before calling
// (for e4m3: the forward).
bool supports(Device device, Algorithm algorithm, DType dtype, std::int64_t head_dim);

// Library version string.
const char* version();

// How this copy of the library was built, and which CPU kernels it uses on
// this machine. Every string is static. The CPU entries are the choice the
// CPU backend makes at run time (the best instruction set the CPU has,
// capped by the environment variable FLASHATTN_CPU_ISA=generic|avx2|avx512|amx);
// asking makes that choice if no call has yet.
struct BuildInfo {
  const char* version = "";             // version()
  const char* commit = "";              // the git commit compiled ("unknown" outside a checkout)
  bool commit_modified = false;         // tracked files differed from it at build time
  bool cuda = false;                    // the CUDA backend is compiled in
  const char* cuda_architectures = "";  // its CMAKE_CUDA_ARCHITECTURES, e.g. "80-real;90a-real"
  const char* cuda_compiler = "";       // the nvcc version that compiled it
  const char* cpu_isa = "";             // CPU flash kernels for f32 / f16: generic, avx2 or avx512
  const char* cpu_isa_bf16 = "";        // for bf16: the same, or amx (AMX tiles)
  const char* build_type = "";          // CMAKE_BUILD_TYPE
  const char* compiler = "";            // the C++ compiler, id and version
};
BuildInfo build_info();

}  // namespace flashattn
