// flashattn::build_info(): flashattn::build_info() of the linked library and
// the facts of this operator library (whether its CUDA kernels are
// registered, the torch it was compiled against), as parallel lists of
// keys and string values (python -m flashattn.info prints them). A
// fragment of the flashattn namespace, beside ops.cpp's operators.
#include <torch/library.h>
#include <torch/version.h>

#include <string>
#include <tuple>
#include <vector>

#include "flashattn/flashattn.h"

namespace {

#define FLASHATTN_STR2(x) #x
#define FLASHATTN_STR(x) FLASHATTN_STR2(x)
// (TORCH_VERSION_MAJOR etc.: in every libtorch 2.x, unlike the string.)
constexpr const char* kTorchVersion =
    FLASHATTN_STR(TORCH_VERSION_MAJOR) "." FLASHATTN_STR(TORCH_VERSION_MINOR) "." FLASHATTN_STR(TORCH_VERSION_PATCH);

std::tuple<std::vector<std::string>, std::vector<std::string>> build_info() {
  const flashattn::BuildInfo b = flashattn::build_info();
  const auto flag = [](bool on) { return std::string(on ? "1" : "0"); };
#ifdef FLASHATTN_TORCH_CUDA
  const bool ops_cuda = true;
#else
  const bool ops_cuda = false;
#endif
  std::vector<std::string> keys, values;
  const auto add = [&](const char* key, std::string value) {
    keys.emplace_back(key);
    values.push_back(std::move(value));
  };
  add("version", b.version);
  add("commit", b.commit);
  add("commit_modified", flag(b.commit_modified));
  add("cuda", flag(b.cuda));
  add("cuda_architectures", b.cuda_architectures);
  add("cuda_compiler", b.cuda_compiler);
  add("cuda_operators", flag(ops_cuda));
  add("cpu_isa", b.cpu_isa);
  add("cpu_isa_bf16", b.cpu_isa_bf16);
  add("build_type", b.build_type);
  add("compiler", b.compiler);
  add("torch_compiled", kTorchVersion);
  return {keys, values};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(flashattn, m) { m.def("build_info() -> (str[] keys, str[] values)", &build_info); }
