# The CUDA backend (included by the top-level CMakeLists.txt when nvcc is found).
# Kernels are split per (direction, dtype) so that parallel builds overlap.
target_sources(flashattn PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/api.cu
  ${CMAKE_CURRENT_LIST_DIR}/standard.cu
  ${CMAKE_CURRENT_LIST_DIR}/sm80/forward_f16.cu
  ${CMAKE_CURRENT_LIST_DIR}/sm80/forward_bf16.cu
  ${CMAKE_CURRENT_LIST_DIR}/sm80/backward_f16.cu
  ${CMAKE_CURRENT_LIST_DIR}/sm80/backward_bf16.cu
  ${CMAKE_CURRENT_LIST_DIR}/sm80/kvcache_f16.cu
  ${CMAKE_CURRENT_LIST_DIR}/sm80/kvcache_bf16.cu
  ${CMAKE_CURRENT_LIST_DIR}/sm90/forward_f16.cu
  ${CMAKE_CURRENT_LIST_DIR}/sm90/forward_bf16.cu
  ${CMAKE_CURRENT_LIST_DIR}/sm90/forward_e4m3.cu
  ${CMAKE_CURRENT_LIST_DIR}/sm90/backward_f16.cu
  ${CMAKE_CURRENT_LIST_DIR}/sm90/backward_bf16.cu
)
# The Hopper files compile in every pass of CMAKE_CUDA_ARCHITECTURES, but
# their kernel bodies exist only in the sm_90a pass (FA_SM90_DEVICE in
# ptx/sm90.cuh); the sm_80 pass emits a trap stub, and the dispatch
# (api.cu) launches them on compute capability 9.0 only.
target_link_libraries(flashattn PRIVATE CUDA::cudart CUDA::cublas)
# Kernels index registers only with compile-time constants; -lineinfo keeps
# profiles readable at no run-time cost.
target_compile_options(flashattn PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-lineinfo --expt-relaxed-constexpr>)
# CMake 3.25 does not know nvcc 13's C++20 flag (the top level asks for
# CUDA_STANDARD 20 and configuration fails), so the dialect is passed by hand.
set_property(TARGET flashattn PROPERTY CUDA_STANDARD)
set_property(TARGET flashattn PROPERTY CUDA_STANDARD_REQUIRED OFF)
target_compile_options(flashattn PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-std=c++20>)
