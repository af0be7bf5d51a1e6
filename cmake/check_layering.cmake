# Run as a test (cmake -DROOT=<repository> -P check_layering.cmake): the
# layering rules that the build alone would not keep.
#  - apps/ never reaches into bindings/python (the torch operators are
#    bindings/torch's flashattn::torch);
#  - tools/ use the library's public API only: no include of src/ headers
#    (common/, cpu/, cuda/, backends.h) and no include path into src/.
set(_errors "")
file(GLOB_RECURSE _app_files "${ROOT}/apps/*.cpp" "${ROOT}/apps/*.h" "${ROOT}/apps/*CMakeLists.txt" "${ROOT}/apps/*.cmake")
foreach(_f IN LISTS _app_files)
  file(STRINGS "${_f}" _hits REGEX "bindings/python")
  foreach(_h IN LISTS _hits)
    string(APPEND _errors "${_f}: reaches into bindings/python: ${_h}\n")
  endforeach()
endforeach()
file(GLOB_RECURSE _tool_sources "${ROOT}/tools/*.cpp" "${ROOT}/tools/*.h" "${ROOT}/tools/*.cu")
foreach(_f IN LISTS _tool_sources)
  file(STRINGS "${_f}" _hits REGEX "^[ \t]*#[ \t]*include[ \t]*\"(src/|common/|cpu/|cuda/|backends\\.h)")
  foreach(_h IN LISTS _hits)
    string(APPEND _errors "${_f}: includes a private header of the library: ${_h}\n")
  endforeach()
endforeach()
file(GLOB_RECURSE _tool_cmake "${ROOT}/tools/*CMakeLists.txt" "${ROOT}/tools/*.cmake")
foreach(_f IN LISTS _tool_cmake)
  file(STRINGS "${_f}" _hits REGEX "(PROJECT_SOURCE_DIR|CMAKE_SOURCE_DIR|\\.\\.)}?/src")
  foreach(_h IN LISTS _hits)
    string(APPEND _errors "${_f}: an include path into src/: ${_h}\n")
  endforeach()
endforeach()
if(_errors)
  message(FATAL_ERROR "layering:\n${_errors}")
endif()
message(STATUS "layering: apps/ and tools/ keep to bindings/torch and the public API")
