// flashattn::build_info(): the facts of this build (configure time:
// flashattn_build_config.h; build time: flashattn_git_info.h, the commit)
// and the CPU backend's run-time choice of kernels.
#include "cpu/flash_kernels.h"  // detail::cpu_flash_kernel_isa
#include "flashattn/flashattn.h"
#include "flashattn_build_config.h"
#include "flashattn_git_info.h"

namespace flashattn {

BuildInfo build_info() {
  BuildInfo b;
  b.version = version();
  b.commit = FLASHATTN_GIT_COMMIT;
  b.commit_modified = FLASHATTN_GIT_DIRTY != 0;
#ifdef FLASHATTN_HAS_CUDA
  b.cuda = true;
  b.cuda_architectures = FLASHATTN_BUILD_CUDA_ARCHITECTURES;
  b.cuda_compiler = FLASHATTN_BUILD_CUDA_COMPILER;
#endif
  b.cpu_isa = detail::cpu_flash_kernel_isa(false);
  b.cpu_isa_bf16 = detail::cpu_flash_kernel_isa(true);
  b.build_type = FLASHATTN_BUILD_TYPE;
  b.compiler = FLASHATTN_BUILD_COMPILER;
  return b;
}

}  // namespace flashattn
