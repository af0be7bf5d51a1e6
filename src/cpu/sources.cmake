# The CPU backend: standard.cpp is listed by the top-level CMakeLists.txt;
# this file adds the tiled FlashAttention path.
#
# The micro-kernels are compiled once per instruction set, each with its own
# -m flags and namespace, and flash.cpp picks one at run time
# (__builtin_cpu_supports), so the library runs on any x86-64 and still uses
# AVX-512 where present. Only the kernel files get the flags: nothing else
# may contain AVX-512 code. -ffp-contract=fast lets a*b+c become an FMA
# (ISO C++ mode turns contraction off by default).
target_sources(flashattn PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/flash.cpp
  ${CMAKE_CURRENT_LIST_DIR}/flash_kernels_generic.cpp)
set_source_files_properties(${CMAKE_CURRENT_LIST_DIR}/flash_kernels_generic.cpp
  PROPERTIES COMPILE_OPTIONS "-ffp-contract=fast")

if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$" AND CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  target_sources(flashattn PRIVATE
    ${CMAKE_CURRENT_LIST_DIR}/flash_kernels_avx2.cpp
    ${CMAKE_CURRENT_LIST_DIR}/flash_kernels_avx512.cpp
    ${CMAKE_CURRENT_LIST_DIR}/flash_kernels_amx.cpp)
  set_source_files_properties(${CMAKE_CURRENT_LIST_DIR}/flash_kernels_avx2.cpp
    PROPERTIES COMPILE_OPTIONS "-mavx2;-mfma;-ffp-contract=fast")
  set_source_files_properties(${CMAKE_CURRENT_LIST_DIR}/flash_kernels_avx512.cpp
    PROPERTIES COMPILE_OPTIONS "-mavx512f;-mavx512vl;-mavx512dq;-mavx512bw;-mavx2;-mfma;-ffp-contract=fast")
  # The AMX tile kernels of the bf16 path (also AVX-512 code: the softmax
  # and packing around the tiles). g++ >= 11 / clang >= 12 know the flags.
  set_source_files_properties(${CMAKE_CURRENT_LIST_DIR}/flash_kernels_amx.cpp
    PROPERTIES COMPILE_OPTIONS "-mamx-tile;-mamx-bf16;-mavx512bf16;-mavx512f;-mavx512vl;-mavx512dq;-mavx512bw;-mavx2;-mfma;-ffp-contract=fast")
  target_compile_definitions(flashattn PRIVATE FLASHATTN_CPU_X86_KERNELS=1)
endif()
