# cmake -DCXX=<compiler> -DSOURCE=<file> -DCASE=<n> -DEXPECT=<regex> -DINCLUDE=<dir> -DEIGEN_INCLUDE=<dir> -P compile_fail.cmake
#       [-DFLAGS=<extra flags, ;-separated>]
# CASE 0 must compile (unless FLAGS are given); any other case, or CASE 0 with FLAGS, must fail to
# compile with a diagnostic matching EXPECT.
foreach(_var IN ITEMS CXX SOURCE CASE INCLUDE EIGEN_INCLUDE)
  if(NOT DEFINED ${_var})
    message(FATAL_ERROR "compile_fail.cmake: -D${_var}=... is required")
  endif()
endforeach()
set(_args -std=c++17 -fsyntax-only "-DSOFTMAXLAB_CASE=${CASE}")
list(APPEND _args "-I${INCLUDE}" "-isystem" "${EIGEN_INCLUDE}" ${FLAGS})
execute_process(COMMAND "${CXX}" ${_args} "${SOURCE}"
  RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
if(CASE EQUAL 0 AND NOT FLAGS)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "case 0 (the forms that must compile) failed:\n${_err}")
  endif()
  message(STATUS "case 0 compiles")
  return()
endif()
if(_rc EQUAL 0)
  message(FATAL_ERROR "case ${CASE} compiled, but it must be rejected at compile time")
endif()
if(NOT _err MATCHES "${EXPECT}")
  message(FATAL_ERROR "case ${CASE} failed to compile, but without the expected message "
                      "'${EXPECT}':\n${_err}")
endif()
message(STATUS "case ${CASE} rejected with '${EXPECT}'")
