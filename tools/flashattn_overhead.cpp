// flashattn-overhead: the host cost of one raw C++ flashattn::forward call.
//
// Times N back-to-back forward calls on a tiny problem (one sequence of a
// few rows, so the kernel is short and the loop measures what the host
// spends per call: validation, dispatch, launch) and prints one JSON line
// with the microseconds per call. On CUDA the calls are queued on one stream
// with a caller-provided workspace and synchronised once at the end, so a
// call's own cost is what limits the loop; bindings/python/bench_overhead.py
// runs the same loop through the PyTorch operator and reports the
// difference (the target: under 10 us a call).
//
//   flashattn-overhead [--device cpu|cuda] [--dtype f32|f16|bf16] [--seqlen N] [--head-dim D]
//                      [--threads N] [--calls N]
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef FLASHATTN_HAS_CUDA
#include <cuda_runtime.h>
#endif

#include "flashattn/flashattn.h"
#include "half_convert.h"  // float -> f16 / bf16 storage

namespace {

struct Args {
  flashattn::Device device = flashattn::Device::cpu;
  flashattn::DType dtype = flashattn::DType::f32;
  std::int64_t seqlen = 16, head_dim = 64, calls = 2000;
  int threads = 0;  // CPU threads (0: OpenMP's default)
};

[[noreturn]] void usage_error(const std::string& what) {
  std::fprintf(stderr, "flashattn-overhead: %s\n", what.c_str());
  std::exit(2);
}

std::int64_t positive(const char* flag, const char* v) {
  char* end = nullptr;
  const long long x = std::strtoll(v, &end, 10);
  if (!end || *end || x < 1) usage_error(std::string(flag) + ": expected a positive integer, got '" + v + "'");
  return x;
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    if (i + 1 >= argc) usage_error(f + ": expected a value after the flag");
    const char* v = argv[++i];
    if (f == "--device") {
      if (!std::strcmp(v, "cpu")) a.device = flashattn::Device::cpu;
      else if (!std::strcmp(v, "cuda")) a.device = flashattn::Device::cuda;
      else usage_error(std::string("--device: expected cpu or cuda, got '") + v + "'");
    } else if (f == "--dtype") {
      if (!std::strcmp(v, "f32")) a.dtype = flashattn::DType::f32;
      else if (!std::strcmp(v, "f16")) a.dtype = flashattn::DType::f16;
      else if (!std::strcmp(v, "bf16")) a.dtype = flashattn::DType::bf16;
      else usage_error(std::string("--dtype: expected f32, f16 or bf16, got '") + v + "'");
    } else if (f == "--seqlen") {
      a.seqlen = positive("--seqlen", v);
    } else if (f == "--head-dim") {
      a.head_dim = positive("--head-dim", v);
    } else if (f == "--threads") {
      a.threads = static_cast<int>(positive("--threads", v));
    } else if (f == "--calls") {
      a.calls = positive("--calls", v);
    } else {
      usage_error("unknown flag '" + f + "' (expected --device, --dtype, --seqlen, --head-dim, --threads, --calls)");
    }
  }
  return a;
}

// Random inputs in the storage dtype (never zeros).
std::vector<unsigned char> random_tensor(std::int64_t n, flashattn::DType dtype, unsigned seed) {
  std::vector<unsigned char> out(static_cast<std::size_t>(n) * flashattn::dtype_size(dtype));
  std::uint32_t x = seed * 2654435761u + 1;
  for (std::int64_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    const float f = static_cast<float>(x & 0xFFFF) / 32768.0f - 1.0f;
    if (dtype == flashattn::DType::f32) reinterpret_cast<float*>(out.data())[i] = f;
    else if (dtype == flashattn::DType::f16) reinterpret_cast<std::uint16_t*>(out.data())[i] = tools::float_to_f16(f);
    else reinterpret_cast<std::uint16_t*>(out.data())[i] = tools::float_to_bf16(f);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) try {
  const Args a = parse(argc, argv);
  const std::int64_t n = a.seqlen * a.head_dim;  // batch 1, 1 head
  const std::size_t bytes = static_cast<std::size_t>(n) * flashattn::dtype_size(a.dtype);
  std::vector<std::vector<unsigned char>> host;
  for (unsigned s = 0; s < 3; ++s) host.push_back(random_tensor(n, a.dtype, s + 1));
  std::vector<unsigned char> o_host(bytes);
  std::vector<float> lse_host(static_cast<std::size_t>(a.seqlen));

  void* ptr[4] = {host[0].data(), host[1].data(), host[2].data(), o_host.data()};
  float* lse = lse_host.data();
  flashattn::Context ctx;
  ctx.device = a.device;
  ctx.num_threads = a.threads;
#ifdef FLASHATTN_HAS_CUDA
  cudaStream_t stream = nullptr;
  void* workspace = nullptr;
  if (a.device == flashattn::Device::cuda) {
    auto ck = [](cudaError_t e, const char* what) {
      if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
    };
    for (int i = 0; i < 4; ++i) {
      void* d = nullptr;
      ck(cudaMalloc(&d, bytes), "cudaMalloc");
      if (i < 3) ck(cudaMemcpy(d, host[i].data(), bytes, cudaMemcpyHostToDevice), "cudaMemcpy");
      ptr[i] = d;
    }
    ck(cudaMalloc(reinterpret_cast<void**>(&lse), lse_host.size() * sizeof(float)), "cudaMalloc");
    ck(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
    ctx.stream = stream;
  }
#else
  if (a.device == flashattn::Device::cuda) usage_error("--device cuda: this build has no CUDA backend");
#endif
  auto view = [&](void* p) { return flashattn::Tensor::contiguous(p, a.dtype, 1, a.seqlen, 1, a.head_dim); };
  const flashattn::ForwardArgs fwd{view(ptr[0]), view(ptr[1]), view(ptr[2]), view(ptr[3]), lse, {}};
#ifdef FLASHATTN_HAS_CUDA
  if (a.device == flashattn::Device::cuda) {
    // Caller-provided workspace: the loop measures the call, not an allocator.
    ctx.workspace_bytes = flashattn::forward_workspace_bytes(fwd, ctx);
    if (ctx.workspace_bytes && cudaMalloc(&workspace, ctx.workspace_bytes) != cudaSuccess)
      throw std::runtime_error("cudaMalloc(workspace) failed");
    ctx.workspace = workspace;
  }
#endif
  auto sync = [&] {
#ifdef FLASHATTN_HAS_CUDA
    if (a.device == flashattn::Device::cuda && cudaStreamSynchronize(stream) != cudaSuccess)
      throw std::runtime_error("cudaStreamSynchronize failed");
#endif
  };
  for (int i = 0; i < 50; ++i) flashattn::forward(fwd, ctx);  // warm-up (first-call setup, caches)
  sync();
  const auto t0 = std::chrono::steady_clock::now();
  for (std::int64_t i = 0; i < a.calls; ++i) flashattn::forward(fwd, ctx);
  sync();
  const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() /
                    static_cast<double>(a.calls);
  std::printf("{\"tool\": \"flashattn-overhead\", \"device\": \"%s\", \"dtype\": \"%s\", \"seqlen\": %lld, "
              "\"head_dim\": %lld, \"threads\": %d, \"calls\": %lld, \"us_per_call\": %.3f}\n",
              flashattn::to_string(a.device), flashattn::to_string(a.dtype), static_cast<long long>(a.seqlen),
              static_cast<long long>(a.head_dim), a.threads, static_cast<long long>(a.calls), us);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "flashattn-overhead: %s\n", e.what());
  return 1;
}
