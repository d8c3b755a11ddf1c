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

# GCC < 13 with AVX-512 (bug 105593): GCC's own avx512fintrin.h raises -Wuninitialized and
# -Wmaybe-uninitialized once inlined into packet code. detail/config.hpp includes immintrin.h under
# a diagnostic pragma that silences exactly those two warnings in GCC's intrinsic headers; our
# targets force-include it so it precedes Eigen (and oneDNN, Google Benchmark) in every source.
# The instruction set is never reduced.
set(SOFTMAXLAB_GCC_105593 OFF)
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
  set(SOFTMAXLAB_GCC_105593 ON)
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
    if(SOFTMAXLAB_GCC_105593)
      target_compile_options(${_target} PRIVATE
        "SHELL:-include ${PROJECT_SOURCE_DIR}/include/softmaxlab/detail/config.hpp")
    endif()
  endforeach()
endfunction()
