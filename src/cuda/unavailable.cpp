// Linked when the library is built without CUDA: a CUDA call is an error
// that says so, never a silent CPU run.
#include "backends.h"

namespace flashattn::detail {
namespace {
[[noreturn]] void no_cuda() {
  throw Error("ctx.device: expected cpu (this flashattn was built without the CUDA backend), got cuda");
}
}  // namespace

std::size_t cuda_forward_workspace_bytes(const Problem&, const ForwardArgs&, const Context&) { no_cuda(); }
std::size_t cuda_backward_workspace_bytes(const Problem&, const BackwardArgs&, const Context&) { no_cuda(); }
void cuda_forward(const Problem&, const ForwardArgs&, const Context&) { no_cuda(); }
void cuda_backward(const Problem&, const BackwardArgs&, const Context&) { no_cuda(); }
void cuda_forward_kvcache(const KvProblem&, const KvCacheArgs&, const Context&) { no_cuda(); }

}  // namespace flashattn::detail
