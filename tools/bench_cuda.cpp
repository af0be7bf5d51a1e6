// CUDA measurements: cudaEvent timings on one stream; extra device memory =
// the workspace the call is given (sized by *_workspace_bytes) + the peak of
// stream-ordered allocations the call makes from the default memory pool +
// any cudaMalloc'd memory it still holds after returning (cudaMemGetInfo).
// Each timed call is queued behind a 1 ms host function on the stream, so
// the start event runs only after the host has enqueued the whole call: the
// events time the GPU's work, not our launch latency (the Python harness,
// benchmarks/attention_bench.py, does the same for the peers with a GPU
// busy-wait; the two measure the same thing).
// Only compiled in builds with the CUDA backend (FLASHATTN_HAS_CUDA).
#ifdef FLASHATTN_HAS_CUDA

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "bench_runners.h"
#include "bench_workload.h"

namespace bench {
namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}
#define BENCH_CUDA_CHECK(call) check((call), #call)

// Owns one cudaMalloc'd buffer.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(std::size_t bytes) {
    if (bytes) BENCH_CUDA_CHECK(cudaMalloc(&ptr_, bytes));
  }
  template <typename T>
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size() * sizeof(T)) {
    if (!host.empty()) BENCH_CUDA_CHECK(cudaMemcpy(ptr_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr_) cudaFree(ptr_);
  }
  void* get() const { return ptr_; }
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }

 private:
  void* ptr_ = nullptr;
};

class CudaProbe final : public DeviceProbe {
 public:
  explicit CudaProbe(cudaStream_t stream) : stream_(stream) {
    int device = 0;
    BENCH_CUDA_CHECK(cudaGetDevice(&device));
    BENCH_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool_, device));
    BENCH_CUDA_CHECK(cudaEventCreate(&start_));
    BENCH_CUDA_CHECK(cudaEventCreate(&stop_));
  }
  ~CudaProbe() override {
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }

  double time_ms(const std::function<void()>& call) override {
    BENCH_CUDA_CHECK(cudaLaunchHostFunc(stream_, hold_stream, nullptr));
    BENCH_CUDA_CHECK(cudaEventRecord(start_, stream_));
    call();
    BENCH_CUDA_CHECK(cudaEventRecord(stop_, stream_));
    BENCH_CUDA_CHECK(cudaEventSynchronize(stop_));
    float ms = 0;
    BENCH_CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
    return ms;
  }

  // The calls report the workspace they are handed (it is allocated once,
  // outside the watched calls, so no device counter sees it).
  static void CUDART_CB hold_stream(void*) { std::this_thread::sleep_for(std::chrono::milliseconds(1)); }

  void note_workspace(std::size_t bytes) { workspace_ = std::max(workspace_, bytes); }

  void start_memory_watch() override {
    BENCH_CUDA_CHECK(cudaDeviceSynchronize());
    // Return pooled memory to the device so that a later cudaMalloc by the
    // call shows up in cudaMemGetInfo, and restart the pool's high mark.
    BENCH_CUDA_CHECK(cudaMemPoolTrimTo(pool_, 0));
    std::uint64_t zero = 0;
    BENCH_CUDA_CHECK(cudaMemPoolSetAttribute(pool_, cudaMemPoolAttrUsedMemHigh, &zero));
    std::size_t total = 0;
    BENCH_CUDA_CHECK(cudaMemGetInfo(&free_before_, &total));
    workspace_ = 0;
  }

  double extra_bytes_since_watch() override {
    BENCH_CUDA_CHECK(cudaDeviceSynchronize());
    std::uint64_t pool_high = 0;
    BENCH_CUDA_CHECK(cudaMemPoolGetAttribute(pool_, cudaMemPoolAttrUsedMemHigh, &pool_high));
    std::size_t free_after = 0, total = 0;
    BENCH_CUDA_CHECK(cudaMemGetInfo(&free_after, &total));
    // Pool memory still reserved after the call is already in pool_high.
    std::uint64_t pool_reserved = 0;
    BENCH_CUDA_CHECK(cudaMemPoolGetAttribute(pool_, cudaMemPoolAttrReservedMemCurrent, &pool_reserved));
    const double held = static_cast<double>(free_before_) - static_cast<double>(free_after) -
                        static_cast<double>(pool_reserved);
    return static_cast<double>(workspace_) + static_cast<double>(pool_high) + std::max(0.0, held);
  }

 private:
  cudaStream_t stream_;
  cudaMemPool_t pool_ = nullptr;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
  std::size_t free_before_ = 0, workspace_ = 0;
};

Result measure(const Config& cfg, std::int64_t seqlen, Method method, cudaStream_t stream) {
  const Workload w = make_workload(cfg, seqlen, method);
  Result r = result_for(w);
  const std::size_t bytes = w.tensor_bytes();
  const DeviceBuffer q(w.q), k(w.k), v(w.v), dout(w.dout);
  const DeviceBuffer o(bytes), dq(bytes), dk(bytes), dv(bytes), lse(w.lse_floats() * sizeof(float));
  for (const DeviceBuffer* b : {&o, &dq, &dk, &dv, &lse})
    BENCH_CUDA_CHECK(cudaMemset(b->get(), 0, b == &lse ? w.lse_floats() * sizeof(float) : bytes));
  const Buffers buffers{q.get(), k.get(), v.get(), o.get(), dout.get(), dq.get(), dk.get(), dv.get(), lse.as<float>()};

  // Device arrays for the kernels, host copies so that the call validates them.
  const DeviceBuffer kv_count(w.kv_count), kv_indices(w.kv_indices), full_count(w.full_kv_count),
      full_indices(w.full_kv_indices);
  flashattn::BlockMask mask = w.mask;
  mask.kv_count = kv_count.as<const std::int32_t>();
  mask.kv_indices = kv_indices.as<const std::int32_t>();
  mask.full_kv_count = full_count.as<const std::int32_t>();
  mask.full_kv_indices = full_indices.as<const std::int32_t>();
  mask.kv_count_host = w.kv_count.data();
  mask.kv_indices_host = w.kv_indices.data();
  mask.full_kv_count_host = w.full_kv_count.data();
  mask.full_kv_indices_host = w.full_kv_indices.data();
  const flashattn::BlockMask* block_mask = w.sparse ? &mask : nullptr;

  flashattn::Context ctx;
  ctx.device = flashattn::Device::cuda;
  ctx.stream = stream;
  ctx.algorithm = algorithm_of(method);
  flashattn::ForwardArgs fwd = forward_args(w, buffers, block_mask);
  flashattn::BackwardArgs bwd = backward_args(w, buffers, block_mask);
  const DeviceBuffer cu_seqlens(w.cu_seqlens);
  const flashattn::Varlen varlen = w.varlen_over(cu_seqlens.as<const std::int32_t>(), w.cu_seqlens.data());
  if (w.padded) fwd.options.varlen = bwd.options.varlen = &varlen;
  const std::size_t fwd_ws = flashattn::forward_workspace_bytes(fwd, ctx);
  const std::size_t bwd_ws = flashattn::backward_workspace_bytes(bwd, ctx);
  const DeviceBuffer workspace(std::max(fwd_ws, bwd_ws));
  flashattn::Context fwd_ctx = ctx, bwd_ctx = ctx;
  fwd_ctx.workspace = workspace.get();
  fwd_ctx.workspace_bytes = fwd_ws;
  bwd_ctx.workspace = workspace.get();
  bwd_ctx.workspace_bytes = bwd_ws;

  CudaProbe probe(stream);
  measure_calls(
      probe,
      [&] {
        probe.note_workspace(fwd_ws);
        flashattn::forward(fwd, fwd_ctx);
      },
      [&] {
        probe.note_workspace(bwd_ws);
        flashattn::backward(bwd, bwd_ctx);
      },
      cfg.repeats, r);
  BENCH_CUDA_CHECK(cudaGetLastError());
  return r;
}

}  // namespace

Result run_cuda(const Config& cfg, std::int64_t seqlen, Method method) {
  cudaStream_t stream = nullptr;
  try {
    BENCH_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    Result r = measure(cfg, seqlen, method, stream);
    cudaStreamDestroy(stream);
    return r;
  } catch (const std::exception& e) {
    if (stream) {
      cudaStreamSynchronize(stream);
      cudaStreamDestroy(stream);
    }
    Result r;
    r.seqlen = seqlen;
    r.method = method;
    r.status = Result::Status::failed;
    r.message = e.what();
    return r;
  }
}

std::string cuda_device_description() {
  int device = 0;
  cudaDeviceProp prop{};
  BENCH_CUDA_CHECK(cudaGetDevice(&device));
  BENCH_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  char buf[384];
  std::snprintf(buf, sizeof buf, "%s (sm_%d%d, %d SMs, %.1f GiB)", prop.name, prop.major, prop.minor,
                prop.multiProcessorCount, static_cast<double>(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0));
  return buf;
}

}  // namespace bench

#endif  // FLASHATTN_HAS_CUDA
