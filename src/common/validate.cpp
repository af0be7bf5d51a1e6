// Parameter validation shared by every backend. Every message names the
// argument and gives the expected and the actual value.
#include <algorithm>
#include <cmath>
#include <iterator>
#include <limits>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "common/fail.h"
#include "cuda/dispatch.h"
#include "flashattn/flashattn.h"
#include "kvcache.h"
#include "numeric.h"
#include "problem.h"

namespace flashattn {

const char* to_string(DType dtype) {
  switch (dtype) {
    case DType::f32: return "f32";
    case DType::f16: return "f16";
    case DType::bf16: return "bf16";
    case DType::f64: return "f64";
    case DType::e4m3: return "e4m3";
  }
  return "unknown-dtype";
}

const char* to_string(Device device) {
  switch (device) {
    case Device::cpu: return "cpu";
    case Device::cuda: return "cuda";
  }
  return "unknown-device";
}

std::size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::f32: return 4;
    case DType::f16:
    case DType::bf16: return 2;
    case DType::f64: return 8;
    case DType::e4m3: return 1;
  }
  throw Error("dtype: expected one of f32, f16, bf16, f64, e4m3, got value " +
              std::to_string(static_cast<int>(dtype)));
}

float from_e4m3(std::uint8_t code) { return detail::e4m3_to_float(code); }
std::uint8_t to_e4m3(float x) { return detail::float_to_e4m3(x); }

Tensor Tensor::contiguous(void* data, DType dtype, std::int64_t batch, std::int64_t seqlen,
                          std::int64_t heads, std::int64_t head_dim) {
  Tensor t;
  t.data = data;
  t.dtype = dtype;
  t.batch = batch;
  t.seqlen = seqlen;
  t.heads = heads;
  t.head_dim = head_dim;
  t.stride_head = head_dim;
  t.stride_seq = heads * head_dim;
  t.stride_batch = seqlen * heads * head_dim;
  return t;
}

bool supports(Device device, Algorithm algorithm, DType dtype, std::int64_t head_dim) {
  switch (device) {
    case Device::cpu:
      // The CPU backends take any head_dim up to 256 and every dtype; f64
      // runs through the standard (materialising) path only.
      if (head_dim < 1 || head_dim > 256) return false;
      if (dtype == DType::f64) return algorithm == Algorithm::standard;
      return dtype == DType::f32 || dtype == DType::f16 || dtype == DType::bf16 || dtype == DType::e4m3;
    case Device::cuda: {
      // e4m3: the Hopper FP8 forward, a flash kernel with a table of its own
      // (it runs on compute capability 9.0 only: the call, not this
      // answer, depends on the GPU).
      if (dtype == DType::e4m3)
        return algorithm == Algorithm::flash && detail::cuda::has_head_dim<detail::cuda::kSm90Fp8FwdTiles>(head_dim);
      if (dtype != DType::f16 && dtype != DType::bf16) return false;
      if (algorithm == Algorithm::standard) return head_dim >= 1 && head_dim <= 256 && head_dim % 8 == 0;
      // The head dims the CUDA dispatch table instantiates (every GPU runs
      // the portable family; the Hopper one covers a subset of them).
      return detail::cuda::has_head_dim<detail::cuda::kSm80Tiles>(head_dim);
    }
  }
  return false;
}

const char* version() { return "0.1.0"; }

namespace detail {
namespace {

std::string str(std::int64_t v) { return std::to_string(v); }

std::string shape_str(const Tensor& t) {
  std::ostringstream os;
  os << "(" << t.batch << ", " << t.seqlen << ", " << t.heads << ", " << t.head_dim << ")";
  return os.str();
}

constexpr std::int64_t kMaxDim = std::numeric_limits<std::int32_t>::max();
constexpr int kMaxThreads = 1024;

// Emptiness from the sizes themselves: Tensor::numel() can wrap around for
// sizes that are each legal, and a wrapped product must not pass for empty.
bool is_empty(const Tensor& t) { return t.batch == 0 || t.seqlen == 0 || t.heads == 0 || t.head_dim == 0; }

// Highest element offset the view touches, with overflow detection: the
// kernels use 64-bit offsets everywhere, so only int64 overflow is fatal.
void check_extent(const Tensor& t, const char* name) {
  if (is_empty(t)) return;
  std::int64_t hi = t.head_dim - 1, term = 0;
  const std::int64_t dims[3] = {t.batch, t.seqlen, t.heads};
  const std::int64_t strides[3] = {t.stride_batch, t.stride_seq, t.stride_head};
  for (int i = 0; i < 3; ++i) {
    if (__builtin_mul_overflow(dims[i] - 1, strides[i], &term) || __builtin_add_overflow(hi, term, &hi))
      fail(std::string(name), "an extent whose element offsets fit in 64 bits",
           "shape " + shape_str(t) + " with strides (" + str(t.stride_batch) + ", " + str(t.stride_seq) +
               ", " + str(t.stride_head) + ", 1)");
  }
  std::int64_t bytes = 0;
  if (__builtin_mul_overflow(hi + 1, static_cast<std::int64_t>(dtype_size(t.dtype)), &bytes))
    fail(std::string(name), "a byte extent that fits in 64 bits", shape_str(t));
}

void check_tensor(const Tensor& t, const char* name, const Context& ctx) {
  const std::string n(name);
  if (static_cast<int>(t.dtype) < 0 || static_cast<int>(t.dtype) > 4)
    fail(n + ".dtype", "one of f32, f16, bf16, f64, e4m3", "value " + str(static_cast<int>(t.dtype)));
  if (t.batch < 0 || t.seqlen < 0 || t.heads < 0 || t.head_dim < 0)
    fail(n + " shape", "non-negative sizes", shape_str(t));
  if (t.heads == 0) fail(n + ".heads", ">= 1", "0");
  if (t.head_dim == 0) fail(n + ".head_dim", ">= 1", "0");
  if (t.batch > kMaxDim || t.seqlen > kMaxDim || t.heads > kMaxDim)
    fail(n + " shape", "batch, seqlen and heads each <= 2^31-1", shape_str(t));
  if (t.stride_batch < 0 || t.stride_seq < 0 || t.stride_head < 0)
    fail(n + " strides", "non-negative element strides",
         "(" + str(t.stride_batch) + ", " + str(t.stride_seq) + ", " + str(t.stride_head) + ")");
  // The last dimension is contiguous by construction; a head stride smaller
  // than head_dim would make heads overlap, which is only legal for inputs
  // that are read (and even then almost certainly a caller bug). An empty
  // tensor touches no memory (PyTorch calls every empty tensor contiguous,
  // whatever its strides).
  if (t.heads > 1 && t.stride_head < t.head_dim && !is_empty(t))
    fail(n + ".stride_head", ">= head_dim (" + str(t.head_dim) + ") with a contiguous last dimension",
         str(t.stride_head));
  if (!is_empty(t) && t.data == nullptr) fail(n + ".data", "a non-null pointer for " + shape_str(t), "nullptr");
  check_extent(t, name);
  const std::size_t es = dtype_size(t.dtype);
  const auto addr = reinterpret_cast<std::uintptr_t>(t.data);
  if (addr % es != 0) fail(n + ".data", "alignment to " + str(static_cast<std::int64_t>(es)) + " bytes",
                           "address " + str(static_cast<std::int64_t>(addr)));
  if (ctx.device == Device::cuda && !is_empty(t)) {
    // 16-byte vector loads (cp.async / TMA) of rows need aligned rows.
    const std::int64_t vec = 16 / static_cast<std::int64_t>(es);
    if (addr % 16 != 0) fail(n + ".data", "16-byte alignment on CUDA", "address % 16 = " + str(static_cast<std::int64_t>(addr % 16)));
    if ((t.batch > 1 && t.stride_batch % vec) || (t.seqlen > 1 && t.stride_seq % vec) ||
        (t.heads > 1 && t.stride_head % vec))
      fail(n + " strides", "multiples of " + str(vec) + " elements (16 bytes) on CUDA",
           "(" + str(t.stride_batch) + ", " + str(t.stride_seq) + ", " + str(t.stride_head) + ")");
    if (t.head_dim % vec) fail(n + ".head_dim", "a multiple of " + str(vec) + " on CUDA", str(t.head_dim));
  }
}

// An output view must give every element its own address: otherwise two
// threads (or two rows of one thread) write the same memory and the
// result depends on the order of the writes. Sufficient rule: with the
// dimensions of size > 1 ordered by stride, each stride is at least the
// extent spanned by the smaller ones (head_dim, stride 1, included).
void check_no_overlap(const Tensor& t, const char* name) {
  if (is_empty(t)) return;
  struct Dim { std::int64_t size, stride; };
  Dim dims[3] = {{t.heads, t.stride_head}, {t.seqlen, t.stride_seq}, {t.batch, t.stride_batch}};
  std::sort(std::begin(dims), std::end(dims), [](const Dim& a, const Dim& b) { return a.stride < b.stride; });
  std::int64_t extent = t.head_dim;  // elements spanned so far (contiguous last dimension)
  for (const Dim& d : dims) {
    if (d.size == 1) continue;
    if (d.stride < extent)
      fail(std::string(name) + " strides",
           "a non-overlapping output layout (each stride >= the extent of the smaller ones; here a stride >= " +
               str(extent) + ")",
           "shape " + shape_str(t) + " with strides (" + str(t.stride_batch) + ", " + str(t.stride_seq) + ", " +
               str(t.stride_head) + ", 1)");
    extent = (d.size - 1) * d.stride + extent;  // check_extent has ruled out overflow
  }
}

void check_same_shape(const Tensor& a, const char* an, const Tensor& b, const char* bn, bool same_dtype = true) {
  if (a.batch != b.batch || a.seqlen != b.seqlen || a.heads != b.heads || a.head_dim != b.head_dim)
    fail(std::string(an) + " shape", std::string("the shape of ") + bn + " " + shape_str(b), shape_str(a));
  if (same_dtype && a.dtype != b.dtype) fail(std::string(an) + ".dtype", std::string("the dtype of ") + bn + " (" + to_string(b.dtype) + ")", to_string(a.dtype));
}

void check_context(const Context& ctx) {
  if (ctx.device != Device::cpu && ctx.device != Device::cuda)
    fail("ctx.device", "cpu or cuda", "value " + str(static_cast<int>(ctx.device)));
  if (ctx.algorithm != Algorithm::flash && ctx.algorithm != Algorithm::standard)
    fail("ctx.algorithm", "flash or standard", "value " + str(static_cast<int>(ctx.algorithm)));
  // libgomp aborts (or crashes) when asked for tens of thousands of
  // threads; no machine this runs on has more than a few hundred cores.
  if (ctx.num_threads < 0 || ctx.num_threads > kMaxThreads)
    fail("ctx.num_threads", "a value in [0, " + str(kMaxThreads) + "] (0 = OpenMP's default)", str(ctx.num_threads));
  if (ctx.workspace == nullptr && ctx.workspace_bytes != 0)
    fail("ctx.workspace", "a non-null pointer when workspace_bytes = " + std::to_string(ctx.workspace_bytes), "nullptr");
}

// Contents of the cumulative sequence lengths, when host-readable.
void check_cu_seqlens(const std::int32_t* cu, const char* name, std::int64_t batch, std::int64_t total,
                      std::int64_t max_len) {
  const std::string n(name);
  if (cu[0] != 0) fail(n + "[0]", "0", str(cu[0]));
  for (std::int64_t b = 0; b < batch; ++b) {
    const std::int64_t len = static_cast<std::int64_t>(cu[b + 1]) - cu[b];
    if (len < 0)
      fail(n, "non-decreasing values", n + "[" + str(b + 1) + "] = " + str(cu[b + 1]) + " < " + n + "[" + str(b) + "] = " + str(cu[b]));
    if (len > max_len)
      fail(n, "sequence lengths <= max_seqlen (" + str(max_len) + ")", "length " + str(len) + " for sequence " + str(b));
  }
  if (cu[batch] > total)
    fail(n + "[batch]", "<= the tensor's total rows (" + str(total) + ")", str(cu[batch]));
}

void check_varlen(const Varlen& vl, const Tensor& q, const Tensor& k, const Context& ctx) {
  if (q.batch != 1 || k.batch != 1)
    fail("q.batch / k.batch with varlen", "1 (tensors are (total, heads, head_dim))",
         str(q.batch) + " / " + str(k.batch));
  if (vl.batch < 0) fail("varlen.batch", ">= 0", str(vl.batch));
  if (vl.batch > kMaxDim) fail("varlen.batch", "<= 2^31-1", str(vl.batch));
  if (vl.max_seqlen_q < 0 || vl.max_seqlen_q > q.seqlen)
    fail("varlen.max_seqlen_q", "in [0, total_q = " + str(q.seqlen) + "]", str(vl.max_seqlen_q));
  if (vl.max_seqlen_k < 0 || vl.max_seqlen_k > k.seqlen)
    fail("varlen.max_seqlen_k", "in [0, total_k = " + str(k.seqlen) + "]", str(vl.max_seqlen_k));
  if (vl.cu_seqlens_q == nullptr) fail("varlen.cu_seqlens_q", "a non-null pointer", "nullptr");
  if (vl.cu_seqlens_k == nullptr) fail("varlen.cu_seqlens_k", "a non-null pointer", "nullptr");
  const std::int32_t* hq = ctx.device == Device::cpu ? vl.cu_seqlens_q : vl.cu_seqlens_q_host;
  const std::int32_t* hk = ctx.device == Device::cpu ? vl.cu_seqlens_k : vl.cu_seqlens_k_host;
  if (hq) check_cu_seqlens(hq, "varlen.cu_seqlens_q", vl.batch, q.seqlen, vl.max_seqlen_q);
  if (hk) check_cu_seqlens(hk, "varlen.cu_seqlens_k", vl.batch, k.seqlen, vl.max_seqlen_k);
}

void check_block_mask(const BlockMask& m, const Problem& p, const Context& ctx) {
  if (m.block_q < 1) fail("block_mask.block_q", ">= 1", str(m.block_q));
  if (m.block_k < 1) fail("block_mask.block_k", ">= 1", str(m.block_k));
  if (m.batch != 1 && m.batch != p.batch)
    fail("block_mask.batch", "1 (broadcast) or the batch size " + str(p.batch), str(m.batch));
  if (m.heads != 1 && m.heads != p.heads_q)
    fail("block_mask.heads", "1 (broadcast) or heads_q = " + str(p.heads_q), str(m.heads));
  const std::int64_t nqb = ceil_div(p.seqlen_q, m.block_q), nkb = ceil_div(p.seqlen_k, m.block_k);
  if (m.num_q_blocks != nqb)
    fail("block_mask.num_q_blocks", "ceil(seqlen_q / block_q) = " + str(nqb), str(m.num_q_blocks));
  if (m.num_k_blocks != nkb)
    fail("block_mask.num_k_blocks", "ceil(seqlen_k / block_k) = " + str(nkb), str(m.num_k_blocks));
  // A pointer may be null where its array has no element (no query blocks,
  // or no key blocks for the indices), as an empty tensor's data pointer is.
  const std::int64_t rows = m.batch * m.heads * nqb;
  if (rows > 0 && m.kv_count == nullptr)
    fail("block_mask.kv_count", "a non-null pointer (" + str(rows) + " counts)", "nullptr");
  if (rows * nkb > 0 && m.kv_indices == nullptr)
    fail("block_mask.kv_indices", "a non-null pointer (" + str(rows * nkb) + " indices)", "nullptr");
  if (rows * nkb > 0 && (m.full_kv_count == nullptr) != (m.full_kv_indices == nullptr))
    fail("block_mask.full_kv_count / full_kv_indices", "both set or both null",
         m.full_kv_count ? "only full_kv_count set" : "only full_kv_indices set");
  const bool cpu = ctx.device == Device::cpu;
  const std::int32_t* cnt = cpu ? m.kv_count : m.kv_count_host;
  const std::int32_t* idx = cpu ? m.kv_indices : m.kv_indices_host;
  const std::int32_t* fcnt = cpu ? m.full_kv_count : m.full_kv_count_host;
  const std::int32_t* fidx = cpu ? m.full_kv_indices : m.full_kv_indices_host;
  if (rows == 0) return;
  if (!cnt || (!idx && nkb > 0)) return;  // CUDA without host copies: contents unchecked (documented)
  std::vector<std::uint8_t> seen(static_cast<std::size_t>(nkb));
  for (std::int64_t r = 0; r < rows; ++r) {
    std::fill(seen.begin(), seen.end(), 0);
    for (int list = 0; list < 2; ++list) {
      const std::int32_t* c = list == 0 ? cnt : fcnt;
      const std::int32_t* ix = list == 0 ? idx : fidx;
      if (!c) continue;
      const char* cname = list == 0 ? "block_mask.kv_count" : "block_mask.full_kv_count";
      const char* iname = list == 0 ? "block_mask.kv_indices" : "block_mask.full_kv_indices";
      if (c[r] < 0 || c[r] > nkb)
        fail(std::string(cname) + "[" + str(r) + "]", "in [0, num_k_blocks = " + str(nkb) + "]", str(c[r]));
      for (std::int64_t i = 0; i < c[r]; ++i) {
        const std::int32_t kb = ix[r * nkb + i];
        if (kb < 0 || kb >= nkb)
          fail(std::string(iname) + "[" + str(r) + ", " + str(i) + "]", "in [0, num_k_blocks = " + str(nkb) + ")", str(kb));
        if (seen[kb])
          fail(std::string(iname) + "[" + str(r) + ", " + str(i) + "]",
               "a key block listed once per query block (partial and full lists together)",
               "block " + str(kb) + " repeated");
        seen[kb] = 1;
      }
    }
  }
}

// Scale and window of a call whose sequences have at most rows_q query and
// rows_k key rows.
void resolve_scale_window(const Options& opt, std::int64_t head_dim, std::int64_t rows_q, std::int64_t rows_k,
                          Problem& p) {
  if (opt.softmax_scale && !std::isfinite(*opt.softmax_scale))
    fail("options.softmax_scale", "a finite value", std::to_string(*opt.softmax_scale));
  p.scale = opt.softmax_scale ? *opt.softmax_scale : static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim)));

  if (opt.window_left < -1) fail("options.window_left", ">= -1 (-1 = unbounded)", str(opt.window_left));
  if (opt.window_right < -1) fail("options.window_right", ">= -1 (-1 = unbounded)", str(opt.window_right));
  // A side wider than any sequence of the call is the unbounded side, and
  // is stored as such (-1): every backend, and any kernel-side window
  // arithmetic, then sees small values only. Sequences never exceed the
  // tensors' row counts, so those bound every window that matters:
  // left >= sk - 1 reaches key 0 from row 0, right >= sq - 1 reaches key
  // sk - 1 from row 0.
  p.window.left = opt.window_left >= rows_k ? -1 : opt.window_left;
  p.window.right = opt.window_right >= rows_q ? -1 : opt.window_right;
  if (opt.causal) {
    if (opt.window_right > 0)
      fail("options.window_right", "-1 or 0 with causal = true (causal means window_right = 0)", str(opt.window_right));
    p.window.right = 0;
  }
}

// The output dtype of e4m3 inputs: bf16, or for the float64 oracle
// (reference) also f32 / f64.
void check_fp8_output(const Tensor& o, bool reference) {
  if (o.dtype == DType::bf16 || (reference && (o.dtype == DType::f32 || o.dtype == DType::f64))) return;
  fail("o.dtype", reference ? "bf16, f32 or f64 with e4m3 inputs (the reference)" : "bf16 with e4m3 inputs",
       to_string(o.dtype));
}

Problem check_common(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                     const Options& opt, const Context& ctx, bool reference = false) {
  check_context(ctx);
  check_tensor(q, "q", ctx);
  check_tensor(k, "k", ctx);
  check_tensor(v, "v", ctx);
  check_tensor(o, "o", ctx);
  check_no_overlap(o, "o");
  if (k.dtype != q.dtype) fail("k.dtype", std::string("the dtype of q (") + to_string(q.dtype) + ")", to_string(k.dtype));
  if (v.dtype != q.dtype) fail("v.dtype", std::string("the dtype of q (") + to_string(q.dtype) + ")", to_string(v.dtype));
  check_same_shape(v, "v", k, "k");
  const bool fp8 = q.dtype == DType::e4m3;
  check_same_shape(o, "o", q, "q", /*same_dtype=*/!fp8);
  if (fp8) check_fp8_output(o, reference);
  if (k.batch != q.batch) fail("k.batch", "q.batch = " + str(q.batch), str(k.batch));
  if (k.head_dim != q.head_dim) fail("k.head_dim", "q.head_dim = " + str(q.head_dim), str(k.head_dim));
  if (q.heads % k.heads != 0)
    fail("q.heads", "a multiple of k.heads = " + str(k.heads) + " (GQA/MQA)", str(q.heads));
  // e4m3 on CUDA is the Hopper FP8 forward: ahead of the generic check
  // below, so that its refusals say which of its limits was hit.
  if (fp8 && ctx.device == Device::cuda) {
    if (ctx.algorithm == Algorithm::standard)
      fail("ctx.algorithm", "flash with e4m3 inputs on cuda (the FP8 forward is a flash kernel)", "standard");
    if (!cuda::has_head_dim<cuda::kSm90Fp8FwdTiles>(q.head_dim))
      fail("q.head_dim", cuda::fp8_head_dims_text(), str(q.head_dim));
  }
  if (!supports(ctx.device, ctx.algorithm, q.dtype, q.head_dim))
    fail("q.dtype / head_dim", std::string("a combination supported on ") + to_string(ctx.device) +
                                   (ctx.algorithm == Algorithm::flash ? " (flash)" : " (standard)") +
                                   " (see flashattn::supports and the README's feature table)",
         std::string(to_string(q.dtype)) + " / " + str(q.head_dim));

  Problem p;
  p.device = ctx.device;
  p.algorithm = ctx.algorithm;
  p.dtype = q.dtype;
  p.heads_q = q.heads;
  p.heads_k = k.heads;
  p.head_dim = q.head_dim;

  resolve_scale_window(opt, q.head_dim, q.seqlen, k.seqlen, p);

  if (!(opt.dropout_p >= 0.0f && opt.dropout_p < 1.0f))
    fail("options.dropout_p", "a value in [0, 1)", std::to_string(opt.dropout_p));
  p.dropout_p = opt.dropout_p;
  p.seed = opt.seed;
  p.offset = opt.offset;

  if (opt.varlen) {
    check_varlen(*opt.varlen, q, k, ctx);
    p.varlen = opt.varlen;
    p.batch = opt.varlen->batch;
    p.seqlen_q = opt.varlen->max_seqlen_q;
    p.seqlen_k = opt.varlen->max_seqlen_k;
  } else {
    p.batch = q.batch;
    p.seqlen_q = q.seqlen;
    p.seqlen_k = k.seqlen;
  }
  if (p.dropout_p > 0.0f && p.batch * p.heads_q > 0xFFFFFFFFll)
    fail("batch * heads_q with dropout", "< 2^32 (the Philox counter holds it in 32 bits)", str(p.batch * p.heads_q));
  if (opt.block_mask) {
    check_block_mask(*opt.block_mask, p, ctx);
    p.block_mask = opt.block_mask;
  }
  return p;
}

}  // namespace

Problem check_forward(const ForwardArgs& a, const Context& ctx, bool reference) {
  Problem p = check_common(a.q, a.k, a.v, a.o, a.options, ctx, reference);
  if (reinterpret_cast<std::uintptr_t>(a.lse) % alignof(float) != 0) fail("lse", "4-byte alignment", "a misaligned pointer");
  const bool fp8 = a.q.dtype == DType::e4m3;
  const std::pair<const float*, const char*> descales[] = {
      {a.q_descale, "q_descale"}, {a.k_descale, "k_descale"}, {a.v_descale, "v_descale"}};
  for (const auto& [ptr, name] : descales) {
    if (ptr && !fp8)
      fail(name, std::string("nullptr (descale factors belong to e4m3 inputs; q.dtype is ") + to_string(a.q.dtype) + ")",
           "a pointer");
    if (reinterpret_cast<std::uintptr_t>(ptr) % alignof(float) != 0) fail(name, "4-byte alignment", "a misaligned pointer");
  }
  if (fp8) {
    if (p.dropout_p != 0.0f)
      fail("options.dropout_p", "0 with e4m3 inputs (the FP8 forward has no dropout)", std::to_string(p.dropout_p));
    p.q_descale = a.q_descale;
    p.k_descale = a.k_descale;
    p.v_descale = a.v_descale;
  }
  return p;
}

Problem check_backward(const BackwardArgs& a, const Context& ctx) {
  // Ahead of the shape and dtype checks, whose messages would not say why.
  if (a.q.dtype == DType::e4m3)
    fail("q.dtype", "f32, f16, bf16 or f64 for backward (e4m3 is a forward-only dtype)", "e4m3");
  Problem p = check_common(a.q, a.k, a.v, a.o, a.options, ctx);
  check_tensor(a.dout, "dout", ctx);
  check_tensor(a.dq, "dq", ctx);
  check_tensor(a.dk, "dk", ctx);
  check_tensor(a.dv, "dv", ctx);
  check_no_overlap(a.dq, "dq");
  check_no_overlap(a.dk, "dk");
  check_no_overlap(a.dv, "dv");
  check_same_shape(a.dout, "dout", a.o, "o");
  check_same_shape(a.dq, "dq", a.q, "q");
  check_same_shape(a.dk, "dk", a.k, "k");
  check_same_shape(a.dv, "dv", a.v, "v");
  if (!is_empty(a.q) && a.lse == nullptr) fail("lse", "the forward's log-sum-exp (non-null)", "nullptr");
  if (reinterpret_cast<std::uintptr_t>(a.lse) % alignof(float) != 0) fail("lse", "4-byte alignment", "a misaligned pointer");
  return p;
}

KvProblem check_kvcache(const KvCacheArgs& a, const Context& ctx) {
  check_context(ctx);
  const Tensor& q = a.q;
  if (q.dtype == DType::e4m3)
    fail("q.dtype", "f32, f16, bf16 or f64 for forward_kvcache (e4m3 is an input of flashattn::forward only)", "e4m3");
  check_tensor(q, "q", ctx);
  check_tensor(a.k_cache, "k_cache", ctx);
  check_tensor(a.v_cache, "v_cache", ctx);
  check_tensor(a.o, "o", ctx);
  check_no_overlap(a.o, "o");
  const bool has_new = a.k_new.data != nullptr || a.v_new.data != nullptr;
  if (a.k_new.data != nullptr && a.v_new.data == nullptr) fail("v_new.data", "a tensor (k_new is given)", "nullptr");
  if (a.v_new.data != nullptr && a.k_new.data == nullptr) fail("k_new.data", "a tensor (v_new is given)", "nullptr");
  // The appended rows are written: the caches must not overlap themselves.
  if (has_new) {
    check_no_overlap(a.k_cache, "k_cache");
    check_no_overlap(a.v_cache, "v_cache");
  }
  const auto same_dtype = [&](const Tensor& t, const char* name) {
    if (t.dtype != q.dtype)
      fail(std::string(name) + ".dtype", std::string("the dtype of q (") + to_string(q.dtype) + ")", to_string(t.dtype));
  };
  same_dtype(a.k_cache, "k_cache");
  check_same_shape(a.v_cache, "v_cache", a.k_cache, "k_cache");
  check_same_shape(a.o, "o", q, "q");
  const Tensor& kc = a.k_cache;
  if (kc.head_dim != q.head_dim) fail("k_cache.head_dim", "q.head_dim = " + str(q.head_dim), str(kc.head_dim));
  if (q.heads % kc.heads != 0)
    fail("q.heads", "a multiple of k_cache.heads = " + str(kc.heads) + " (GQA/MQA)", str(q.heads));
  const bool dtype_ok = ctx.device == Device::cpu
                            ? q.head_dim <= 256
                            : supports(Device::cuda, Algorithm::flash, q.dtype, q.head_dim);
  if (!dtype_ok)
    fail("q.dtype / head_dim", std::string("a combination supported by forward_kvcache on ") + to_string(ctx.device),
         std::string(to_string(q.dtype)) + " / " + str(q.head_dim));

  const Options& opt = a.options;
  if (opt.dropout_p != 0.0f) fail("options.dropout_p", "0 (forward_kvcache has no dropout)", std::to_string(opt.dropout_p));
  if (opt.varlen) fail("options.varlen", "nullptr (forward_kvcache takes cache_seqlens)", "a Varlen");
  if (opt.block_mask) fail("options.block_mask", "nullptr (not supported by forward_kvcache)", "a BlockMask");

  KvProblem kp;
  Problem& p = kp.base;
  p.device = ctx.device;
  p.algorithm = Algorithm::flash;
  p.dtype = q.dtype;
  p.batch = q.batch;
  p.seqlen_q = q.seqlen;
  p.heads_q = q.heads;
  p.heads_k = kc.heads;
  p.head_dim = q.head_dim;

  if (has_new) {
    check_tensor(a.k_new, "k_new", ctx);
    check_tensor(a.v_new, "v_new", ctx);
    same_dtype(a.k_new, "k_new");
    check_same_shape(a.v_new, "v_new", a.k_new, "k_new");
    if (a.k_new.batch != q.batch) fail("k_new.batch", "q.batch = " + str(q.batch), str(a.k_new.batch));
    if (a.k_new.heads != kc.heads) fail("k_new.heads", "k_cache.heads = " + str(kc.heads), str(a.k_new.heads));
    if (a.k_new.head_dim != q.head_dim) fail("k_new.head_dim", "q.head_dim = " + str(q.head_dim), str(a.k_new.head_dim));
    kp.seqlen_new = a.k_new.seqlen;
  }

  const bool cpu = ctx.device == Device::cpu;
  const std::int32_t* bt = cpu ? a.block_table : a.block_table_host;
  const std::int32_t* cbi = cpu ? a.cache_batch_idx : a.cache_batch_idx_host;
  const std::int32_t* lens = cpu ? a.cache_seqlens : a.cache_seqlens_host;
  if (a.block_table) {
    if (a.cache_batch_idx) fail("cache_batch_idx", "nullptr with a block table (paged caches)", "an array");
    if (kc.seqlen < 16 || kc.seqlen > 256 || kc.seqlen % 16 != 0)
      fail("k_cache.seqlen (page_size)", "a multiple of 16 in [16, 256]", str(kc.seqlen));
    if (a.max_blocks_per_seq < 1 || a.max_blocks_per_seq > kMaxDim)
      fail("max_blocks_per_seq", "in [1, 2^31-1]", str(a.max_blocks_per_seq));
    kp.page_size = kc.seqlen;
    kp.capacity = a.max_blocks_per_seq * kc.seqlen;
  } else {
    if (a.max_blocks_per_seq != 0)
      fail("block_table", "a non-null pointer when max_blocks_per_seq = " + str(a.max_blocks_per_seq), "nullptr");
    if (!a.cache_batch_idx && kc.batch != q.batch)
      fail("k_cache.batch", "q.batch = " + str(q.batch) + " (or a cache_batch_idx)", str(kc.batch));
    kp.capacity = kc.seqlen;
  }
  p.seqlen_k = kp.capacity;
  if (p.batch > 0 && a.cache_seqlens == nullptr) fail("cache_seqlens", "a non-null pointer", "nullptr");

  const bool has_rotary = a.rotary_cos != nullptr || a.rotary_sin != nullptr;
  if (has_rotary) {
    if (!a.rotary_cos) fail("rotary_cos", "a pointer (rotary_sin is given)", "nullptr");
    if (!a.rotary_sin) fail("rotary_sin", "a pointer (rotary_cos is given)", "nullptr");
    if (!has_new) fail("k_new", "new keys with rotary (the cached keys are already rotated)", "none");
    if (a.rotary_dim < 2 || a.rotary_dim % 2 != 0 || a.rotary_dim > q.head_dim)
      fail("rotary_dim", "even, in [2, head_dim = " + str(q.head_dim) + "]", str(a.rotary_dim));
    if (a.rotary_dtype != DType::f32 && a.rotary_dtype != q.dtype)
      fail("rotary_dtype", std::string("f32 or the dtype of q (") + to_string(q.dtype) + ")", to_string(a.rotary_dtype));
    if (a.rotary_seqlen < 0 || a.rotary_seqlen > kMaxDim) fail("rotary_seqlen", "in [0, 2^31-1]", str(a.rotary_seqlen));
    kp.rotary_dim = a.rotary_dim;
  }
  if (a.num_splits < 0 || a.num_splits > kKvMaxSplits)
    fail("num_splits", "in [0, " + str(kKvMaxSplits) + "] (0 = heuristic)", str(a.num_splits));
  if (reinterpret_cast<std::uintptr_t>(a.lse) % alignof(float) != 0) fail("lse", "4-byte alignment", "a misaligned pointer");

  // Windows are bounded by the capacity (no sequence holds more keys).
  resolve_scale_window(opt, q.head_dim, q.seqlen, kp.capacity, p);

  // Contents, where host-readable.
  if (cbi) {
    for (std::int64_t b = 0; b < p.batch; ++b)
      if (cbi[b] < 0 || cbi[b] >= kc.batch)
        fail("cache_batch_idx[" + str(b) + "]", "in [0, k_cache.batch = " + str(kc.batch) + ")", str(cbi[b]));
    if (has_new && kp.seqlen_new > 0) {
      std::vector<std::uint8_t> seen(static_cast<std::size_t>(kc.batch));
      for (std::int64_t b = 0; b < p.batch; ++b) {
        if (seen[cbi[b]])
          fail("cache_batch_idx[" + str(b) + "]", "distinct cache rows when appending", "row " + str(cbi[b]) + " repeated");
        seen[cbi[b]] = 1;
      }
    }
  }
  if (lens) {
    for (std::int64_t b = 0; b < p.batch; ++b) {
      const std::int64_t l0 = lens[b], l = l0 + kp.seqlen_new;
      if (l0 < 0) fail("cache_seqlens[" + str(b) + "]", ">= 0", str(l0));
      if (l > kp.capacity)
        fail("cache_seqlens[" + str(b) + "]",
             "cache_seqlens + seqlen_new (" + str(kp.seqlen_new) + ") <= the cache capacity " + str(kp.capacity),
             str(l0) + " (" + str(l) + " after the append)");
      if (has_rotary) {
        // Positions rotated: L0 + t for the new keys, L0 + i for q when
        // causal / windowed (else L0).
        const bool per_row = opt.causal || opt.window_left >= 0 || opt.window_right >= 0;
        const std::int64_t last = l0 + std::max<std::int64_t>(kp.seqlen_new, per_row ? q.seqlen : 1) - 1;
        if (last >= a.rotary_seqlen)
          fail("rotary_seqlen", "> the largest rotated position " + str(last) + " (sequence " + str(b) + ")",
               str(a.rotary_seqlen));
      }
      if (bt) {
        const std::int64_t pages = (l + kp.page_size - 1) / kp.page_size;
        for (std::int64_t i = 0; i < pages; ++i) {
          const std::int32_t e = bt[b * a.max_blocks_per_seq + i];
          if (e < 0 || e >= kc.batch)
            fail("block_table[" + str(b) + ", " + str(i) + "]", "in [0, num_blocks = " + str(kc.batch) + ")", str(e));
        }
      }
    }
  }
  return kp;
}

}  // namespace detail
}  // namespace flashattn
