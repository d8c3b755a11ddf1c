# Driver for the package tests (cmake -P). One script, three modes:
#
#   -DMODE=install     -DBUILD_DIR=<softmaxlab build> -DPREFIX=<prefix> -DSOURCE_INCLUDE=<include/>
#                      -DINCLUDEDIR=<rel> -DCMAKEDIR=<rel> -DPKGCONFIGDIR=<rel> [-DCONFIG=<cfg>]
#       wipes PREFIX, runs `cmake --install`, checks that every header and package file is there.
#
#   -DMODE=consumer    -DSOURCE=<consumer dir> -DBINARY=<its build dir> -DCONFIG=<build type>
#                      -DGENERATOR=... [-DGENERATOR_PLATFORM=...] [-DGENERATOR_TOOLSET=...]
#                      [-DMAKE_PROGRAM=...] -DCXX_COMPILER=... [-DEIGEN3_DIR=...]
#                      [-DPREFIX=<prefix for find_package>] [-DSOFTMAXLAB_ROOT=<src for add_subdirectory>]
#                      [-DEXPECTED_VERSION=...] [-DEXE_SUFFIX=...]
#       configures the consumer from scratch, builds it and runs it.
#
#   -DMODE=pkg_config  -DPKG_CONFIG=<pkg-config> -DPREFIX=<prefix> -DPKGCONFIGDIR=<rel>
#                      -DCXX_COMPILER=... -DMAIN=<main.cpp> -DBINARY=<out dir>
#                      [-DEXPECTED_VERSION=...] [-DEXE_SUFFIX=...]
#       compiles main.cpp with nothing but `pkg-config --cflags softmaxlab` and runs it.
#
# Every step's output goes to ctest's log; a failing step stops with a message naming it.
cmake_minimum_required(VERSION 3.21)

function(require)
  foreach(_var IN LISTS ARGN)
    if(NOT DEFINED ${_var} OR "${${_var}}" STREQUAL "")
      message(FATAL_ERROR "run_consumer.cmake (MODE=${MODE}): -D${_var}=... is required")
    endif()
  endforeach()
endfunction()

# run(<step description> COMMAND ...): run a command, stop with a clear message if it fails.
function(run step)
  string(REPLACE ";" " " _shown "${ARGN}")
  message(STATUS "[${MODE}] ${step}: ${_shown}")
  execute_process(${ARGN} RESULT_VARIABLE _rc)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "[${MODE}] FAILED: ${step} (exit status: ${_rc})")
  endif()
endfunction()

function(expect_file path what)
  if(NOT EXISTS "${path}")
    message(FATAL_ERROR "[${MODE}] FAILED: ${what} is missing: ${path}")
  endif()
endfunction()

function(find_executable out dir name)
  foreach(_candidate IN ITEMS "${dir}/${name}${EXE_SUFFIX}" "${dir}/${CONFIG}/${name}${EXE_SUFFIX}")
    if(EXISTS "${_candidate}" AND NOT IS_DIRECTORY "${_candidate}")
      set(${out} "${_candidate}" PARENT_SCOPE)
      return()
    endif()
  endforeach()
  message(FATAL_ERROR "[${MODE}] FAILED: the build produced no executable '${name}' in ${dir}")
endfunction()

if(MODE STREQUAL "install")
  require(BUILD_DIR PREFIX SOURCE_INCLUDE INCLUDEDIR CMAKEDIR PKGCONFIGDIR)
  file(REMOVE_RECURSE "${PREFIX}")
  set(_config_args "")
  if(CONFIG)
    set(_config_args --config "${CONFIG}")
  endif()
  run("install softmaxlab into a scratch prefix"
    COMMAND "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${PREFIX}" ${_config_args})

  expect_file("${PREFIX}/${CMAKEDIR}/softmaxlabConfig.cmake" "the CMake package config")
  expect_file("${PREFIX}/${CMAKEDIR}/softmaxlabConfigVersion.cmake" "the CMake package version file")
  expect_file("${PREFIX}/${CMAKEDIR}/softmaxlabTargets.cmake" "the exported targets file")
  expect_file("${PREFIX}/${PKGCONFIGDIR}/softmaxlab.pc" "the pkg-config file")
  expect_file("${PREFIX}/${INCLUDEDIR}/softmaxlab/softmaxlab.hpp" "the umbrella header")
  # Every header of the source tree must be installed (a missing one breaks only some users).
  file(GLOB_RECURSE _headers RELATIVE "${SOURCE_INCLUDE}" "${SOURCE_INCLUDE}/softmaxlab/*")
  foreach(_header IN LISTS _headers)
    expect_file("${PREFIX}/${INCLUDEDIR}/${_header}" "an installed header")
  endforeach()
  list(LENGTH _headers _count)
  message(STATUS "[install] ok: package files and ${_count} header(s) under ${PREFIX}")

elseif(MODE STREQUAL "consumer")
  require(SOURCE BINARY CONFIG GENERATOR CXX_COMPILER)
  file(REMOVE_RECURSE "${BINARY}")
  set(_args -S "${SOURCE}" -B "${BINARY}" -G "${GENERATOR}"
            "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}" "-DCMAKE_BUILD_TYPE=${CONFIG}")
  if(GENERATOR_PLATFORM)
    list(APPEND _args -A "${GENERATOR_PLATFORM}")
  endif()
  if(GENERATOR_TOOLSET)
    list(APPEND _args -T "${GENERATOR_TOOLSET}")
  endif()
  if(MAKE_PROGRAM)
    list(APPEND _args "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
  endif()
  if(EIGEN3_DIR)
    list(APPEND _args "-DEigen3_DIR=${EIGEN3_DIR}")
  endif()
  if(PREFIX)
    list(APPEND _args "-DCMAKE_PREFIX_PATH=${PREFIX}" "-DSOFTMAXLAB_EXPECTED_PREFIX=${PREFIX}"
                      -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF)
  endif()
  if(SOFTMAXLAB_ROOT)
    list(APPEND _args "-DSOFTMAXLAB_ROOT=${SOFTMAXLAB_ROOT}")
  endif()
  if(EXPECTED_VERSION)
    list(APPEND _args "-DSOFTMAXLAB_EXPECTED_VERSION=${EXPECTED_VERSION}")
  endif()

  run("configure the consumer project" COMMAND "${CMAKE_COMMAND}" ${_args})
  run("build the consumer project"
    COMMAND "${CMAKE_COMMAND}" --build "${BINARY}" --config "${CONFIG}")
  find_executable(_exe "${BINARY}" consumer)
  run("run the consumer (softmax of [1 2 3 4] must be a distribution)" COMMAND "${_exe}")
  message(STATUS "[consumer] ok")

elseif(MODE STREQUAL "pkg_config")
  require(PKG_CONFIG PREFIX PKGCONFIGDIR CXX_COMPILER MAIN BINARY)
  if(DEFINED ENV{PKG_CONFIG_PATH} AND NOT "$ENV{PKG_CONFIG_PATH}" STREQUAL "")
    set(ENV{PKG_CONFIG_PATH} "${PREFIX}/${PKGCONFIGDIR}:$ENV{PKG_CONFIG_PATH}")
  else()
    set(ENV{PKG_CONFIG_PATH} "${PREFIX}/${PKGCONFIGDIR}")
  endif()
  message(STATUS "[pkg_config] PKG_CONFIG_PATH=$ENV{PKG_CONFIG_PATH}")

  run("pkg-config resolves softmaxlab and its eigen3 requirement"
    COMMAND "${PKG_CONFIG}" --print-errors --exists softmaxlab)
  execute_process(COMMAND "${PKG_CONFIG}" --modversion softmaxlab
    OUTPUT_VARIABLE _version OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _rc)
  if(NOT _rc EQUAL 0 OR (EXPECTED_VERSION AND NOT _version STREQUAL EXPECTED_VERSION))
    message(FATAL_ERROR "[pkg_config] FAILED: pkg-config --modversion softmaxlab gave "
                        "'${_version}' (exit ${_rc}), expected '${EXPECTED_VERSION}'")
  endif()
  execute_process(COMMAND "${PKG_CONFIG}" --cflags softmaxlab
    OUTPUT_VARIABLE _cflags OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _rc)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "[pkg_config] FAILED: pkg-config --cflags softmaxlab (exit ${_rc})")
  endif()
  message(STATUS "[pkg_config] cflags: ${_cflags}")
  if(NOT _cflags MATCHES "-std=c\\+\\+17")
    message(FATAL_ERROR "[pkg_config] FAILED: the Cflags '${_cflags}' lack -std=c++17 (softmaxlab "
                        "needs C++17, and a compiler defaulting to C++14 would fail)")
  endif()

  # The Cflags must point at the installed headers under PREFIX (the .pc file is relocatable).
  separate_arguments(_cflags UNIX_COMMAND "${_cflags}")
  file(REAL_PATH "${PREFIX}" _prefix_real)
  set(_ours FALSE)
  foreach(_flag IN LISTS _cflags)
    if(_flag MATCHES "^-I(.+)$")
      set(_dir "${CMAKE_MATCH_1}")
      if(EXISTS "${_dir}/softmaxlab/softmaxlab.hpp")
        file(REAL_PATH "${_dir}" _dir_real)
        string(FIND "${_dir_real}/" "${_prefix_real}/" _at)
        if(_at EQUAL 0)
          set(_ours TRUE)
        endif()
      endif()
    endif()
  endforeach()
  if(NOT _ours)
    message(FATAL_ERROR "[pkg_config] FAILED: no -I in '${_cflags}' points at the headers "
                        "installed under ${PREFIX}")
  endif()

  file(REMOVE_RECURSE "${BINARY}")
  file(MAKE_DIRECTORY "${BINARY}")
  set(_exe "${BINARY}/consumer${EXE_SUFFIX}")
  run("compile the consumer with the pkg-config flags only"
    COMMAND "${CXX_COMPILER}" -O2 ${_cflags} "${MAIN}" -o "${_exe}")
  run("run the consumer (softmax of [1 2 3 4] must be a distribution)" COMMAND "${_exe}")
  message(STATUS "[pkg_config] ok")

else()
  message(FATAL_ERROR "run_consumer.cmake: unknown MODE '${MODE}' (install, consumer, pkg_config)")
endif()
