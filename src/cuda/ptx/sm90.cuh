// The PTX instructions of the Hopper (sm_90a) path, in one place: mbarrier
// (transaction-counting barriers in shared memory that the copy engine
// completes), TMA bulk tensor copies (cp.async.bulk.tensor: one thread moves
// a whole tile, global -> shared, with the 128-byte swizzle applied on the
// way), wgmma (warpgroup-wide asynchronous tensor-core matmuls reading their
// operands from shared memory through descriptors), the proxy fence and
// setmaxnreg. Plus the host side of TMA: the CUtensorMap, encoded through
// the driver entry point (the library links cudart only, never libcuda).
//
// The instructions below exist only in sm_90a device code; every device
// function compiles to nothing useful elsewhere, and the kernels that call
// them guard their bodies with FA_SM90_DEVICE.
#pragma once

#include <cuda.h>  // CUtensorMap and its enums: types only, no libcuda symbol is used
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <type_traits>

#include "flashattn/flashattn.h"

// True in the device pass that targets sm_90a (wgmma and setmaxnreg exist
// only with the "a" feature set; the sm_80 pass and plain sm_90 must not see
// them).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FA_SM90_DEVICE 1
#else
#define FA_SM90_DEVICE 0
#endif

namespace flashattn::detail::ptx::sm90 {

__device__ __forceinline__ std::uint32_t smem_u32(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

// ------------------------------------------------------------ mbarrier ---
// A 64-bit shared-memory object with a phase bit: a phase completes when the
// expected number of arrivals has happened AND the transaction count (bytes
// the copy engine announced with expect_tx) has drained to zero. Waiters
// name the parity of the phase they wait for, so one barrier serves every
// round of a ring buffer without being re-initialised.

__device__ __forceinline__ void mbar_init(std::uint32_t bar, std::uint32_t arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(arrivals) : "memory");
}

// Makes the initialised barriers visible to the async proxy (the copy
// engine signals them) before any thread issues a copy on them.
__device__ __forceinline__ void fence_mbar_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

// One arrival that also announces `bytes` of incoming copies: the phase
// cannot complete before the copy engine has written them all.
__device__ __forceinline__ void mbar_arrive_expect_tx(std::uint32_t bar, std::uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}

// Announces `bytes` of incoming copies WITHOUT arriving: for a barrier
// whose arrivals come from other work of the same threads (the backward's
// Q barrier counts the 32 lanes that also store LSE rows, and the lane that
// issues the copy arrives only after its own stores). The transaction count
// may go negative while the copy runs ahead of this announcement; the phase
// still cannot complete before the last arrival.
__device__ __forceinline__ void mbar_expect_tx(std::uint32_t bar, std::uint32_t bytes) {
  asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}

// A plain arrival; release semantics (the default .release.cta), so this
// thread's earlier shared-memory stores are visible to whoever acquires the
// completed phase with mbar_wait.
__device__ __forceinline__ void mbar_arrive(std::uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}

// Spins until the phase of the given parity has completed. try_wait (not
// test_wait) lets the hardware suspend the thread for a while inside the
// instruction instead of burning issue slots. Acquire semantics (the
// default) make the copied bytes visible to the waiting thread.
__device__ __forceinline__ void mbar_wait(std::uint32_t bar, std::uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "FA_MBAR_WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra FA_MBAR_WAIT;\n"
      "}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}

// ----------------------------------------------------------------- TMA ---
// One thread asks the copy engine for a box of a tensor described by a
// CUtensorMap (in kernel-parameter space, hence __grid_constant__); the
// engine writes it to shared memory (swizzled as the map says), fills
// out-of-bounds elements with zeros, and counts the bytes on the mbarrier.
// Coordinates are element indices, innermost first.

__device__ __forceinline__ void tma_load_3d(std::uint32_t dst, const CUtensorMap* map, std::uint32_t bar, int c0,
                                            int c1, int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];\n" ::
          "r"(dst),
      "l"(reinterpret_cast<std::uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
      : "memory");
}

__device__ __forceinline__ void tma_load_4d(std::uint32_t dst, const CUtensorMap* map, std::uint32_t bar, int c0,
                                            int c1, int c2, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], "
      "[%6];\n" ::"r"(dst),
      "l"(reinterpret_cast<std::uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
      : "memory");
}

// The other direction: a box of shared memory (laid out as the map's
// swizzle says) to the tensor, rows and columns outside its extents
// dropped. Asynchronous: the source may be overwritten only after
// bulk_wait_read; copies join the thread's bulk group at bulk_commit. A
// thread that wrote the box with ordinary stores fences them first
// (fence_proxy_async_smem) and the issuing thread is ordered after them.
__device__ __forceinline__ void tma_store_4d(const CUtensorMap* map, std::uint32_t src, int c0, int c1, int c2,
                                             int c3) {
  asm volatile("cp.async.bulk.tensor.4d.global.shared::cta.bulk_group [%0, {%2, %3, %4, %5}], [%1];\n" ::"l"(
                   reinterpret_cast<std::uint64_t>(map)),
               "r"(src), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
               : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
// Until at most kPending of this thread's bulk groups still read shared memory.
template <int kPending>
__device__ __forceinline__ void bulk_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(kPending) : "memory");
}
// Until every bulk group of this thread has completed (its writes performed).
__device__ __forceinline__ void bulk_wait_all() { asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory"); }

// Pulls the 128-byte descriptor into the TMA unit's cache ahead of the
// first copy, so the first tile does not also pay for the descriptor fetch.
__device__ __forceinline__ void tma_prefetch_map(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<std::uint64_t>(map)) : "memory");
}

// Ordinary stores to shared memory that the async proxy (TMA, wgmma) reads
// next are not ordered by a barrier alone: each writing thread fences first.
__device__ __forceinline__ void fence_proxy_async_smem() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// Orders this thread's completed bulk copies to global memory (async
// proxy) before its later ordinary accesses there and, through a barrier,
// other threads'.
__device__ __forceinline__ void fence_proxy_async_global() {
  asm volatile("fence.proxy.async.global;\n" ::: "memory");
}

// ----------------------------------------------------- named barriers ---
// bar.sync over a subset of the CTA (one warpgroup): id 0 is __syncthreads'.
// The id is an immediate so that ptxas reserves only the barriers used.
template <int kId>
__device__ __forceinline__ void named_barrier_sync(int threads) {
  static_assert(kId > 0 && kId < 16, "hardware barriers 1..15 (0 is __syncthreads)");
  asm volatile("bar.sync %0, %1;\n" ::"n"(kId), "r"(threads) : "memory");
}

// bar.arrive: counts this warp's threads towards barrier kId without
// waiting (the producer side of a turn handed between warpgroups; the other
// side waits with named_barrier_sync<kId> over the same thread count).
template <int kId>
__device__ __forceinline__ void named_barrier_arrive(int threads) {
  static_assert(kId > 0 && kId < 16, "hardware barriers 1..15 (0 is __syncthreads)");
  asm volatile("bar.arrive %0, %1;\n" ::"n"(kId), "r"(threads) : "memory");
}

// ------------------------------------------------- global reductions ---
// The reducing form of tma_store_4d: the tensor's elements under the box
// += the box's (the element type and swizzle the map's), by the TMA unit in
// L2, whole lines where a thread's red.global is one 32-byte sector.
// Asynchronous and ordered as tma_store_4d (bulk_commit, bulk_wait_read).
__device__ __forceinline__ void tma_reduce_add_4d(const CUtensorMap* map, std::uint32_t src, int c0, int c1, int c2,
                                                  int c3) {
  asm volatile("cp.reduce.async.bulk.tensor.4d.global.shared::cta.add.tile.bulk_group [%0, {%2, %3, %4, %5}], [%1];\n" ::"l"(
                   reinterpret_cast<std::uint64_t>(map)),
               "r"(src), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
               : "memory");
}

// ----------------------------------------------------------- setmaxnreg ---
// Moves registers between warpgroups at run time: the producer, which only
// issues copies, gives most of its share back so the consumer warpgroups
// (accumulators of O and S) can grow past the launch-time cap of
// 65536 / threads. Takes effect only when the kernel has a cap at entry
// (__launch_bounds__(threads, 1)); the count must be a multiple of 8.
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_dec() {
  static_assert(kRegs % 8 == 0 && kRegs >= 24 && kRegs <= 256, "setmaxnreg range");
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_inc() {
  static_assert(kRegs % 8 == 0 && kRegs >= 24 && kRegs <= 256, "setmaxnreg range");
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

// --------------------------------------------------------------- wgmma ---
// wgmma.mma_async: a warpgroup (4 consecutive warps, the first a multiple
// of 4) computes D(64 x N) += A(64 x 16) B(16 x N). It is asynchronous: the
// accumulator registers must not be touched between issue and the matching
// wait_group, and registers written by ordinary instructions before the
// first wgmma of a batch must be fenced (wgmma.fence).
//
// Accumulator layout (fp32, m64nN): warp w of the warpgroup owns rows
// 16w..16w+15; d[4t + c] of lane l is row 16w + l/4 + 8 (c >> 1), column
// 8t + 2 (l % 4) + (c & 1) -- the mma.m16n8 C layout repeated over N / 8
// column tiles. A from registers (RS) uses the mma.m16n8k16 A layout:
// a[0] rows l/4, k 2(l%4)..+1; a[1] rows l/4 + 8; a[2], a[3] the same at
// k + 8. So two adjacent 8-column accumulator tiles, packed to 16 bits, are
// exactly one k16 A fragment: P never leaves registers.

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}

// The compiler sees a wgmma's accumulators as written when the asm
// statement issues, not when wait_group returns; this empty volatile asm
// "rewrites" a register after the wait so no read of it is scheduled above
// the wait, and no write below the issue.
__device__ __forceinline__ void fence_operand(float& r) { asm volatile("" : "+f"(r)::"memory"); }
__device__ __forceinline__ void fence_operand(std::uint32_t& r) { asm volatile("" : "+r"(r)::"memory"); }
template <int kN>
__device__ __forceinline__ void fence_operands(float (&r)[kN]) {
#pragma unroll
  for (int i = 0; i < kN; ++i) fence_operand(r[i]);
}

// Shared-memory matrix descriptor (64 bits), 128-byte swizzle:
//   bits  0-13  start address >> 4
//   bits 16-29  leading-dimension byte offset (LBO) >> 4
//   bits 32-45  stride-dimension byte offset (SBO) >> 4
//   bits 49-51  base offset: 0, because every swizzle atom (8 rows of 128 B
//               = 1024 B) starts on a 1024-byte boundary
//   bits 62-63  layout: 1 = 128-byte swizzle
//
// How the fields follow from the layout TMA writes with
// CU_TENSOR_MAP_SWIZZLE_128B. A box whose inner extent is 64 16-bit
// elements (128 bytes, the most the 128B swizzle allows) lands as rows of
// 128 bytes, row r at byte 128 r, its eight 16-byte chunks permuted by
// chunk ^= (r % 8). The hardware applies the same XOR from address bits
// [4:6] ^ [7:9] when wgmma reads through a descriptor in 128B-swizzle mode,
// so both agree as long as the tile base is 1024-byte aligned.
//  - K-major operand (Q and K for S = Q K^T: each row is one query / key,
//    64 consecutive head_dim elements): one instruction reads 16 k-values
//    = 32 bytes of every row, inside one 128-byte row, so LBO (the step to
//    the next swizzle atom along K) is never used (set to 16 B, i.e. 1);
//    SBO = 1024 B, the step between groups of 8 rows (M or N). Stepping K
//    by 16 inside the 64-column chunk adds 32 B to the start address (the
//    XOR acts on the final address, so this is exact); the next 64-column
//    chunk is a separate TMA box, a whole tile further on.
//  - MN-major operand (V for O += P V: B is 16 keys x N head_dim columns,
//    N contiguous in memory; read with imm-trans-b = 1): a swizzle atom is
//    64 N-columns x 8 keys. LBO = byte step between atoms along N (one
//    64-column TMA box to the next: rows_of_tile x 128 B); SBO = 1024 B,
//    the step between groups of 8 keys. Stepping K by 16 keys adds 16 rows
//    = 2048 B to the start address. The PTX ISA's canonical form of this
//    layout (MN-major, 128B swizzle, 16-bit: ((8,8,m),(8,k)) elements with
//    strides ((1,8,LBO),(64,SBO))) gives the same roles: LBO steps the
//    64-element MN atoms, SBO the 8-row K groups. An M-major A (imm-trans-a
//    = 1, the backward's dS for dQ = dS K) follows the same rule with M in
//    place of N.
// The fields above for a swizzle mode (bits 62-63: 1 = 128-byte, 2 = 64-byte).
__device__ __forceinline__ std::uint64_t desc_swizzled(std::uint32_t smem_addr, std::uint32_t lbo_bytes,
                                                       std::uint32_t sbo_bytes, std::uint64_t layout) {
  std::uint64_t d = 0;
  d |= static_cast<std::uint64_t>((smem_addr & 0x3FFFFu) >> 4);
  d |= static_cast<std::uint64_t>((lbo_bytes & 0x3FFFFu) >> 4) << 16;
  d |= static_cast<std::uint64_t>((sbo_bytes & 0x3FFFFu) >> 4) << 32;
  d |= layout << 62;
  return d;
}
__device__ __forceinline__ std::uint64_t desc_sw128(std::uint32_t smem_addr, std::uint32_t lbo_bytes,
                                                    std::uint32_t sbo_bytes) {
  return desc_swizzled(smem_addr, lbo_bytes, sbo_bytes, 1);
}

// The same for the 64-byte swizzle (layout type 2), which TMA writes with
// CU_TENSOR_MAP_SWIZZLE_64B: rows of 64 bytes whose four 16-byte chunks are
// permuted by chunk ^= (r / 2) % 4, in atoms of 8 rows = 512 bytes (tile
// bases 512-byte aligned). Used where a K-major row has only 64 bytes: the
// FP8 forward's Q and K at head_dim 64 and its V^T tile of 64 keys. K-major
// only: SBO = 512 B between 8-row groups, a k-step of 32 bytes adds 32 B to
// the start address.
__device__ __forceinline__ std::uint64_t desc_sw64(std::uint32_t smem_addr, std::uint32_t lbo_bytes,
                                                   std::uint32_t sbo_bytes) {
  return desc_swizzled(smem_addr, lbo_bytes, sbo_bytes, 2);
}

// The descriptor of a K-major tile whose rows (one M or N index each) are
// kRowBytes long in its TMA box (128: 128-byte swizzle; 64: 64-byte), 8-row
// groups one swizzle atom apart.
template <int kRowBytes>
__device__ __forceinline__ std::uint64_t desc_k_major(std::uint32_t smem_addr) {
  static_assert(kRowBytes == 128 || kRowBytes == 64, "a K-major box row is 128 or 64 bytes");
  if constexpr (kRowBytes == 128) return desc_sw128(smem_addr, 16, 1024);
  else return desc_sw64(smem_addr, 16, 512);
}

// The descriptor of (smem_addr + bytes) from that of smem_addr, in one
// 32-bit add: the start address (address / 16) is the lowest field, and a
// shared-memory address stays below 2^18, so the add never carries out of
// its 14 bits. Built once per tile from a base address, the k-steps' 16 or
// so descriptors then cost an add each instead of the mask / shift / or of
// desc_sw128 (about 10 issue slots a wgmma, most of the loop's overhead).
__device__ __forceinline__ std::uint64_t desc_advance(std::uint64_t desc, std::uint32_t bytes) {
  const std::uint32_t lo = static_cast<std::uint32_t>(desc) + (bytes >> 4);
  return (desc & 0xFFFFFFFF00000000ull) | lo;
}

// wgmma_ss(d, desc_a, desc_b, scale_d, T{}): D (+)= A B with A (64 x 16)
// and B (16 x N) K-major in shared memory; scale_d = 0 overwrites D.
// wgmma_ss_tt(d, desc_a, desc_b, scale_d, T{}): A M-major and B N-major in
// shared memory (both transposed; N = 64 or 128).
// wgmma_ss_bt(d, desc_a, desc_b, scale_d, T{}): A K-major, B N-major in
// shared memory (N = 128 only).
// wgmma_rs_bt(d, a, desc_b, scale_d, T{}): A from registers, B N-major.
// wgmma_rs(d, a, desc_b, scale_d, T{}): A from registers, B K-major (N = 64
// only).
// wgmma_ss has N = 32 (the d = 256 backward's S^T of 32 queries), 64, 128
// and 256. N = 2 x the accumulator length; T{} (__half or __nv_bfloat16) picks the
// input type. With T = __nv_fp8_e4m3 (the FP8 forward) wgmma_ss (N = 64,
// 128) and wgmma_rs (N = 64, 128, 256) are k32 (32 one-byte k values = the
// same 32 bytes a row as a 16-bit k16 step), both operands K-major; the
// register A fragment is then 4 x 4 bytes: a[0] row l/4, k 4(l%4)..+3;
// a[1] row l/4 + 8; a[2], a[3] the same at k + 16.
#include "sm90_wgmma.inc"

// Two floats to two e4m3 codes (round to nearest even, saturating to
// +-448 as FlashAttention-3 does; NaN stays NaN), lo in the low byte.
__device__ __forceinline__ std::uint32_t pack_e4m3x2(float lo, float hi) {
  unsigned short r;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;\n" : "=h"(r) : "f"(hi), "f"(lo));
  return r;
}

// ---------------------------------------------------------------- host ---

// cuTensorMapEncodeTiled from the driver the runtime already loaded
// (cudaGetDriverEntryPointByVersion: the non-deprecated form of
// cudaGetDriverEntryPoint in CUDA 13), so the library needs no -lcuda.
inline PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
    const cudaError_t e = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q);
    if (e != cudaSuccess || q != cudaDriverEntryPointSuccess || f == nullptr)
      throw Error(std::string("cuTensorMapEncodeTiled: expected the driver entry point, got ") +
                  (e != cudaSuccess ? cudaGetErrorName(e) : "symbol not found"));
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

// The element type of a map: TMA's data type and its size in bytes.
struct TmaElem {
  CUtensorMapDataType type;
  int bytes;
};
template <class T>
constexpr TmaElem tma_elem() {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return {CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2};
  else if constexpr (std::is_same_v<T, __half>) return {CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2};
  else if constexpr (std::is_same_v<T, float>) return {CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 4};  // dQ's fp32 scratch
  else {
    static_assert(std::is_same_v<T, __nv_fp8_e4m3>, "16-bit, fp32 or e4m3 elements");
    return {CU_TENSOR_MAP_DATA_TYPE_UINT8, 1};  // e4m3 codes move as bytes
  }
}

// A 4-D map of a (batch, seqlen, heads, head_dim) view, dims innermost
// first (head_dim, seqlen, heads, batch), strides in elements. Boxes are
// box_cols head_dim columns (128 or 64 bytes: the row of the 128- or
// 64-byte swizzle the map applies) x box_rows sequence rows of one head of
// one sequence. Rows past seqlen read as zeros (the map's seqlen bound, not
// the tensor's end: the next head's or sequence's rows are never picked
// up). The FP8 forward's V^T scratch is mapped the same way, keys as the
// inner dimension.
inline CUtensorMap make_tensor_map_bshd(const void* data, TmaElem el, std::int64_t head_dim, std::int64_t seqlen,
                                        std::int64_t heads, std::int64_t batch, std::int64_t stride_seq,
                                        std::int64_t stride_head, std::int64_t stride_batch, int box_cols, int box_rows,
                                        const char* what) {
  const std::int64_t kEl = el.bytes;
  const int box_bytes = box_cols * el.bytes;
  if (box_bytes != 128 && box_bytes != 64)
    throw Error(std::string(what) + ": expected a TMA box row of 64 or 128 bytes, got " + std::to_string(box_bytes));
  // A dimension of extent 1 never moves, so its stride only has to be
  // legal (a multiple of 16 bytes): callers with one head or one sequence
  // may pass any stride there.
  auto legal = [](std::int64_t extent, std::int64_t stride_bytes) -> cuuint64_t {
    if (extent > 1) return static_cast<cuuint64_t>(stride_bytes);
    return static_cast<cuuint64_t>((stride_bytes + 15) / 16 * 16 > 0 ? (stride_bytes + 15) / 16 * 16 : 16);
  };
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(head_dim), static_cast<cuuint64_t>(seqlen > 0 ? seqlen : 1),
                              static_cast<cuuint64_t>(heads), static_cast<cuuint64_t>(batch)};
  const cuuint64_t strides[3] = {legal(seqlen, stride_seq * kEl), legal(heads, stride_head * kEl),
                                 legal(batch, stride_batch * kEl)};
  const cuuint32_t box[4] = {static_cast<cuuint32_t>(box_cols), static_cast<cuuint32_t>(box_rows), 1, 1};
  const cuuint32_t elem_strides[4] = {1, 1, 1, 1};
  CUtensorMap map;
  const CUresult r = tensor_map_encoder()(
      &map, el.type, 4, const_cast<void*>(data), dims, strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
      box_bytes == 128 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_64B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    throw Error(std::string(what) + ": expected a tensor the copy engine (TMA) can map, got CUresult " +
                std::to_string(static_cast<int>(r)));
  return map;
}

}  // namespace flashattn::detail::ptx::sm90
