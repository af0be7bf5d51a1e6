// flashattn::build_info(): the build's facts agree with the rest of the API,
// and the CPU entries name the kernels the CPU backend actually uses.
#include <gtest/gtest.h>

#include <cstdlib>
#include <set>
#include <string>

#include "cpu/flash_kernels.h"
#include "flashattn/flashattn.h"

namespace {

TEST(BuildInfo, AgreesWithTheLibrary) {
  const flashattn::BuildInfo b = flashattn::build_info();
  EXPECT_STREQ(b.version, flashattn::version());
  EXPECT_FALSE(std::string(b.commit).empty());
#ifdef FLASHATTN_HAS_CUDA
  EXPECT_TRUE(b.cuda);
  EXPECT_FALSE(std::string(b.cuda_architectures).empty());
  EXPECT_FALSE(std::string(b.cuda_compiler).empty());
#else
  EXPECT_FALSE(b.cuda);
  EXPECT_STREQ(b.cuda_architectures, "");
#endif
  const std::set<std::string> isas = {"generic", "avx2", "avx512"};
  EXPECT_TRUE(isas.count(b.cpu_isa)) << b.cpu_isa;
  EXPECT_TRUE(isas.count(b.cpu_isa_bf16) || std::string(b.cpu_isa_bf16) == "amx") << b.cpu_isa_bf16;
  EXPECT_STREQ(b.cpu_isa, flashattn::detail::cpu_flash_kernel_isa(false));
  EXPECT_STREQ(b.cpu_isa_bf16, flashattn::detail::cpu_flash_kernel_isa(true));
  // A cap below the CPU's best is obeyed (CI runs this with avx2 and generic).
  if (const char* cap = std::getenv("FLASHATTN_CPU_ISA"); cap && std::string(cap) == "generic") {
    EXPECT_STREQ(b.cpu_isa, "generic");
    EXPECT_STREQ(b.cpu_isa_bf16, "generic");
  }
  EXPECT_FALSE(std::string(b.compiler).empty());
}

}  // namespace
