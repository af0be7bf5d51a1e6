// The tiled FlashAttention algorithm on the CPU (Dao et al. 2022, Algorithms
// 1, 2 and 4, with the FlashAttention-2 refinements): O(N) extra memory, the
// N x N score matrix only ever exists one tile at a time.
//
// Forward: one task per (sequence, query head, block of query rows). Scores
// are kept in the log2 domain (Q is pre-scaled by scale * log2(e)) so the
// softmax is a bare 2^x. The running max m and sum l are kept per row, O is rescaled
// by 2^(m_old - m_new) when the max grows and divided by l only at the end;
// LSE = ln2 * (m + log2 l) is saved instead of (m, l).
//
// Backward, recomputing P from Q, K and the LSE:
//   pass 0: D_i = rowsum(dO_i * O_i) and the log2-domain LSE per query row;
//   pass 1: one task per (sequence, kv head, key tile) accumulates dK and dV
//           over the group's query heads and every query tile;
//   pass 2: one task per (sequence, query head, query tile) accumulates dQ
//           over the key tiles, recomputing P and dP; or, when there are
//           enough (sequence, kv head) pairs to keep every core busy, pass 1
//           runs per pair and accumulates dQ itself (see "Fused mode").
// Every output element is written by exactly one task that sums in a fixed
// order, so the backward is deterministic (bitwise, for any thread count)
// whether or not BackwardArgs::deterministic is set; the unfused pass 2
// recomputes S and dP (4 of its 14 tile GEMM units) to buy that without
// atomics or per-thread dQ copies.
//
// Masks are resolved per tile (Visibility::classify): tiles no element of
// which is visible are skipped, tiles that are entirely visible run without
// a mask, and only boundary tiles pay for the element rule.
#include <omp.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <vector>

#include "backends.h"
#include "common/numeric.h"
#include "common/philox.h"
#include "cpu/flash_kernels.h"

namespace flashattn::detail {
namespace {

using cpu_kernels::AmxKernels;
using cpu_kernels::GradTile;
using cpu_kernels::SoftmaxTile;
using cpu_kernels::kColPad;
using cpu_kernels::Kernels;
using i64 = std::int64_t;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr float kInf = std::numeric_limits<float>::infinity();

// Tile sizes. L1d is 32-48 KiB and L2 1-2 MiB per core on current x86;
// the micro-kernel keeps one k x 64 panel of its right operand in L1 (16
// KiB at head_dim 64) and streams the left operand from L2, so the tiles
// only need to fit L2 together.
//  - Forward: K^T and V are converted once per call, tile by tile, into
//    shared buffers (by the first task that needs each tile), so a task
//    only reads them: it takes one tall tile of query rows (256; with 512,
//    seqlen 1024 gave 2 tasks per head, too few to even out 2 threads when
//    another process takes a core) and runs it against each K/V tile in
//    128-row sub-tiles; a 128-key tile halves the per-row online-softmax
//    bookkeeping (max, rescale of O) relative to 64 keys. At head_dim 64:
//    Q, O 64 KiB each, K^T, V, S 32-64 KiB each: ~250 KiB.
//  - Backward dK/dV: K and V (and their transposes) are loaded once per
//    key tile, Q and dO once per (key tile, query tile): a wide key tile
//    amortises the latter; the 64-row query tile keeps S and dP at 64 KiB.
//  - Backward dQ (unfused): as the forward, with 64 keys since S and dP
//    both live at once.
// The tall side is halved above head_dim 128 so that the tiles stay in L2.
constexpr i64 kTallTile = 256, kTallTileLargeHead = 128;
constexpr i64 kFwdCols = 128, kFwdSubRows = 128, kDkvRows = 64, kDqCols = 64;
i64 tall_tile(i64 dp) { return dp > 128 ? kTallTileLargeHead : kTallTile; }
// The dK/dV key tile. A tile is skipped only when every block-mask block it
// overlaps is skipped, so a tall tile over narrow key blocks computes the
// union of their patterns: at density 1/4 with 128-key blocks, a 256-key tile
// runs for 1 - (3/4)^2 = 44% of the query tiles instead of 25%. With a block
// mask the tile therefore shrinks to the key block when that block is a
// whole number of micro-kernel panels.
i64 dkv_key_tile(const Problem& p, i64 dp) {
  const i64 tall = tall_tile(dp);
  if (!p.block_mask) return tall;
  const i64 bk = p.block_mask->block_k;
  return bk < tall && bk >= kColPad && bk % kColPad == 0 ? bk : tall;
}
// Score-tile column counts: kFwdCols, kDqCols and the dK/dV key tile (tall).
constexpr bool score_columns_ok(i64 n) { return n % kColPad == 0 && n % 4 == 0; }
static_assert(score_columns_ok(kFwdCols) && score_columns_ok(kDqCols) && score_columns_ok(kTallTile) &&
                  score_columns_ok(kTallTileLargeHead),
              "score tiles are read in whole micro-kernel panels, dropout words come 4 columns at a time");

i64 round_up(i64 x, i64 m) { return (x + m - 1) / m * m; }

// --------------------------------------------------------- kernels ---

// FLASHATTN_CPU_ISA=generic|avx2|avx512|amx caps the instruction set (to
// test the fallbacks on a machine that has more); unset means the best the
// CPU has. amx only changes the bf16 path.
const char* isa_cap() { return std::getenv("FLASHATTN_CPU_ISA"); }

const Kernels& select_kernels() {
  const char* want = isa_cap();
  const auto allowed = [&](const char* isa) {
    if (!want) return true;
    if (std::strcmp(want, "avx512") == 0 || std::strcmp(want, "amx") == 0) return true;
    if (std::strcmp(want, "avx2") == 0) return std::strcmp(isa, "avx512") != 0;
    return false;
  };
#if defined(FLASHATTN_CPU_X86_KERNELS)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw");
  if (avx512 && allowed("avx512")) return cpu_kernels::kernels_avx512();
  if (avx2 && allowed("avx2")) return cpu_kernels::kernels_avx2();
#else
  (void)allowed;
#endif
  return cpu_kernels::kernels_generic();
}

const Kernels& kernels() {
  static const Kernels& k = select_kernels();
  return k;
}

// The AMX tile kernels for bf16, or null: they need the AVX-512 kernels
// (the cap must allow avx512 and amx), AMX-TILE, AMX-BF16 and AVX512_BF16
// on the CPU, and Linux's permission to use the tile-data state, which is
// requested once per process (arch_prctl ARCH_REQ_XCOMP_PERM: without it
// the first tile instruction faults). When the CPU has AMX but the request
// fails, bf16 runs on the fp32 AVX-512 path, whose numerics differ (see
// cpu_flash_kernel_isa), so this says so on stderr once.
const AmxKernels* select_amx() {
#if defined(FLASHATTN_CPU_X86_KERNELS) && defined(__linux__)
  const char* want = isa_cap();
  if (want && std::strcmp(want, "amx") != 0) return nullptr;
  if (std::strcmp(kernels().isa, "avx512") != 0) return nullptr;
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("amx-tile") || !__builtin_cpu_supports("amx-bf16") ||
      !__builtin_cpu_supports("avx512bf16"))
    return nullptr;
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;  // <asm/prctl.h>, the kernel's xfeatures
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0) {
    std::fprintf(stderr,
                 "flashattn: the CPU has AMX but Linux refused the tile-data permission (arch_prctl: %s); "
                 "bf16 flash attention runs on the fp32 AVX-512 path\n",
                 std::strerror(errno));
    return nullptr;
  }
  return &cpu_kernels::kernels_amx();
#else
  return nullptr;
#endif
}

const AmxKernels* amx_kernels() {
  static const AmxKernels* k = select_amx();
  return k;
}

int thread_count(const Context& ctx) { return ctx.num_threads > 0 ? ctx.num_threads : omp_get_max_threads(); }

// Freed tile buffers stay with their thread for its next call. A call asks
// for the same handful of tile-sized blocks (tens to hundreds of KiB) every
// time; fresh ones from malloc cost page faults and heap trimming, which
// made a tiny problem (16 rows) spend most of its 25 us in malloc/free.
// Only blocks of exactly the requested size are reused (the sizes repeat
// from call to call), and a thread keeps at most kMaxCached of them.
class BufferPool {
 public:
  static constexpr std::size_t kMaxCached = 32;
  ~BufferPool() {
    for (const Block& b : free_) std::free(b.ptr);
  }
  float* acquire(std::size_t bytes) {
    for (std::size_t i = free_.size(); i-- > 0;)
      if (free_[i].bytes == bytes) {
        float* p = free_[i].ptr;
        free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(i));
        return p;
      }
    auto* p = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (!p) throw std::bad_alloc();
    return p;
  }
  void release(float* p, std::size_t bytes) {
    if (free_.size() >= kMaxCached) {
      std::free(free_.front().ptr);
      free_.erase(free_.begin());
    }
    free_.push_back(Block{p, bytes});
  }
  static BufferPool& of_this_thread() {
    thread_local BufferPool pool;
    return pool;
  }

 private:
  struct Block {
    float* ptr;
    std::size_t bytes;
  };
  std::vector<Block> free_;
};

// A 64-byte aligned float scratch buffer (one per thread and tile role),
// from and back to its thread's pool. Its contents start undefined.
class Buffer {
 public:
  explicit Buffer(i64 n)
      : bytes_(static_cast<std::size_t>(round_up(std::max<i64>(n, 1) * 4, 64))),
        pool_(&BufferPool::of_this_thread()),
        data_(pool_->acquire(bytes_)) {}
  ~Buffer() { pool_->release(data_, bytes_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  float* get() const { return data_; }

 private:
  std::size_t bytes_;
  BufferPool* pool_;  // the constructing thread's: a Buffer is freed where it was made
  float* data_;
};

// ------------------------------------------------------- tensor I/O ---

// dst[c] = mul * t[off + c] for c < head_dim, converting from the storage
// dtype (fp32 compute for every dtype). e4m3 codes decode exactly, so with
// mul = descale (times the score scale for Q) the only rounding of the
// dequantisation is that of the product.
void load_row(const Tensor& t, i64 off, float mul, float* dst) {
  const i64 d = t.head_dim;
  switch (t.dtype) {
    case DType::f32: {
      const float* s = static_cast<const float*>(t.data) + off;
      for (i64 c = 0; c < d; ++c) dst[c] = s[c] * mul;
      break;
    }
    case DType::f16: {
      const auto* s = static_cast<const std::uint16_t*>(t.data) + off;
      for (i64 c = 0; c < d; ++c) dst[c] = f16_to_float(s[c]) * mul;
      break;
    }
    case DType::bf16: {
      const auto* s = static_cast<const std::uint16_t*>(t.data) + off;
      for (i64 c = 0; c < d; ++c) dst[c] = bf16_to_float(s[c]) * mul;
      break;
    }
    case DType::e4m3: {
      const auto* s = static_cast<const std::uint8_t*>(t.data) + off;
      for (i64 c = 0; c < d; ++c) dst[c] = e4m3_to_float(s[c]) * mul;
      break;
    }
    case DType::f64: break;  // not a flash dtype: rejected by validation
  }
}

void store_row(const Tensor& t, i64 off, const float* src, float mul) {
  const i64 d = t.head_dim;
  switch (t.dtype) {
    case DType::f32: {
      float* s = static_cast<float*>(t.data) + off;
      for (i64 c = 0; c < d; ++c) s[c] = src[c] * mul;
      break;
    }
    case DType::f16: {
      auto* s = static_cast<std::uint16_t*>(t.data) + off;
      for (i64 c = 0; c < d; ++c) s[c] = float_to_f16(src[c] * mul);
      break;
    }
    case DType::bf16: {
      auto* s = static_cast<std::uint16_t*>(t.data) + off;
      for (i64 c = 0; c < d; ++c) s[c] = float_to_bf16(src[c] * mul);
      break;
    }
    case DType::e4m3:  // an input dtype only (o is bf16): rejected by validation
    case DType::f64: break;
  }
}

// Where one sequence lives: the tensor batch index and its row ranges.
struct Seq {
  i64 tb = 0;  // tensor batch index (0 for varlen)
  SeqRange r;
};

Seq sequence(const Problem& p, i64 b) {
  const std::int32_t* cq = p.is_varlen() ? p.varlen->cu_seqlens_q : nullptr;
  const std::int32_t* ck = p.is_varlen() ? p.varlen->cu_seqlens_k : nullptr;
  return Seq{p.is_varlen() ? 0 : b, seq_range(p, cq, ck, b)};
}

// Rows [row0, row0 + n) of head h of sequence s into dst (n x ld, ld >=
// head_dim), scaled by mul, columns past head_dim zeroed.
void load_tile(const Tensor& t, const Seq& s, i64 row0, i64 n, i64 h, float mul, float* dst, i64 ld) {
  for (i64 r = 0; r < n; ++r) {
    float* row = dst + r * ld;
    load_row(t, offset_of(t, s.tb, row0 + r, h), mul, row);
    std::fill(row + t.head_dim, row + ld, 0.0f);
  }
}

// Asks for rows [row0, row0 + n) of head h to be brought into the cache
// while the current tile computes: the rows of one head are a strided walk
// (stride = heads * head_dim) through a tensor too large for L2, and
// without this the next tile's loads stall on L3/DRAM latency (profiled at
// seqlen 2048: tile loads fell from ~19% to ~10% of the forward's samples).
void prefetch_tile(const Tensor& t, const Seq& s, i64 row0, i64 n, i64 h) {
  const i64 es = static_cast<i64>(dtype_size(t.dtype)), bytes = t.head_dim * es;
  for (i64 r = 0; r < n; ++r) {
    const char* row = static_cast<const char*>(t.data) + offset_of(t, s.tb, row0 + r, h) * es;
    for (i64 off = 0; off < bytes; off += 64) __builtin_prefetch(row + off, 0, 2);
  }
}

// dst (d x ldd) = mul * src^T for src (n x lds); columns n .. ldd zeroed so
// that padded keys score 0, never garbage.
void transpose_tile(const float* src, i64 n, i64 d, i64 lds, float mul, float* dst, i64 ldd) {
  for (i64 c = 0; c < d; ++c) {
    float* out = dst + c * ldd;
    for (i64 r = 0; r < n; ++r) out[r] = src[r * lds + c] * mul;
    std::fill(out + n, out + ldd, 0.0f);
  }
}

// ------------------------------------------------ non-finite inputs ---
//
// The NaN rule (README, Semantics): a masked or skipped key never
// contributes to a row, not even as 0 x NaN. Inside a tile that is partly
// masked, a GEMM whose B operand has a NaN or infinity in some row p
// would add 0 x NaN = NaN to every output row, including those that must
// not see p. Such rows are rare, so they are found per tile (only for
// masked tiles) and taken out of the GEMM (gemm_guarded).

// True when rows [0, n) x columns [0, d) of x (ld) hold a NaN or an inf.
bool any_nonfinite(const float* x, i64 n, i64 d, i64 ld) {
  for (i64 r = 0; r < n; ++r) {
    const float* row = x + r * ld;
    float acc = 0.0f;  // x * 0 is NaN exactly for NaN and +-inf
#pragma omp simd reduction(+ : acc)
    for (i64 c = 0; c < d; ++c) acc += row[c] * 0.0f;
    if (acc != acc) return true;
  }
  return false;
}

// The rows of x (n x d, ld) that hold a NaN or an inf.
void nonfinite_rows(const float* x, i64 n, i64 d, i64 ld, std::vector<i64>& out) {
  out.clear();
  for (i64 r = 0; r < n; ++r)
    if (any_nonfinite(x + r * ld, 1, d, ld)) out.push_back(r);
}

// C (m x n, ldc) += op(A) B as kern.gemm(..., accumulate = true), except
// that B's rows `bad` reach row r of C only where vis[r * vrs + p * vps]
// is set: the GEMM runs on a copy of B (k x n, ldb) with those rows zeroed
// and they are added apart, with IEEE arithmetic where visible (0 x NaN
// stays NaN there, as the rule says). bclean: k x ldb floats of scratch.
void gemm_guarded(const Kernels& kern, i64 m, i64 n, i64 k, const float* a, i64 lda, bool a_transposed,
                  const float* b, i64 ldb, float* c, i64 ldc, const std::vector<i64>& bad, float* bclean,
                  const std::uint8_t* vis, i64 vrs, i64 vps) {
  std::memcpy(bclean, b, static_cast<std::size_t>(k * ldb) * sizeof(float));
  for (const i64 p : bad) std::fill(bclean + p * ldb, bclean + p * ldb + n, 0.0f);
  kern.gemm(int(m), int(n), int(k), a, int(lda), a_transposed, bclean, int(ldb), c, int(ldc), true);
  for (const i64 p : bad) {
    const float* bp = b + p * ldb;
    for (i64 r = 0; r < m; ++r) {
      if (!vis[r * vrs + p * vps]) continue;
      const float w = a_transposed ? a[p * lda + r] : a[r * lda + p];
      float* cr = c + r * ldc;
      for (i64 col = 0; col < n; ++col) cr[col] += w * bp[col];
    }
  }
}

// Index of query row i (inside sequence b) in the LSE array.
i64 lse_index(const Problem& p, const Tensor& q, i64 b, i64 h, const Seq& s, i64 i) {
  if (p.is_varlen()) return h * q.seqlen + s.r.q_start + i;
  return (b * p.heads_q + h) * p.seqlen_q + i;
}

// ------------------------------------------------------------ masks ---

enum class TileKind { skip, dense, masked };

// The visibility rule (window/causal, then the block mask on top; see
// BlockMask in flashattn.h) resolved per tile and per element.
class Visibility {
 public:
  explicit Visibility(const Problem& p) : p_(p) {
    if (!p.block_mask) return;
    const BlockMask& m = *p.block_mask;
    hbm_.m = &m;
    // Dense block states, one byte per (mask batch, mask head, q block,
    // k block): a quarter of the size of the kv_indices input, and an O(1)
    // lookup for any tile-to-block mapping.
    const i64 rows = m.batch * m.heads * m.num_q_blocks, nkb = m.num_k_blocks;
    states_.assign(static_cast<std::size_t>(rows * nkb), kBlockSkip);
    for (i64 row = 0; row < rows; ++row) {
      std::uint8_t* st = states_.data() + row * nkb;
      for (std::int32_t n = 0; n < m.kv_count[row]; ++n) st[m.kv_indices[row * nkb + n]] = kBlockPartial;
      if (m.full_kv_count)
        for (std::int32_t n = 0; n < m.full_kv_count[row]; ++n) st[m.full_kv_indices[row * nkb + n]] = kBlockFull;
    }
  }

  // The tile of rows [i0, i1) and columns [j0, j1) of (sequence b, query
  // head h), clipped to the sequence.
  TileKind classify(i64 b, i64 h, const Seq& s, i64 i0, i64 i1, i64 j0, i64 j1) const {
    const i64 sq = s.r.seqlen_q, sk = s.r.seqlen_k;
    i1 = std::min(i1, sq);
    j1 = std::min(j1, sk);
    if (i0 >= i1 || j0 >= j1) return TileKind::skip;
    // first_key / last_key never decrease with the row, so the corner rows
    // bound the whole tile.
    const WindowMask& w = p_.window;
    const bool window_all = w.first_key(i1 - 1, sq, sk) <= j0 && w.last_key(i0, sq, sk) >= j1 - 1;
    const bool window_none = w.last_key(i1 - 1, sq, sk) < j0 || w.first_key(i0, sq, sk) > j1 - 1;
    if (!p_.block_mask) return window_none ? TileKind::skip : window_all ? TileKind::dense : TileKind::masked;

    const BlockMask& m = *p_.block_mask;
    bool any_skip = false, any_partial = false, any_full = false;
    for (i64 qb = i0 / m.block_q; qb <= (i1 - 1) / m.block_q; ++qb) {
      const std::uint8_t* st = states_.data() + hbm_.row(b, h, qb) * m.num_k_blocks;
      for (i64 kb = j0 / m.block_k; kb <= (j1 - 1) / m.block_k; ++kb) {
        any_skip |= st[kb] == kBlockSkip;
        any_partial |= st[kb] == kBlockPartial;
        any_full |= st[kb] == kBlockFull;
      }
    }
    if (!any_full && (!any_partial || window_none)) return TileKind::skip;
    if (!any_skip && (!any_partial || window_all)) return TileKind::dense;
    return TileKind::masked;
  }

  // vis[i * ld + j] = whether row i0 + i sees column j0 + j, for i < qc,
  // j < kc (the element rule of apply()).
  void mask(i64 b, i64 h, const Seq& s, i64 i0, i64 qc, i64 j0, i64 kc, std::uint8_t* vis, i64 ld) const {
    const i64 sq = s.r.seqlen_q, sk = s.r.seqlen_k;
    for (i64 i = 0; i < qc; ++i) {
      const i64 row = i0 + i;
      const i64 lo = p_.window.first_key(row, sq, sk), hi = p_.window.last_key(row, sq, sk);
      std::uint8_t* vi = vis + i * ld;
      const std::uint8_t* st =
          p_.block_mask ? states_.data() + hbm_.row(b, h, row / p_.block_mask->block_q) * p_.block_mask->num_k_blocks
                        : nullptr;
      for (i64 j = 0; j < kc; ++j) {
        const i64 col = j0 + j;
        const bool in_window = col >= lo && col <= hi;
        if (!st) {
          vi[j] = in_window;
          continue;
        }
        const std::uint8_t state = st[col / p_.block_mask->block_k];
        vi[j] = state == kBlockFull || (state == kBlockPartial && in_window);
      }
    }
  }

  // Sets the invisible elements of a masked tile to -inf: rows i0 .. i0+qc,
  // columns j0 .. j0+kc of S (leading dimension lds); transposed: the tile
  // is stored key-major, element (i, j) at S[j * lds + i]. `hidden` is the
  // value written (+inf where S is multiplied by a negative scale later).
  void apply(i64 b, i64 h, const Seq& s, i64 i0, i64 qc, i64 j0, i64 kc, float* S, i64 lds,
             bool transposed = false, float hidden = -kInf) const {
    const i64 sq = s.r.seqlen_q, sk = s.r.seqlen_k;
    const i64 rs = transposed ? 1 : lds, cs = transposed ? lds : 1;
    for (i64 i = 0; i < qc; ++i) {
      const i64 row = i0 + i;
      const i64 lo = p_.window.first_key(row, sq, sk), hi = p_.window.last_key(row, sq, sk);
      float* Si = S + i * rs;
      if (!p_.block_mask) {
        for (i64 j = 0; j < kc; ++j)
          if (j0 + j < lo || j0 + j > hi) Si[j * cs] = hidden;
        continue;
      }
      const BlockMask& m = *p_.block_mask;
      const std::uint8_t* st = states_.data() + hbm_.row(b, h, row / m.block_q) * m.num_k_blocks;
      for (i64 j = 0; j < kc; ++j) {
        const i64 col = j0 + j;
        const std::uint8_t state = st[col / m.block_k];
        const bool visible = state == kBlockFull || (state == kBlockPartial && col >= lo && col <= hi);
        if (!visible) Si[j * cs] = hidden;
      }
    }
  }

 private:
  const Problem& p_;
  HostBlockMask hbm_;
  std::vector<std::uint8_t> states_;
};

// ---------------------------------------------------------- dropout ---

struct Dropout {
  bool on = false;
  DropoutStream stream{};
  float kept_scale = 1.0f;  // 1 / (1 - p)

  explicit Dropout(const Problem& p)
      : on(p.has_dropout()),
        stream(DropoutStream::make(p.seed, p.offset, p.dropout_p)),
        kept_scale(static_cast<float>(1.0 / (1.0 - static_cast<double>(p.dropout_p)))) {}

  // keep[j] = kept ? value : 0 for columns j0 .. j0+n of row `row` of
  // attention matrix bh (= sequence * heads_q + head); keep[n .. pad) = 0.
  void row(i64 bh, i64 row, i64 j0, i64 n, i64 pad, float value, float* keep) const {
    stream.fill_row(static_cast<std::uint32_t>(bh), static_cast<std::uint32_t>(row), j0, n, value, keep);
    std::fill(keep + n, keep + pad, 0.0f);
  }
};

struct Task {
  i64 b, h, tile;  // h: query head (forward, dQ) or kv head (dK/dV)
};

// One task per (sequence, head, tile of `tile_rows` rows of the q or k side).
std::vector<Task> make_tasks(const Problem& p, i64 heads, i64 tile_rows, bool key_side) {
  std::vector<Task> tasks;
  for (i64 b = 0; b < p.batch; ++b) {
    const Seq s = sequence(p, b);
    const i64 n = key_side ? s.r.seqlen_k : s.r.seqlen_q;
    for (i64 h = 0; h < heads; ++h)
      for (i64 t = 0; t * tile_rows < n; ++t) tasks.push_back(Task{b, h, t});
  }
  return tasks;
}

// Pass 0 of the backward for (sequence b, query head h): per query row the
// LSE in the log2 domain (+inf for empty rows, so that 2^(S - lse) is 0
// there rather than NaN) and D = rowsum(dO * O). o_row, do_row: head_dim
// floats of scratch.
void backward_pass0_head(const Problem& p, const BackwardArgs& a, i64 b, i64 h, float* lse2, float* Dsum,
                         float* o_row, float* do_row) {
  const Seq s = sequence(p, b);
  for (i64 i = 0; i < s.r.seqlen_q; ++i) {
    const i64 idx = lse_index(p, a.q, b, h, s, i);
    const float lse = a.lse[idx];
    lse2[idx] = lse == -kInf ? kInf : lse * kLog2e;
    load_row(a.o, offset_of(a.o, s.tb, s.r.q_start + i, h), 1.0f, o_row);
    load_row(a.dout, offset_of(a.dout, s.tb, s.r.q_start + i, h), 1.0f, do_row);
    float acc = 0.0f;
    for (i64 c = 0; c < p.head_dim; ++c) acc += o_row[c] * do_row[c];
    Dsum[idx] = acc;
  }
}

// Rows whose log2-domain LSE is at least this large in magnitude get their
// softmax statistics recomputed in the backward (recompute_row_stats):
// the float LSE is rounded to a few ulps of its own size, and
// P = 2^(S - lse) turns an error of d in the LSE into a factor 2^d on P
// (at logits ~1e6 the ulp is 0.06: P off by 4%, dV by 0.5-2 against
// values ~5). Below 2^8 the ulp is at most 2^-16 and no row is recomputed,
// which is every row of ordinary training.
constexpr float kRecomputeLse2 = 256.0f;

// The forward's row statistics of query rows [i0, i0 + qc) of (sequence b,
// query head h), recomputed with the forward's own arithmetic (Q scaled
// by scale * log2(e) on load, K unscaled, the same GEMM, whose k-sum order
// fixes every score bit for bit, the same online softmax): the row max m
// is exactly the forward's, so P = 2^(S - m) / l is at most 1 and agrees
// with the forward's P to float rounding at any logit scale, where
// 2^(S - lse) does not. Rows flagged in need[] get lse2 = m and
// pmul = 1 / l (grad_rows: P = 2^(S - lse2) * pmul).
void recompute_row_stats(const Kernels& kern, const Problem& p, const Visibility& vis, const BackwardArgs& a, i64 b,
                         i64 h, i64 i0, i64 qc, const std::uint8_t* need, float* lse2, float* pmul,
                         std::vector<float>& scratch_buf) {
  const Seq s = sequence(p, b);
  const i64 d = p.head_dim, dp = round_up(d, kColPad), Bc = kFwdCols, sk = s.r.seqlen_k, hk = h / p.group();
  scratch_buf.resize(static_cast<std::size_t>(qc * dp + 2 * Bc * dp + qc * Bc + 2 * qc));
  float *Q = scratch_buf.data(), *K = Q + qc * dp, *Kt = K + Bc * dp, *S = Kt + Bc * dp, *m = S + qc * Bc,
        *l = m + qc;
  load_tile(a.q, s, s.r.q_start + i0, qc, h, p.scale * kLog2e, Q, dp);
  std::fill(m, m + qc, -kInf);
  std::fill(l, l + qc, 0.0f);
  for (i64 j0 = 0; j0 < sk; j0 += Bc) {
    const TileKind kind = vis.classify(b, h, s, i0, i0 + qc, j0, j0 + Bc);
    if (kind == TileKind::skip) continue;
    const i64 kc = std::min(Bc, sk - j0);
    load_tile(a.k, s, s.r.k_start + j0, kc, hk, 1.0f, K, dp);
    transpose_tile(K, kc, d, dp, 1.0f, Kt, Bc);
    kern.gemm(int(qc), int(Bc), int(d), Q, int(dp), false, Kt, int(Bc), S, int(Bc), false);
    if (kc < Bc)
      for (i64 i = 0; i < qc; ++i) std::fill(S + i * Bc + kc, S + (i + 1) * Bc, -kInf);
    if (kind == TileKind::masked) vis.apply(b, h, s, i0, qc, j0, kc, S, Bc);
    kern.softmax_rows(int(qc), int(Bc), S, int(Bc), m, l, nullptr, 0, 0, nullptr, 0);
  }
  for (i64 i = 0; i < qc; ++i) {
    if (!need[i] || !(l[i] > 0.0f) || !std::isfinite(m[i])) continue;
    const i64 idx = lse_index(p, a.q, b, h, s, i0 + i);
    lse2[idx] = m[i];
    pmul[idx] = 1.0f / l[i];
  }
}

// ------------------------------------------------- the AMX bf16 path ---
//
// bf16 inputs on CPUs with AMX-BF16 (amx_kernels()): the same tiling,
// masks, dropout and task split as the fp32 path, with every GEMM on the
// tile unit from bf16 operands (fp32 accumulation), as GPU FlashAttention
// does: S = Q K^T and dP = dO V^T from the bf16 inputs, P rounded to bf16
// for P V and P^T dO, dS rounded to bf16 for dS K and dS^T Q. The softmax,
// its running max/sum, the LSE, D and every accumulator stay fp32.
//
// B operands are VNNI-packed (flash_kernels.h). K and V (forward, dQ pass)
// and Q and dO (dK/dV pass) are packed once per call for every
// (sequence, head), O(N d) work and memory against the O(N^2 d) of the
// GEMMs, instead of once per tile pair. In the dK/dV pass the tiles are
// computed key-major (S^T = K Q^T, dP^T = V dO^T), so P^T and dS^T come
// out row-major as the A operands of dV += P^T dO and dK += dS^T Q, and
// the fused dQ is accumulated transposed, dQ^T += K^T dS^T, with dS^T's
// packed form written by the same elementwise kernel.

using u16 = std::uint16_t;

class Bf16Buffer {
 public:
  explicit Bf16Buffer(i64 n) : b_((n + 1) / 2) {}
  u16* get() const { return reinterpret_cast<u16*>(b_.get()); }

 private:
  Buffer b_;
};

// Rows [row0, row0 + n) of head h of bf16 tensor t into dst (rows x ld,
// rows >= n): rows n .. rows and columns head_dim .. ld zeroed. The rows of
// one head of one sequence are stride_seq apart.
void copy_rows_bf16(const AmxKernels& amx, const Tensor& t, const Seq& s, i64 row0, i64 n, i64 rows, i64 h,
                    u16* dst, i64 ld) {
  const u16* src = static_cast<const u16*>(t.data) + (n > 0 ? offset_of(t, s.tb, row0, h) : 0);
  amx.load_rows(int(n), int(rows), int(t.head_dim), src, t.stride_seq, dst, int(ld));
}

// Rows [row0, row0 + n) of head h of bf16 tensor t = src rows (lds) times
// mul[r], rounded to bf16.
void store_rows_bf16(const AmxKernels& amx, const Tensor& t, const Seq& s, i64 row0, i64 n, i64 h, const float* src,
                     i64 lds, const float* mul) {
  if (n <= 0) return;
  u16* dst = static_cast<u16*>(t.data) + offset_of(t, s.tb, row0, h);
  amx.store_rows(int(n), int(t.head_dim), src, int(lds), mul, dst, t.stride_seq);
}

// Storage for the operands packed once per call (K^T and V tiles of the
// fp32 forward, the VNNI-packed operands of the AMX path), kept per
// calling thread and reused (grown as needed) across calls: they are
// O(N d), several MiB at seqlen 4096, and a fresh allocation that size
// comes from mmap as untouched pages whose faults and zeroing took ~7% of
// the forward. Slots are the buffers one call needs at once. The price: a
// thread that called the flash path keeps up to 4 x (seqlen x heads x
// head_dim) bf16, or 2 x that in fp32, until it exits.
void* scratch(int slot, i64 bytes) {
  constexpr int kSlots = 4;
  // Plain aligned blocks, not pool Buffers: these live until the thread
  // exits, and thread_local destruction order would not keep the pool alive
  // for them.
  struct Free {
    void operator()(void* q) const { std::free(q); }
  };
  thread_local std::unique_ptr<void, Free> bufs[kSlots];
  thread_local i64 caps[kSlots] = {};
  if (bytes > caps[slot]) {
    bufs[slot].reset();  // free first: the old and new buffer never coexist
    const auto size = static_cast<std::size_t>(round_up(std::max<i64>(bytes, 4), 64));
    bufs[slot].reset(std::aligned_alloc(64, size));
    if (!bufs[slot]) throw std::bad_alloc();
    caps[slot] = bytes;
  }
  return bufs[slot].get();
}
u16* packed_scratch(int slot, i64 elems) { return static_cast<u16*>(scratch(slot, elems * 2)); }

// Where the packed operand of (sequence b, head h) starts: blocks of
// rows(b) x dp elements, rows(b) the sequence's q or k length rounded up to
// 32 (the tile unit's k step) and zero-padded.
class PackIndex {
 public:
  PackIndex(const Problem& p, i64 heads, bool key_side, i64 dp) : heads_(heads), dp_(dp) {
    for (i64 b = 0; b < p.batch; ++b) {
      const Seq s = sequence(p, b);
      const i64 r = round_up(key_side ? s.r.seqlen_k : s.r.seqlen_q, 32);
      base_.push_back(total_);
      rows_.push_back(r);
      total_ += heads * r * dp;
    }
  }
  i64 rows(i64 b) const { return rows_[static_cast<std::size_t>(b)]; }
  i64 off(i64 b, i64 h) const { return base_[static_cast<std::size_t>(b)] + h * rows(b) * dp_; }
  i64 total() const { return total_; }
  i64 heads() const { return heads_; }

 private:
  i64 heads_, dp_, total_ = 0;
  std::vector<i64> base_, rows_;
};

// For every (sequence, head) of t (key side: the kv heads): its rows packed
// as B = X^T into bt and/or as B = X into bn (either may be null).
void prepack(const AmxKernels& amx, const Problem& p, const Tensor& t, bool key_side, const PackIndex& idx,
             i64 dp, u16* bt, u16* bn, int nthreads) {
  i64 max_rows = 0;
  for (i64 b = 0; b < p.batch; ++b) max_rows = std::max(max_rows, idx.rows(b));
  const i64 n = p.batch * idx.heads();
#pragma omp parallel num_threads(nthreads)
  {
    const Bf16Buffer rm_buf(max_rows * dp);
    u16* rm = rm_buf.get();
#pragma omp for schedule(dynamic)
    for (i64 bh = 0; bh < n; ++bh) {
      const i64 b = bh / idx.heads(), h = bh % idx.heads();
      const Seq s = sequence(p, b);
      const i64 rows = idx.rows(b);
      if (rows == 0) continue;
      const i64 start = key_side ? s.r.k_start : s.r.q_start, len = key_side ? s.r.seqlen_k : s.r.seqlen_q;
      copy_rows_bf16(amx, t, s, start, len, rows, h, rm, dp);
      if (bt) amx.pack_t(int(rows), int(dp), rm, int(dp), bt + idx.off(b, h));
      if (bn) amx.pack_n(int(rows), int(dp), rm, int(dp), bn + idx.off(b, h), rows * 16);
    }
  }
}

// The forward's score tile on the AMX path: 32 query rows x 256 keys, S
// (fp32) and P (bf16) 32 + 16 KiB, about L1's size, between the GEMM that
// writes S and the softmax that reads it. The tile unit makes the GEMMs
// cheap, so the softmax's fixed cost per row (two reductions, alpha, the
// O rescale) matters: 256 keys per row halve it relative to 128.
// Measured at seqlen 4096, one thread: 16 x 256 and 64 x 256 ran 10-15%
// slower (more GEMM calls with half the tile reuse; S out of L1).
constexpr i64 kAmxFwdSubRows = 32, kAmxFwdCols = 256;

void forward_amx(const AmxKernels& amx, const Problem& p, const ForwardArgs& a,
                 const Context& ctx) {
  const Visibility vis(p);
  const Dropout drop(p);
  const i64 d = p.head_dim, dp = round_up(d, kColPad), group = p.group();
  const i64 Bt = tall_tile(dp), Bs = kAmxFwdSubRows, Bc = kAmxFwdCols;
  const float q_mul = p.scale * kLog2e, s_mul = q_mul == 0 ? 1.0f : std::abs(q_mul);
  const int nthreads = thread_count(ctx);
  // K^T and V of every (sequence, kv head), VNNI-packed once per call into
  // shared buffers, key tile by key tile, by whichever task first needs
  // the tile: packed[] says 0 = not yet, 1 = being packed, 2 = ready. A
  // task that finds a tile being packed packs its own copy rather than
  // wait, so the call has one parallel region and no barrier besides its
  // end: with other processes on the cores (a busy 2-core machine), every
  // extra fork/join cost a scheduling quantum whenever one of its threads
  // was descheduled.
  const PackIndex kidx(p, p.heads_k, true, dp);
  u16 *kt_all = packed_scratch(0, kidx.total()), *vn_all = packed_scratch(1, kidx.total());
  std::vector<i64> tile_base(static_cast<std::size_t>(p.batch) + 1, 0);
  for (i64 b = 0; b < p.batch; ++b)
    tile_base[static_cast<std::size_t>(b) + 1] =
        tile_base[static_cast<std::size_t>(b)] + p.heads_k * ((sequence(p, b).r.seqlen_k + Bc - 1) / Bc);
  const std::unique_ptr<std::atomic<std::uint8_t>[]> packed(
      new std::atomic<std::uint8_t>[static_cast<std::size_t>(std::max<i64>(tile_base.back(), 1))]);
  for (i64 i = 0; i < tile_base.back(); ++i) packed[static_cast<std::size_t>(i)].store(0, std::memory_order_relaxed);
  const std::vector<Task> tasks = make_tasks(p, p.heads_q, Bt, false);
  const auto ntasks = static_cast<i64>(tasks.size());

#pragma omp parallel num_threads(nthreads)
  {
    const Bf16Buffer q_buf(Bt * dp), p_buf(Bs * Bc), rm_buf(Bc * dp), ktl_buf(Bc * dp), vnl_buf(Bc * dp);
    const Buffer s_buf(Bs * Bc), o_buf(Bt * dp), keep_buf(Bs * Bc);
    u16 *Q = q_buf.get(), *P = p_buf.get(), *rm = rm_buf.get(), *kt_local = ktl_buf.get(), *vn_local = vnl_buf.get();
    float *S = s_buf.get(), *O = o_buf.get(), *keep = keep_buf.get();
    std::vector<float> m_buf(static_cast<std::size_t>(Bt)), l_buf(static_cast<std::size_t>(Bt)),
        o_mul(static_cast<std::size_t>(Bt));

amx.begin();
#pragma omp for schedule(dynamic)
    for (i64 ti = 0; ti < ntasks; ++ti) {
      const Task& t = tasks[static_cast<std::size_t>(ti)];
      const Seq s = sequence(p, t.b);
      const i64 t0 = t.tile * Bt, tc = std::min(Bt, s.r.seqlen_q - t0), sk = s.r.seqlen_k;
      const i64 hk = t.h / group, bh = t.b * p.heads_q + t.h;
      const i64 skp = kidx.rows(t.b);
      u16* kt_head = kt_all + kidx.off(t.b, hk);
      u16* vn_head = vn_all + kidx.off(t.b, hk);
      const i64 ntile_b = (sk + Bc - 1) / Bc;
      copy_rows_bf16(amx, a.q, s, s.r.q_start + t0, tc, round_up(tc, 16), t.h, Q, dp);
      // A negative scale: negate Q (exact: the sign bit) so that the row
      // max of S times s_mul > 0 is the max of the scaled scores. A zero
      // scale: Q = 0 and s_mul = 1, so that S = 0 exactly where visible
      // (-inf * 0 would be NaN).
      if (q_mul < 0)
        for (i64 e = 0; e < tc * dp; ++e) Q[e] ^= u16{0x8000};
      if (q_mul == 0) std::fill(Q, Q + tc * dp, u16{0});
      std::fill(O, O + round_up(tc, 16) * dp, 0.0f);
      std::fill(m_buf.begin(), m_buf.end(), -kInf);
      std::fill(l_buf.begin(), l_buf.end(), 0.0f);

      for (i64 j0 = 0; j0 < sk; j0 += Bc) {
        if (vis.classify(t.b, t.h, s, t0, t0 + tc, j0, j0 + Bc) == TileKind::skip) continue;
        const i64 kc = std::min(Bc, sk - j0), k32 = round_up(kc, 32);
        // The tile's B operands: K^T panels (panel stride dp * 16) and V
        // rows j0 .. j0 + k32 of every dims panel (panel stride vn_panel).
        u16* kt = kt_head + (j0 / 16) * dp * 16;
        u16* vn = vn_head + (j0 / 2) * 32;
        i64 vn_panel = skp * 16;
        std::atomic<std::uint8_t>& state =
            packed[static_cast<std::size_t>(tile_base[static_cast<std::size_t>(t.b)] + hk * ntile_b + j0 / Bc)];
        if (state.load(std::memory_order_acquire) != 2) {
          std::uint8_t seen = 0;
          const bool mine = state.compare_exchange_strong(seen, 1, std::memory_order_acq_rel);
          if (!mine && seen != 2) {  // another task is packing it: pack a private copy
            kt = kt_local;
            vn = vn_local;
            vn_panel = k32 * 16;
          }
          if (mine || seen != 2) {
            copy_rows_bf16(amx, a.k, s, s.r.k_start + j0, kc, k32, hk, rm, dp);
            amx.pack_t(int(k32), int(dp), rm, int(dp), kt);
            copy_rows_bf16(amx, a.v, s, s.r.k_start + j0, kc, k32, hk, rm, dp);
            amx.pack_n(int(k32), int(dp), rm, int(dp), vn, vn_panel);
            if (mine) state.store(2, std::memory_order_release);
          }
        }
        for (i64 r0 = 0; r0 < tc; r0 += Bs) {
          const i64 i0 = t0 + r0, qc = std::min(Bs, tc - r0), qc16 = round_up(qc, 16);
          const TileKind kind = vis.classify(t.b, t.h, s, i0, i0 + qc, j0, j0 + Bc);
          if (kind == TileKind::skip) continue;
          float *Os = O + r0 * dp, *m = m_buf.data() + r0, *l = l_buf.data() + r0;
          amx.gemm(int(qc16), int(round_up(kc, 16)), int(dp), Q + r0 * dp, int(dp), kt, dp * 16, S, int(Bc), false);
          if (kc < Bc)
            for (i64 i = 0; i < qc; ++i) std::fill(S + i * Bc + kc, S + (i + 1) * Bc, -kInf);
          if (kind == TileKind::masked) vis.apply(t.b, t.h, s, i0, qc, j0, kc, S, Bc);

          if (drop.on)  // l sums the un-dropped probabilities; 1/(1-p) is applied with 1/l.
            for (i64 i = 0; i < qc; ++i) drop.row(bh, i0 + i, j0, kc, Bc, 1.0f, keep + i * Bc);
          SoftmaxTile st{};
          st.rows = int(qc);
          st.rows_pad = int(qc16);
          st.n = int(Bc);
          st.s = S;
          st.lds = int(Bc);
          st.mul = s_mul;
          st.m = m;
          st.l = l;
          st.o = Os;
          st.ldo = int(dp);
          st.o_cols = int(dp);
          st.keep = drop.on ? keep : nullptr;
          st.ldk = int(Bc);
          st.p = P;
          st.ldp = int(Bc);
          amx.softmax_tile(st);
          amx.gemm(int(qc16), int(dp), int(k32), P, int(Bc), vn, vn_panel, Os, int(dp), true);
        }
      }

      for (i64 i = 0; i < tc; ++i) {
        const float l = l_buf[static_cast<std::size_t>(i)], m = m_buf[static_cast<std::size_t>(i)];
        const bool empty = l == 0.0f;
        o_mul[static_cast<std::size_t>(i)] = empty ? 0.0f : drop.kept_scale / l;
        if (empty) std::fill(O + i * dp, O + (i + 1) * dp, 0.0f);  // 0 * NaN would stay NaN
        if (a.lse) a.lse[lse_index(p, a.q, t.b, t.h, s, t0 + i)] = empty ? -kInf : (m + std::log2(l)) * kLn2;
      }
      store_rows_bf16(amx, a.o, s, s.r.q_start + t0, tc, t.h, O, dp, o_mul.data());
    }
    amx.release();
  }
}

// The backward after pass 0 (lse2, Dsum as in cpu_flash_backward), with
// the same passes, task split and fused/unfused choice as the fp32 path.
void backward_amx(const AmxKernels& amx, const Problem& p, const BackwardArgs& a, const Context& ctx,
                  std::vector<float>& lse2, std::vector<float>& Dsum, bool fused) {
  const Visibility vis(p);
  const Dropout drop(p);
  const i64 d = p.head_dim, dp = round_up(d, kColPad), group = p.group();
  // S is unscaled here and grad_tile computes 2^(S * q_mul - lse): masked
  // scores must become -inf after that multiplication.
  const float q_mul = p.scale * kLog2e, hidden = q_mul < 0 ? kInf : -kInf;
  const int nthreads = thread_count(ctx);

  // Pass 1: dK, dV (and dQ^T when fused), key-major tiles.
  {
    const i64 Bk = dkv_key_tile(p, dp), Bq = kDkvRows;
    const PackIndex qidx(p, p.heads_q, false, dp);
    u16 *qt_all = packed_scratch(0, qidx.total()), *qn_all = packed_scratch(1, qidx.total());
    u16 *dot_all = packed_scratch(2, qidx.total()), *don_all = packed_scratch(3, qidx.total());
    // Pass 0 and the packing of Q and dO, per (sequence, query head), in
    // one parallel region (each fork/join costs a scheduling quantum when
    // other processes hold the cores).
    {
      i64 max_rows = 0;
      for (i64 b = 0; b < p.batch; ++b) max_rows = std::max(max_rows, qidx.rows(b));
      const i64 nbh = p.batch * p.heads_q;
#pragma omp parallel num_threads(nthreads)
      {
        const Bf16Buffer rm_buf(max_rows * dp);
        u16* rm = rm_buf.get();
        std::vector<float> o_row(static_cast<std::size_t>(d)), do_row(static_cast<std::size_t>(d));
#pragma omp for schedule(dynamic)
        for (i64 bh = 0; bh < nbh; ++bh) {
          const i64 b = bh / p.heads_q, h = bh % p.heads_q, rows = qidx.rows(b);
          backward_pass0_head(p, a, b, h, lse2.data(), Dsum.data(), o_row.data(), do_row.data());
          if (rows == 0) continue;
          const Seq s = sequence(p, b);
          copy_rows_bf16(amx, a.q, s, s.r.q_start, s.r.seqlen_q, rows, h, rm, dp);
          amx.pack_t(int(rows), int(dp), rm, int(dp), qt_all + qidx.off(b, h));
          amx.pack_n(int(rows), int(dp), rm, int(dp), qn_all + qidx.off(b, h), rows * 16);
          copy_rows_bf16(amx, a.dout, s, s.r.q_start, s.r.seqlen_q, rows, h, rm, dp);
          amx.pack_t(int(rows), int(dp), rm, int(dp), dot_all + qidx.off(b, h));
          amx.pack_n(int(rows), int(dp), rm, int(dp), don_all + qidx.off(b, h), rows * 16);
        }
      }
    }
    std::vector<Task> tasks;
    if (fused) {
      for (i64 b = 0; b < p.batch; ++b)
        for (i64 hk = 0; hk < p.heads_k; ++hk) tasks.push_back(Task{b, hk, 0});
    } else {
      tasks = make_tasks(p, p.heads_k, Bk, true);
    }
    const auto ntasks = static_cast<i64>(tasks.size());
#pragma omp parallel num_threads(nthreads)
    {
      const Bf16Buffer k_buf(Bk * dp), v_buf(Bk * dp), kt_buf(dp * Bk), pt_buf(Bk * Bq), dst_buf(Bk * Bq),
          dsv_buf(Bk * Bq);
      const Buffer st_buf(Bk * Bq), dpt_buf(Bk * Bq), dk_buf(Bk * dp), dv_buf(Bk * dp), keep_buf(Bq * Bk),
          lse_buf(Bq), d_buf(Bq);
      u16 *K = k_buf.get(), *V = v_buf.get(), *KT = kt_buf.get(), *PT = pt_buf.get(), *dST = dst_buf.get();
      u16* dSv = dsv_buf.get();
      float *ST = st_buf.get(), *dPT = dpt_buf.get(), *dK = dk_buf.get(), *dV = dv_buf.get();
      float *keep = keep_buf.get(), *lse_c = lse_buf.get(), *d_c = d_buf.get();
      std::vector<float> dq_acc;  // fused: [query head of the group][dp][padded query rows] (dQ^T)
      std::vector<float> dq_row(static_cast<std::size_t>(dp));
      const std::vector<float> scale_v(static_cast<std::size_t>(Bk), p.scale), one_v(static_cast<std::size_t>(Bk), 1.0f);
      const float *scale_rows = scale_v.data(), *one_rows = one_v.data();

amx.begin();
#pragma omp for schedule(dynamic)
      for (i64 ti = 0; ti < ntasks; ++ti) {
        const Task& t = tasks[static_cast<std::size_t>(ti)];
        const Seq s = sequence(p, t.b);
        const i64 sq = s.r.seqlen_q, sk = s.r.seqlen_k, sqp = qidx.rows(t.b);
        const i64 kt_begin = fused ? 0 : t.tile, kt_end = fused ? (sk + Bk - 1) / Bk : t.tile + 1;
        if (fused) dq_acc.assign(static_cast<std::size_t>(group * dp * sqp), 0.0f);

        for (i64 kt = kt_begin; kt < kt_end; ++kt) {
          const i64 j0 = kt * Bk, kc = std::min(Bk, sk - j0), k16 = round_up(kc, 16), k32 = round_up(kc, 32);
          copy_rows_bf16(amx, a.k, s, s.r.k_start + j0, kc, k32, t.h, K, dp);
          copy_rows_bf16(amx, a.v, s, s.r.k_start + j0, kc, k32, t.h, V, dp);
          if (fused) amx.transpose(int(k32), int(dp), K, int(dp), KT, int(Bk));
          std::fill(dK, dK + k16 * dp, 0.0f);
          std::fill(dV, dV + k16 * dp, 0.0f);

          for (i64 g = 0; g < group; ++g) {
            const i64 h = t.h * group + g, bh = t.b * p.heads_q + h;
            const u16 *qt = qt_all + qidx.off(t.b, h), *qn = qn_all + qidx.off(t.b, h);
            const u16 *dot = dot_all + qidx.off(t.b, h), *don = don_all + qidx.off(t.b, h);
            for (i64 i0 = 0; i0 < sq; i0 += Bq) {
              const TileKind kind = vis.classify(t.b, h, s, i0, i0 + Bq, j0, j0 + kc);
              if (kind == TileKind::skip) continue;
              const i64 qc = std::min(Bq, sq - i0), q32 = round_up(qc, 32);
              amx.gemm(int(k16), int(q32), int(dp), K, int(dp), qt + (i0 / 16) * dp * 16, dp * 16, ST, int(Bq),
                       false);
              if (kind == TileKind::masked) vis.apply(t.b, h, s, i0, qc, j0, kc, ST, Bq, /*transposed=*/true, hidden);
              amx.gemm(int(k16), int(q32), int(dp), V, int(dp), dot + (i0 / 16) * dp * 16, dp * 16, dPT, int(Bq),
                       false);
              for (i64 c = 0; c < q32; ++c) {
                const bool live = c < qc;
                const i64 idx = live ? lse_index(p, a.q, t.b, h, s, i0 + c) : 0;
                lse_c[c] = live ? lse2[static_cast<std::size_t>(idx)] : kInf;
                d_c[c] = live ? Dsum[static_cast<std::size_t>(idx)] : 0.0f;
              }
              if (drop.on)
                for (i64 i = 0; i < qc; ++i) drop.row(bh, i0 + i, j0, kc, Bk, drop.kept_scale, keep + i * Bk);
              GradTile gt{};
              gt.rows_valid = int(kc);
              gt.rows_pad = int(k32);
              gt.cols_valid = int(qc);
              gt.cols = int(q32);
              gt.s = ST;
              gt.dp = dPT;
              gt.ld = int(Bq);
              gt.mul = q_mul;
              gt.lse_col = lse_c;
              gt.d_col = d_c;
              gt.keep = drop.on ? keep : nullptr;
              gt.keep_rs = 1;
              gt.keep_cs = Bk;
              gt.p = PT;
              gt.ldp = int(Bq);
              gt.ds = dST;
              gt.ldds = int(Bq);
              gt.ds_vnni = fused ? dSv : nullptr;
              amx.grad_tile(gt);
              amx.gemm(int(k16), int(dp), int(q32), PT, int(Bq), don + (i0 / 2) * 32, sqp * 16, dV, int(dp), true);
              amx.gemm(int(k16), int(dp), int(q32), dST, int(Bq), qn + (i0 / 2) * 32, sqp * 16, dK, int(dp), true);
              if (fused)
                amx.gemm(int(dp), int(q32), int(k32), KT, int(Bk), dSv, k32 * 16, dq_acc.data() + g * dp * sqp + i0,
                         int(sqp), true);
            }
          }
          store_rows_bf16(amx, a.dk, s, s.r.k_start + j0, kc, t.h, dK, dp, scale_rows);
          store_rows_bf16(amx, a.dv, s, s.r.k_start + j0, kc, t.h, dV, dp, one_rows);
        }
        if (fused)
          for (i64 g = 0; g < group; ++g)
            for (i64 i = 0; i < sq; ++i) {
              const float* col = dq_acc.data() + g * dp * sqp + i;
              for (i64 c = 0; c < dp; ++c) dq_row[static_cast<std::size_t>(c)] = col[c * sqp];
              store_row(a.dq, offset_of(a.dq, s.tb, s.r.q_start + i, t.h * group + g), dq_row.data(), p.scale);
            }
      }
      amx.release();
    }
  }
  if (fused) return;

  // Pass 2: dQ = scale * dS K per (query tile, key tile), query-major.
  {
    const i64 Br = tall_tile(dp), Bc = kDqCols;
    const PackIndex kidx(p, p.heads_k, true, dp);
    // Pass 1's packed Q and dO are dead by now: their slots are reused.
    u16 *kt_all = packed_scratch(0, kidx.total()), *kn_all = packed_scratch(1, kidx.total());
    u16* vt_all = packed_scratch(2, kidx.total());
    prepack(amx, p, a.k, true, kidx, dp, kt_all, kn_all, nthreads);
    prepack(amx, p, a.v, true, kidx, dp, vt_all, nullptr, nthreads);
    const std::vector<Task> tasks = make_tasks(p, p.heads_q, Br, false);
    const auto ntasks = static_cast<i64>(tasks.size());
#pragma omp parallel num_threads(nthreads)
    {
      const Bf16Buffer q_buf(Br * dp), do_buf(Br * dp), ds_buf(Br * Bc);
      const Buffer s_buf(Br * Bc), dp_buf(Br * Bc), dq_buf(Br * dp), keep_buf(Br * Bc), lse_buf(Br), d_buf(Br);
      u16 *Q = q_buf.get(), *dO = do_buf.get(), *dS = ds_buf.get();
      float *S = s_buf.get(), *dP = dp_buf.get(), *dQ = dq_buf.get(), *keep = keep_buf.get();
      float *lse_r = lse_buf.get(), *d_r = d_buf.get();
      const std::vector<float> scale_v(static_cast<std::size_t>(Br), p.scale);
      const float* scale_rows = scale_v.data();

amx.begin();
#pragma omp for schedule(dynamic)
      for (i64 ti = 0; ti < ntasks; ++ti) {
        const Task& t = tasks[static_cast<std::size_t>(ti)];
        const Seq s = sequence(p, t.b);
        const i64 i0 = t.tile * Br, qc = std::min(Br, s.r.seqlen_q - i0), qc16 = round_up(qc, 16);
        const i64 sk = s.r.seqlen_k, hk = t.h / group, bh = t.b * p.heads_q + t.h, skp = kidx.rows(t.b);
        const u16 *kt = kt_all + kidx.off(t.b, hk), *kn = kn_all + kidx.off(t.b, hk);
        const u16* vt = vt_all + kidx.off(t.b, hk);
        copy_rows_bf16(amx, a.q, s, s.r.q_start + i0, qc, qc16, t.h, Q, dp);
        copy_rows_bf16(amx, a.dout, s, s.r.q_start + i0, qc, qc16, t.h, dO, dp);
        for (i64 i = 0; i < qc; ++i) {
          const auto idx = static_cast<std::size_t>(lse_index(p, a.q, t.b, t.h, s, i0 + i));
          lse_r[i] = lse2[idx];
          d_r[i] = Dsum[idx];
        }
        std::fill(dQ, dQ + qc16 * dp, 0.0f);

        for (i64 j0 = 0; j0 < sk; j0 += Bc) {
          const TileKind kind = vis.classify(t.b, t.h, s, i0, i0 + qc, j0, j0 + Bc);
          if (kind == TileKind::skip) continue;
          const i64 kc = std::min(Bc, sk - j0), k32 = round_up(kc, 32);
          amx.gemm(int(qc16), int(k32), int(dp), Q, int(dp), kt + (j0 / 16) * dp * 16, dp * 16, S, int(Bc), false);
          if (kind == TileKind::masked) vis.apply(t.b, t.h, s, i0, qc, j0, kc, S, Bc, false, hidden);
          amx.gemm(int(qc16), int(k32), int(dp), dO, int(dp), vt + (j0 / 16) * dp * 16, dp * 16, dP, int(Bc), false);
          if (drop.on)
            for (i64 i = 0; i < qc; ++i) drop.row(bh, i0 + i, j0, kc, Bc, drop.kept_scale, keep + i * Bc);
          GradTile gt{};
          gt.rows_valid = int(qc);
          gt.rows_pad = int(qc16);
          gt.cols_valid = int(kc);
          gt.cols = int(k32);
          gt.s = S;
          gt.dp = dP;
          gt.ld = int(Bc);
          gt.mul = q_mul;
          gt.lse_row = lse_r;
          gt.d_row = d_r;
          gt.keep = drop.on ? keep : nullptr;
          gt.keep_rs = Bc;
          gt.keep_cs = 1;
          gt.ds = dS;
          gt.ldds = int(Bc);
          amx.grad_tile(gt);
          amx.gemm(int(qc16), int(dp), int(k32), dS, int(Bc), kn + (j0 / 2) * 32, skp * 16, dQ, int(dp), true);
        }
        store_rows_bf16(amx, a.dq, s, s.r.q_start + i0, qc, t.h, dQ, dp, scale_rows);
      }
      amx.release();
    }
  }
}

}  // namespace

// Which kernels the CPU flash path runs for bf16 (when bf16) or the other
// dtypes: "amx" (bf16 on the tile unit, bf16-rounded P and dS), else the
// fp32 kernel set's name.
const char* cpu_flash_kernel_isa(bool bf16) { return bf16 && amx_kernels() ? "amx" : kernels().isa; }

// The AMX path's tile kernels (flash_kernels_amx.cpp) do not implement
// the NaN rule (masked keys never contribute) nor the backward's
// recomputation of large-logit rows; calls that need either run on the
// fp32 kernels instead. The checks are O(N d) against the O(N^2 d) of the
// call: whether any bf16 element the call reads is NaN or inf, and
// whether any LSE is NaN or large.
bool bf16_all_finite(const Problem& p, const Tensor& t, bool key_side, i64 heads, int nthreads) {
  const i64 n = p.batch * heads;
  int bad = 0;
#pragma omp parallel for num_threads(nthreads) schedule(static) reduction(| : bad)
  for (i64 bh = 0; bh < n; ++bh) {
    const i64 b = bh / heads, h = bh % heads;
    const Seq s = sequence(p, b);
    const i64 start = key_side ? s.r.k_start : s.r.q_start, len = key_side ? s.r.seqlen_k : s.r.seqlen_q;
    for (i64 r = 0; r < len && !bad; ++r) {
      const auto* row = static_cast<const u16*>(t.data) + offset_of(t, s.tb, start + r, h);
      unsigned acc = 0;
      for (i64 c = 0; c < t.head_dim; ++c) acc |= (row[c] & 0x7f80u) == 0x7f80u;
      bad |= static_cast<int>(acc);
    }
  }
  return !bad;
}

bool amx_forward_ok(const Problem& p, const ForwardArgs& a, int nthreads) {
  return bf16_all_finite(p, a.q, false, p.heads_q, nthreads) && bf16_all_finite(p, a.k, true, p.heads_k, nthreads) &&
         bf16_all_finite(p, a.v, true, p.heads_k, nthreads);
}

bool amx_backward_ok(const Problem& p, const BackwardArgs& a, int nthreads) {
  for (i64 b = 0; b < p.batch; ++b) {  // only rows of a sequence: the others may hold anything
    const Seq s = sequence(p, b);
    for (i64 h = 0; h < p.heads_q; ++h)
      for (i64 i = 0; i < s.r.seqlen_q; ++i) {
        const float l = a.lse[lse_index(p, a.q, b, h, s, i)];
        if (l != l || (l != -kInf && std::abs(l * kLog2e) >= kRecomputeLse2)) return false;
      }
  }
  return bf16_all_finite(p, a.q, false, p.heads_q, nthreads) && bf16_all_finite(p, a.k, true, p.heads_k, nthreads) &&
         bf16_all_finite(p, a.v, true, p.heads_k, nthreads) &&
         bf16_all_finite(p, a.dout, false, p.heads_q, nthreads);
}

// ---------------------------------------------------------- forward ---

void cpu_flash_forward(const Problem& p, const ForwardArgs& a, const Context& ctx) {
  const Kernels& kern = kernels();
  if (p.dtype == DType::bf16)
    if (const AmxKernels* amx = amx_kernels())
      if (amx_forward_ok(p, a, thread_count(ctx))) return forward_amx(*amx, p, a, ctx);
  const Visibility vis(p);
  const Dropout drop(p);
  const i64 d = p.head_dim, dp = round_up(d, kColPad), group = p.group();
  // A task owns Bt query rows, cut into sub-tiles of Bs rows: each K/V
  // tile is read once per task and used by all its sub-tiles, while S
  // only needs to hold one sub-tile.
  const i64 Bt = tall_tile(dp), Bs = kFwdSubRows, Bc = kFwdCols;
  const float q_mul = p.scale * kLog2e;
  const std::vector<Task> tasks = make_tasks(p, p.heads_q, Bt, false);
  const auto ntasks = static_cast<i64>(tasks.size());

  // K^T (dp x Bc, padded keys zero) and V (Bc x dp) of every key tile of
  // every (sequence, kv head), converted and laid out once per call rather
  // than once per task (a kv head's tiles serve heads_q / heads_k x
  // seqlen_q / Bt tasks: 8 at seqlen 4096), by the first task that needs
  // the tile (ready[]: 0 = not yet, 1 = being converted, 2 = done; a task
  // that finds it in progress converts its own copy rather than wait, so
  // the call keeps a single parallel region: see forward_amx).
  std::vector<i64> tile_base(static_cast<std::size_t>(p.batch) + 1, 0);
  for (i64 b = 0; b < p.batch; ++b)
    tile_base[static_cast<std::size_t>(b) + 1] =
        tile_base[static_cast<std::size_t>(b)] + p.heads_k * ((sequence(p, b).r.seqlen_k + Bc - 1) / Bc);
  const i64 ntiles = tile_base.back(), tile_elems = dp * Bc;
  auto* kt_all = static_cast<float*>(scratch(0, std::max<i64>(ntiles, 1) * tile_elems * 4));
  auto* v_all = static_cast<float*>(scratch(1, std::max<i64>(ntiles, 1) * tile_elems * 4));
  const std::unique_ptr<std::atomic<std::uint8_t>[]> ready(
      new std::atomic<std::uint8_t>[static_cast<std::size_t>(std::max<i64>(ntiles, 1))]);
  for (i64 i = 0; i < ntiles; ++i) ready[static_cast<std::size_t>(i)].store(0, std::memory_order_relaxed);
  // Whether a V tile holds a NaN or an inf, set with the tile (before it
  // is published as ready).
  std::vector<std::uint8_t> v_bad(static_cast<std::size_t>(std::max<i64>(ntiles, 1)), 0);

#pragma omp parallel num_threads(thread_count(ctx))
  {
    const Buffer q_buf(Bt * dp), s_buf(Bs * Bc), o_buf(Bt * dp), keep_buf(Bs * Bc), kt_buf(dp * Bc), kv_buf(Bc * dp);
    float *Q = q_buf.get(), *S = s_buf.get(), *O = o_buf.get(), *Kt_local = kt_buf.get(), *KV_local = kv_buf.get();
    float* keep = keep_buf.get();
    std::vector<float> m_buf(static_cast<std::size_t>(Bt)), l_buf(static_cast<std::size_t>(Bt));
    // Only for masked tiles with a non-finite V (gemm_guarded).
    std::vector<float> v_clean;
    std::vector<std::uint8_t> vis_buf;
    std::vector<i64> bad_rows;

#pragma omp for schedule(dynamic)
    for (i64 ti = 0; ti < ntasks; ++ti) {
      const Task& t = tasks[static_cast<std::size_t>(ti)];
      const Seq s = sequence(p, t.b);
      const i64 t0 = t.tile * Bt, tc = std::min(Bt, s.r.seqlen_q - t0), sk = s.r.seqlen_k;
      const i64 hk = t.h / group, bh = t.b * p.heads_q + t.h;
      load_tile(a.q, s, s.r.q_start + t0, tc, t.h, q_mul * p.descale(p.q_descale, t.b, hk), Q, dp);
      std::fill(O, O + tc * dp, 0.0f);
      std::fill(m_buf.begin(), m_buf.end(), -kInf);
      std::fill(l_buf.begin(), l_buf.end(), 0.0f);

      for (i64 j0 = 0; j0 < sk; j0 += Bc) {
        if (vis.classify(t.b, t.h, s, t0, t0 + tc, j0, j0 + Bc) == TileKind::skip) continue;
        const i64 kc = std::min(Bc, sk - j0);
        const i64 ti = tile_base[static_cast<std::size_t>(t.b)] + hk * ((sk + Bc - 1) / Bc) + j0 / Bc;
        float* Kt = kt_all + ti * tile_elems;
        float* KV = v_all + ti * tile_elems;
        std::atomic<std::uint8_t>& state = ready[static_cast<std::size_t>(ti)];
        bool vbad = false;
        if (state.load(std::memory_order_acquire) != 2) {
          std::uint8_t expected = 0;
          const bool mine = state.compare_exchange_strong(expected, 1, std::memory_order_acq_rel);
          if (mine || expected != 2) {
            if (!mine) {
              Kt = Kt_local;
              KV = KV_local;
            }
            load_tile(a.k, s, s.r.k_start + j0, kc, hk, p.descale(p.k_descale, t.b, hk), KV, dp);
            transpose_tile(KV, kc, d, dp, 1.0f, Kt, Bc);
            load_tile(a.v, s, s.r.k_start + j0, kc, hk, p.descale(p.v_descale, t.b, hk), KV, dp);
            vbad = any_nonfinite(KV, kc, d, dp);
            if (mine) {
              v_bad[static_cast<std::size_t>(ti)] = vbad;
              state.store(2, std::memory_order_release);
            }
          } else {
            vbad = v_bad[static_cast<std::size_t>(ti)];
          }
        } else {
          vbad = v_bad[static_cast<std::size_t>(ti)];
        }

        for (i64 r0 = 0; r0 < tc; r0 += Bs) {
          const i64 i0 = t0 + r0, qc = std::min(Bs, tc - r0);
          const TileKind kind = vis.classify(t.b, t.h, s, i0, i0 + qc, j0, j0 + Bc);
          if (kind == TileKind::skip) continue;
          float *Qs = Q + r0 * dp, *Os = O + r0 * dp, *m = m_buf.data() + r0, *l = l_buf.data() + r0;
          kern.gemm(int(qc), int(Bc), int(d), Qs, int(dp), false, Kt, int(Bc), S, int(Bc), false);
          if (kc < Bc)
            for (i64 i = 0; i < qc; ++i) std::fill(S + i * Bc + kc, S + (i + 1) * Bc, -kInf);
          if (kind == TileKind::masked) vis.apply(t.b, t.h, s, i0, qc, j0, kc, S, Bc);

          if (drop.on)  // l sums the un-dropped probabilities; 1/(1-p) is applied with 1/l.
            for (i64 i = 0; i < qc; ++i) drop.row(bh, i0 + i, j0, kc, Bc, 1.0f, keep + i * Bc);
          kern.softmax_rows(int(qc), int(Bc), S, int(Bc), m, l, Os, int(dp), int(dp), drop.on ? keep : nullptr,
                            int(Bc));
          if (kind == TileKind::masked && vbad) {
            nonfinite_rows(KV, kc, d, dp, bad_rows);
            v_clean.resize(static_cast<std::size_t>(Bc * dp));
            vis_buf.resize(static_cast<std::size_t>(Bs * Bc));
            vis.mask(t.b, t.h, s, i0, qc, j0, kc, vis_buf.data(), Bc);
            gemm_guarded(kern, qc, dp, kc, S, Bc, false, KV, dp, Os, dp, bad_rows, v_clean.data(), vis_buf.data(),
                         Bc, 1);
          } else {
            kern.gemm(int(qc), int(dp), int(kc), S, int(Bc), false, KV, int(dp), Os, int(dp), true);
          }
        }
      }

      for (i64 i = 0; i < tc; ++i) {
        const float l = l_buf[static_cast<std::size_t>(i)], m = m_buf[static_cast<std::size_t>(i)];
        // Empty rows (nothing visible, or every visible score -inf) give
        // 0, times 0 so that a NaN / inf value they attend to (0 x NaN)
        // still shows; a NaN row has l = NaN and stays NaN.
        const bool empty = l == 0.0f;
        const float mul = empty ? 0.0f : drop.kept_scale / l;
        store_row(a.o, offset_of(a.o, s.tb, s.r.q_start + t0 + i, t.h), O + i * dp, mul);
        if (a.lse) a.lse[lse_index(p, a.q, t.b, t.h, s, t0 + i)] = empty ? -kInf : (m + std::log2(l)) * kLn2;
      }
    }
  }
}

// --------------------------------------------------------- backward ---

void cpu_flash_backward(const Problem& p, const BackwardArgs& a, const Context& ctx) {
  const Kernels& kern = kernels();
  const Visibility vis(p);
  const Dropout drop(p);
  const i64 d = p.head_dim, dp = round_up(d, kColPad), group = p.group();
  const float q_mul = p.scale * kLog2e;
  const int nthreads = thread_count(ctx);

  // Pass 0: per query row, the LSE in the log2 domain (+inf for empty rows,
  // so that 2^(S - lse) is 0 there rather than NaN) and D = rowsum(dO * O).
  const i64 nrows = p.is_varlen() ? p.heads_q * a.q.seqlen : p.batch * p.heads_q * p.seqlen_q;
  std::vector<float> lse2(static_cast<std::size_t>(nrows), kInf), Dsum(static_cast<std::size_t>(nrows), 0.0f);
  if (p.dtype == DType::bf16)  // the AMX path runs pass 0 itself, merged with its packing of Q and dO
    if (const AmxKernels* amx = amx_kernels())
      if (amx_backward_ok(p, a, nthreads))
        return backward_amx(*amx, p, a, ctx, lse2, Dsum,
                            p.batch * p.heads_k >= 4 * static_cast<i64>(omp_get_num_procs()));
  // pmul: 1, or 1 / l for the rows recompute_row_stats handles.
  std::vector<float> pmul(static_cast<std::size_t>(nrows), 1.0f);
  {
    const i64 nbh = p.batch * p.heads_q;
#pragma omp parallel num_threads(nthreads)
    {
      std::vector<float> o_row(static_cast<std::size_t>(d)), do_row(static_cast<std::size_t>(d)), stats_buf;
      std::vector<std::uint8_t> need;
#pragma omp for schedule(dynamic)
      for (i64 bh = 0; bh < nbh; ++bh) {
        const i64 b = bh / p.heads_q, h = bh % p.heads_q;
        backward_pass0_head(p, a, b, h, lse2.data(), Dsum.data(), o_row.data(), do_row.data());
        const Seq s = sequence(p, b);
        for (i64 i0 = 0; i0 < s.r.seqlen_q; i0 += kFwdSubRows) {
          const i64 qc = std::min(kFwdSubRows, s.r.seqlen_q - i0);
          need.assign(static_cast<std::size_t>(qc), 0);
          bool any = false;
          for (i64 i = 0; i < qc; ++i) {
            const float l2 = lse2[static_cast<std::size_t>(lse_index(p, a.q, b, h, s, i0 + i))];
            need[static_cast<std::size_t>(i)] = std::abs(l2) >= kRecomputeLse2 && std::isfinite(l2);
            any |= need[static_cast<std::size_t>(i)] != 0;
          }
          if (any)
            recompute_row_stats(kern, p, vis, a, b, h, i0, qc, need.data(), lse2.data(), pmul.data(), stats_buf);
        }
      }
    }
  }

  // Pass 1: dK, dV (and dQ when fused). S and dP are computed as (query x
  // key) tiles, and the gemm reads them transposed for dV += Pdrop^T dO and
  // dK += dS^T Q, so no tile is ever transposed in memory inside the query
  // loop.
  //
  // Fused mode: one task per (sequence, kv head) walks all key tiles and
  // also accumulates dQ += dS K for its query heads into an fp32 buffer it
  // owns, which saves pass 2's recomputation of S and dP (14 -> 10 GEMM
  // units) but offers only batch * heads_k tasks. It is chosen when those
  // are plenty for the processors present; the choice never depends on
  // ctx.num_threads, and within a mode every sum runs in a fixed order, so
  // results stay bitwise identical across thread counts.
  const bool fused = p.batch * p.heads_k >= 4 * static_cast<i64>(omp_get_num_procs());
  {
    const i64 Bk = dkv_key_tile(p, dp), Bq = kDkvRows;
    std::vector<Task> tasks;
    if (fused) {
      // Every (sequence, kv head), even without keys: the task writes dQ.
      for (i64 b = 0; b < p.batch; ++b)
        for (i64 hk = 0; hk < p.heads_k; ++hk) tasks.push_back(Task{b, hk, 0});
    } else {
      tasks = make_tasks(p, p.heads_k, Bk, true);
    }
    const auto ntasks = static_cast<i64>(tasks.size());
#pragma omp parallel num_threads(nthreads)
    {
      const Buffer k_buf(Bk * dp), tmp_buf(Bk * dp), kt_buf(dp * Bk), vt_buf(dp * Bk), q_buf(Bq * dp),
          do_buf(Bq * dp), s_buf(Bq * Bk), dp_buf(Bq * Bk), dk_buf(Bk * dp), dv_buf(Bk * dp), keep_buf(Bq * Bk);
      float *K = k_buf.get(), *tmp = tmp_buf.get(), *Kt = kt_buf.get(), *Vt = vt_buf.get(), *Q = q_buf.get();
      float *dO = do_buf.get(), *S = s_buf.get(), *dP = dp_buf.get(), *dK = dk_buf.get(), *dV = dv_buf.get();
      float* keep = keep_buf.get();
      std::vector<float> dq_acc;  // fused: [query head of the group][row][dp]
      // Fused: Q and dO of the task's query heads, converted once per task
      // ([head of the group][row][dp]) instead of once per key tile (16
      // times at seqlen 4096 with 256-key tiles).
      std::vector<float> q_all, do_all;
      // Only for masked tiles whose Q, dO or K rows hold a NaN or an inf
      // (gemm_guarded).
      std::vector<float> clean;
      std::vector<std::uint8_t> vis_buf;
      std::vector<i64> bad_q, bad_do, bad_k;

#pragma omp for schedule(dynamic)
      for (i64 ti = 0; ti < ntasks; ++ti) {
        const Task& t = tasks[static_cast<std::size_t>(ti)];
        const Seq s = sequence(p, t.b);
        const i64 sq = s.r.seqlen_q, sk = s.r.seqlen_k;
        const i64 kt_begin = fused ? 0 : t.tile, kt_end = fused ? (sk + Bk - 1) / Bk : t.tile + 1;
        if (fused) {
          dq_acc.assign(static_cast<std::size_t>(group * sq * dp), 0.0f);
          q_all.resize(static_cast<std::size_t>(group * sq * dp));
          do_all.resize(static_cast<std::size_t>(group * sq * dp));
          for (i64 g = 0; g < group; ++g) {
            load_tile(a.q, s, s.r.q_start, sq, t.h * group + g, q_mul, q_all.data() + g * sq * dp, dp);
            load_tile(a.dout, s, s.r.q_start, sq, t.h * group + g, 1.0f, do_all.data() + g * sq * dp, dp);
          }
        }

        for (i64 kt = kt_begin; kt < kt_end; ++kt) {
          const i64 j0 = kt * Bk, kc = std::min(Bk, sk - j0);
          // S exactly as the forward computes it (Q scaled on load, K
          // not): recompute_row_stats relies on the same bits.
          load_tile(a.k, s, s.r.k_start + j0, kc, t.h, 1.0f, K, dp);
          transpose_tile(K, kc, d, dp, 1.0f, Kt, Bk);
          load_tile(a.v, s, s.r.k_start + j0, kc, t.h, 1.0f, tmp, dp);
          transpose_tile(tmp, kc, d, dp, 1.0f, Vt, Bk);
          const bool k_bad = fused && any_nonfinite(K, kc, d, dp);
          std::fill(dK, dK + kc * dp, 0.0f);
          std::fill(dV, dV + kc * dp, 0.0f);

          for (i64 g = 0; g < group; ++g) {
            const i64 h = t.h * group + g, bh = t.b * p.heads_q + h;
            for (i64 i0 = 0; i0 < sq; i0 += Bq) {
              const TileKind kind = vis.classify(t.b, h, s, i0, i0 + Bq, j0, j0 + kc);
              if (kind == TileKind::skip) continue;
              const i64 qc = std::min(Bq, sq - i0);
              const float *Qt = Q, *dOt = dO;
              if (fused) {
                Qt = q_all.data() + (g * sq + i0) * dp;
                dOt = do_all.data() + (g * sq + i0) * dp;
              } else {
                load_tile(a.q, s, s.r.q_start + i0, qc, h, q_mul, Q, dp);
                load_tile(a.dout, s, s.r.q_start + i0, qc, h, 1.0f, dO, dp);
                if (i0 + Bq < sq) {
                  const i64 next = std::min(Bq, sq - i0 - Bq);
                  prefetch_tile(a.q, s, s.r.q_start + i0 + Bq, next, h);
                  prefetch_tile(a.dout, s, s.r.q_start + i0 + Bq, next, h);
                }
              }
              kern.gemm(int(qc), int(Bk), int(d), Qt, int(dp), false, Kt, int(Bk), S, int(Bk), false);
              if (kind == TileKind::masked) vis.apply(t.b, h, s, i0, qc, j0, kc, S, Bk);
              kern.gemm(int(qc), int(Bk), int(d), dOt, int(dp), false, Vt, int(Bk), dP, int(Bk), false);
              if (drop.on)
                for (i64 i = 0; i < qc; ++i) drop.row(bh, i0 + i, j0, kc, Bk, drop.kept_scale, keep + i * Bk);
              {
                // The tile's rows are consecutive entries of the LSE and D arrays.
                const auto idx = static_cast<std::size_t>(lse_index(p, a.q, t.b, h, s, i0));
                kern.grad_rows(int(qc), int(Bk), S, dP, int(Bk), lse2.data() + idx, pmul.data() + idx,
                               Dsum.data() + idx, drop.on ? keep : nullptr, int(Bk));
              }
              float* dq_tile = fused ? dq_acc.data() + (g * sq + i0) * dp : nullptr;
              const bool guard = kind == TileKind::masked &&
                                 (k_bad || any_nonfinite(Qt, qc, d, dp) || any_nonfinite(dOt, qc, d, dp));
              if (!guard) {
                kern.gemm(int(kc), int(dp), int(qc), S, int(Bk), true, dOt, int(dp), dV, int(dp), true);
                kern.gemm(int(kc), int(dp), int(qc), dP, int(Bk), true, Qt, int(dp), dK, int(dp), true);
                if (fused) kern.gemm(int(qc), int(dp), int(kc), dP, int(Bk), false, K, int(dp), dq_tile, int(dp), true);
              } else {
                // vis_buf[i * Bk + j]: query row i sees key j. dV and dK
                // have keys for rows (r = j, p = i); dQ queries (r = i, p = j).
                vis_buf.resize(static_cast<std::size_t>(Bq * Bk));
                vis.mask(t.b, h, s, i0, qc, j0, kc, vis_buf.data(), Bk);
                clean.resize(static_cast<std::size_t>(std::max(Bq, Bk) * dp));
                nonfinite_rows(dOt, qc, d, dp, bad_do);
                nonfinite_rows(Qt, qc, d, dp, bad_q);
                gemm_guarded(kern, kc, dp, qc, S, Bk, true, dOt, dp, dV, dp, bad_do, clean.data(), vis_buf.data(), 1,
                             Bk);
                gemm_guarded(kern, kc, dp, qc, dP, Bk, true, Qt, dp, dK, dp, bad_q, clean.data(), vis_buf.data(), 1,
                             Bk);
                if (fused) {
                  nonfinite_rows(K, kc, d, dp, bad_k);
                  gemm_guarded(kern, qc, dp, kc, dP, Bk, false, K, dp, dq_tile, dp, bad_k, clean.data(),
                               vis_buf.data(), Bk, 1);
                }
              }
            }
          }
          for (i64 j = 0; j < kc; ++j) {
            // dK = scale dS^T Q, computed from Q scaled by scale * log2(e).
            store_row(a.dk, offset_of(a.dk, s.tb, s.r.k_start + j0 + j, t.h), dK + j * dp, kLn2);
            store_row(a.dv, offset_of(a.dv, s.tb, s.r.k_start + j0 + j, t.h), dV + j * dp, 1.0f);
          }
        }
        if (fused)
          for (i64 g = 0; g < group; ++g)
            for (i64 i = 0; i < sq; ++i)
              store_row(a.dq, offset_of(a.dq, s.tb, s.r.q_start + i, t.h * group + g),
                        dq_acc.data() + (g * sq + i) * dp, p.scale);
      }
    }
  }
  if (fused) return;

  // Pass 2: dQ = scale * dS K, recomputing S and dP per (query tile, key tile).
  {
    const i64 Br = tall_tile(dp), Bc = kDqCols;
    const std::vector<Task> tasks = make_tasks(p, p.heads_q, Br, false);
    const auto ntasks = static_cast<i64>(tasks.size());
#pragma omp parallel num_threads(nthreads)
    {
      const Buffer q_buf(Br * dp), do_buf(Br * dp), k_buf(Bc * dp), kt_buf(dp * Bc), tmp_buf(Bc * dp),
          vt_buf(dp * Bc), s_buf(Br * Bc), dp_buf(Br * Bc), dq_buf(Br * dp), keep_buf(Br * Bc);
      float *Q = q_buf.get(), *dO = do_buf.get(), *K = k_buf.get(), *Kt = kt_buf.get(), *tmp = tmp_buf.get();
      float *Vt = vt_buf.get(), *S = s_buf.get(), *dP = dp_buf.get(), *dQ = dq_buf.get(), *keep = keep_buf.get();
      std::vector<float> clean;  // gemm_guarded, for masked tiles with non-finite K rows
      std::vector<std::uint8_t> vis_buf;
      std::vector<i64> bad_k;

#pragma omp for schedule(dynamic)
      for (i64 ti = 0; ti < ntasks; ++ti) {
        const Task& t = tasks[static_cast<std::size_t>(ti)];
        const Seq s = sequence(p, t.b);
        const i64 i0 = t.tile * Br, qc = std::min(Br, s.r.seqlen_q - i0), sk = s.r.seqlen_k;
        const i64 hk = t.h / group, bh = t.b * p.heads_q + t.h;
        load_tile(a.q, s, s.r.q_start + i0, qc, t.h, q_mul, Q, dp);
        load_tile(a.dout, s, s.r.q_start + i0, qc, t.h, 1.0f, dO, dp);
        std::fill(dQ, dQ + qc * dp, 0.0f);

        for (i64 j0 = 0; j0 < sk; j0 += Bc) {
          const TileKind kind = vis.classify(t.b, t.h, s, i0, i0 + qc, j0, j0 + Bc);
          if (kind == TileKind::skip) continue;
          const i64 kc = std::min(Bc, sk - j0);
          load_tile(a.k, s, s.r.k_start + j0, kc, hk, 1.0f, K, dp);
          transpose_tile(K, kc, d, dp, 1.0f, Kt, Bc);
          load_tile(a.v, s, s.r.k_start + j0, kc, hk, 1.0f, tmp, dp);
          transpose_tile(tmp, kc, d, dp, 1.0f, Vt, Bc);
          if (j0 + Bc < sk) {
            const i64 next = std::min(Bc, sk - j0 - Bc);
            prefetch_tile(a.k, s, s.r.k_start + j0 + Bc, next, hk);
            prefetch_tile(a.v, s, s.r.k_start + j0 + Bc, next, hk);
          }
          kern.gemm(int(qc), int(Bc), int(d), Q, int(dp), false, Kt, int(Bc), S, int(Bc), false);
          if (kind == TileKind::masked) vis.apply(t.b, t.h, s, i0, qc, j0, kc, S, Bc);
          kern.gemm(int(qc), int(Bc), int(d), dO, int(dp), false, Vt, int(Bc), dP, int(Bc), false);
          if (drop.on)
            for (i64 i = 0; i < qc; ++i) drop.row(bh, i0 + i, j0, kc, Bc, drop.kept_scale, keep + i * Bc);
          {
            const auto idx = static_cast<std::size_t>(lse_index(p, a.q, t.b, t.h, s, i0));
            kern.grad_rows(int(qc), int(Bc), S, dP, int(Bc), lse2.data() + idx, pmul.data() + idx,
                           Dsum.data() + idx, drop.on ? keep : nullptr, int(Bc));
          }
          if (kind == TileKind::masked && any_nonfinite(K, kc, d, dp)) {
            vis_buf.resize(static_cast<std::size_t>(Br * Bc));
            vis.mask(t.b, t.h, s, i0, qc, j0, kc, vis_buf.data(), Bc);
            clean.resize(static_cast<std::size_t>(Bc * dp));
            nonfinite_rows(K, kc, d, dp, bad_k);
            gemm_guarded(kern, qc, dp, kc, dP, Bc, false, K, dp, dQ, dp, bad_k, clean.data(), vis_buf.data(), Bc, 1);
          } else {
            kern.gemm(int(qc), int(dp), int(kc), dP, int(Bc), false, K, int(dp), dQ, int(dp), true);
          }
        }
        for (i64 i = 0; i < qc; ++i)
          store_row(a.dq, offset_of(a.dq, s.tb, s.r.q_start + i0 + i, t.h), dQ + i * dp, p.scale);
      }
    }
  }
}

}  // namespace flashattn::detail
