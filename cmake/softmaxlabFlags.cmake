# softmaxlab_project_flags(<target> [<target>...])
#
# Compile flags for softmaxlab's OWN executables (tests, benchmarks, examples). Never applied to
# the softmaxlab INTERFACE target: consumers choose their own warnings and instruction set.
#   - GCC/Clang: -Wall -Wextra -Wpedantic, plus -Werror when SOFTMAXLAB_WERROR is ON.
#   - GCC/Clang: -march=native when SOFTMAXLAB_NATIVE is ON and the compiler accepts it.
# Other compilers get nothing from this function.

include_guard(GLOBAL)
include(CheckCXXCompilerFlag)

if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  if(SOFTMAXLAB_NATIVE)
    check_cxx_compiler_flag(-march=native SOFTMAXLAB_HAVE_MARCH_NATIVE)
    if(NOT SOFTMAXLAB_HAVE_MARCH_NATIVE)
      message(STATUS "softmaxlab: ${CMAKE_CXX_COMPILER} rejects -march=native; building without it")
    endif()
  endif()
endif()

# GCC 12's own AVX-512 intrinsics (the self-initialized _mm512_undefined_* of avx512fintrin.h)
# trigger -Wuninitialized and -Wmaybe-uninitialized once inlined into any packet code (GCC bug
# 105593, fixed in GCC 13), so a -Werror build cannot use them. On a machine whose -march=native
# enables AVX-512, GCC < 13 builds our targets with -mno-avx512f (AVX2 + FMA kernels, the
# instruction set of the machines we measure on); clang builds keep AVX-512, so the sanitizer and
# fuzz stages still run the AVX-512 paths.
set(SOFTMAXLAB_GCC_NO_AVX512 OFF)
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13
   AND SOFTMAXLAB_NATIVE AND SOFTMAXLAB_HAVE_MARCH_NATIVE)
  include(CheckCXXSourceCompiles)
  set(CMAKE_REQUIRED_FLAGS -march=native)
  check_cxx_source_compiles("#ifndef __AVX512F__\n#error no AVX-512\n#endif\nint main() { return 0; }"
    SOFTMAXLAB_NATIVE_HAS_AVX512)
  unset(CMAKE_REQUIRED_FLAGS)
  if(SOFTMAXLAB_NATIVE_HAS_AVX512)
    set(SOFTMAXLAB_GCC_NO_AVX512 ON)
    message(STATUS "softmaxlab: GCC ${CMAKE_CXX_COMPILER_VERSION} with AVX-512: building with "
                   "-mno-avx512f (GCC bug 105593)")
  endif()
endif()

function(softmaxlab_project_flags)
  if(ARGC EQUAL 0)
    message(FATAL_ERROR "softmaxlab_project_flags: expected at least one target name")
  endif()
  foreach(_target IN LISTS ARGN)
    if(NOT TARGET ${_target})
      message(FATAL_ERROR "softmaxlab_project_flags: '${_target}' is not a target")
    endif()
    if(NOT CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
      continue()
    endif()
    target_compile_options(${_target} PRIVATE -Wall -Wextra -Wpedantic)
    if(SOFTMAXLAB_WERROR)
      target_compile_options(${_target} PRIVATE -Werror)
    endif()
    if(SOFTMAXLAB_NATIVE AND SOFTMAXLAB_HAVE_MARCH_NATIVE)
      target_compile_options(${_target} PRIVATE -march=native)
    endif()
    if(SOFTMAXLAB_GCC_NO_AVX512)
      target_compile_options(${_target} PRIVATE -mno-avx512f)
    endif()
  endforeach()
endfunction()
