// The public calls: validate once, then hand the resolved Problem to the
// backend the Context names. No backend is chosen silently: a call for the
// CUDA device in a build without CUDA is an error, never a CPU run.
#include "flashattn/flashattn.h"
#include "flashattn/reference.h"

#include "backends.h"
#include "common/kvcache.h"
#include "common/philox.h"

namespace flashattn {

using detail::Problem;

std::size_t forward_workspace_bytes(const ForwardArgs& args, const Context& ctx) {
  const Problem p = detail::check_forward(args, ctx);
  if (ctx.device == Device::cuda) return detail::cuda_forward_workspace_bytes(p, args, ctx);
  return 0;  // CPU backends keep their O(N) scratch on the threads' stacks/heap
}

std::size_t backward_workspace_bytes(const BackwardArgs& args, const Context& ctx) {
  const Problem p = detail::check_backward(args, ctx);
  if (ctx.device == Device::cuda) return detail::cuda_backward_workspace_bytes(p, args, ctx);
  return 0;
}

void forward(const ForwardArgs& args, const Context& ctx) {
  const Problem p = detail::check_forward(args, ctx);
  if (ctx.device == Device::cuda) return detail::cuda_forward(p, args, ctx);
  if (ctx.algorithm == Algorithm::standard)
    return detail::cpu_standard_forward(p, args, ctx.num_threads, args.q.dtype == DType::f64);
  detail::cpu_flash_forward(p, args, ctx);
}

void backward(const BackwardArgs& args, const Context& ctx) {
  const Problem p = detail::check_backward(args, ctx);
  if (ctx.device == Device::cuda) return detail::cuda_backward(p, args, ctx);
  if (ctx.algorithm == Algorithm::standard)
    return detail::cpu_standard_backward(p, args, ctx.num_threads, args.q.dtype == DType::f64);
  detail::cpu_flash_backward(p, args, ctx);
}

void forward_kvcache(const KvCacheArgs& args, const Context& ctx) {
  const detail::KvProblem p = detail::check_kvcache(args, ctx);
  if (ctx.device == Device::cuda) return detail::cuda_forward_kvcache(p, args, ctx);
  detail::cpu_forward_kvcache(p, args, ctx);
}

int kvcache_num_splits(std::int64_t batch_heads_k, std::int64_t max_seqlen_k, int num_workers) {
  return detail::kv_num_splits_heuristic(batch_heads_k, max_seqlen_k, num_workers);
}

void dropout_mask(std::uint64_t seed, std::uint64_t offset, float dropout_p, std::int64_t batch,
                  std::int64_t heads_q, std::int64_t head, std::int64_t rows, std::int64_t cols,
                  std::uint8_t* keep) {
  auto bad = [](const char* arg, const std::string& expected, std::int64_t got) {
    throw Error(std::string(arg) + ": expected " + expected + ", got " + std::to_string(got));
  };
  if (!(dropout_p >= 0.0f && dropout_p < 1.0f))
    throw Error("dropout_p: expected a value in [0, 1), got " + std::to_string(dropout_p));
  if (heads_q < 1) bad("heads_q", ">= 1", heads_q);
  if (head < 0 || head >= heads_q) bad("head", "in [0, heads_q)", head);
  // batch * heads_q + head names the stream: it must fit 32 bits (and the
  // product must not overflow on the way).
  if (batch < 0 || batch > (0xFFFFFFFFll - head) / heads_q) bad("batch", ">= 0 with batch * heads_q < 2^32", batch);
  if (rows < 0 || rows > 0x7FFFFFFFll) bad("rows", "in [0, 2^31)", rows);
  if (cols < 0 || cols > 0x7FFFFFFFll) bad("cols", "in [0, 2^31)", cols);
  if (rows * cols > 0 && keep == nullptr) throw Error("keep: expected a non-null pointer, got nullptr");
  const auto s = detail::DropoutStream::make(seed, offset, dropout_p);
  const auto bh = static_cast<std::uint32_t>(batch * heads_q + head);
  for (std::int64_t i = 0; i < rows; ++i)
    for (std::int64_t j = 0; j < cols; ++j)
      keep[i * cols + j] = s.keep(bh, static_cast<std::uint32_t>(i), static_cast<std::uint32_t>(j)) ? 1 : 0;
}

namespace reference {

void forward(const ForwardArgs& args, int num_threads) {
  Context ctx;
  ctx.algorithm = Algorithm::standard;
  ctx.num_threads = num_threads;
  const Problem p = detail::check_forward(args, ctx, /*reference=*/true);
  detail::cpu_standard_forward(p, args, num_threads, /*float64=*/true);
}

void backward(const BackwardArgs& args, int num_threads) {
  Context ctx;
  ctx.algorithm = Algorithm::standard;
  ctx.num_threads = num_threads;
  const Problem p = detail::check_backward(args, ctx);
  detail::cpu_standard_backward(p, args, num_threads, /*float64=*/true);
}

void forward_kvcache(const KvCacheArgs& args, int num_threads) {
  Context ctx;
  ctx.num_threads = num_threads;
  const detail::KvProblem p = detail::check_kvcache(args, ctx);
  detail::cpu_reference_kvcache(p, args, num_threads);
}

}  // namespace reference
}  // namespace flashattn
