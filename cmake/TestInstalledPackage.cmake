# ctest script: installs the ekinet build tree to a scratch prefix, configures the oscillator example out of
# tree against it with find_package(ekinet), builds and runs it, does the same for a program that asks for a CUDA
# context; then, for a build on scipy-openblas32, checks that find_package(ekinet) says what is wrong when the
# recorded OpenBLAS has gone. Called with -DBUILD_DIR, -DSOURCE_DIR, -DWORK_DIR.
file(REMOVE_RECURSE "${WORK_DIR}")
function(run_step)
  execute_process(COMMAND ${ARGV} RESULT_VARIABLE result)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "step failed (${result}): ${ARGV}")
  endif()
endfunction()
run_step(${CMAKE_COMMAND} --install "${BUILD_DIR}" --prefix "${WORK_DIR}/install")
run_step(${CMAKE_COMMAND} -S "${SOURCE_DIR}/cpp/examples/oscillator" -B "${WORK_DIR}/build"
         -DCMAKE_PREFIX_PATH=${WORK_DIR}/install -DCMAKE_BUILD_TYPE=Release)
run_step(${CMAKE_COMMAND} --build "${WORK_DIR}/build")
run_step("${WORK_DIR}/build/oscillator_calibration")

# A C++-only program that asks for a CUDA context links the CUDA backend (and its runtime) in a CUDA build, and
# gets ekinet's "built without CUDA" error otherwise; with no usable GPU it gets a typed error either way.
file(WRITE "${WORK_DIR}/cuda_consumer/CMakeLists.txt" [=[
cmake_minimum_required(VERSION 3.24)
project(ekinet_cuda_consumer LANGUAGES CXX)
find_package(ekinet REQUIRED)
add_executable(cuda_consumer main.cpp)
target_link_libraries(cuda_consumer PRIVATE ekinet::ekinet)
]=])
file(WRITE "${WORK_DIR}/cuda_consumer/main.cpp" [=[
#include <cstdio>
#include <ekinet/ekinet.hpp>
int main() {
  try {
    auto context = ekinet::make_cuda_context();
    std::puts("CUDA context made");
  } catch (const ekinet::Error& error) {
    std::printf("no CUDA context, as expected without a GPU or CUDA build: %s\n", error.what());
  }
}
]=])
run_step(${CMAKE_COMMAND} -S "${WORK_DIR}/cuda_consumer" -B "${WORK_DIR}/cuda_consumer/build"
         -DCMAKE_PREFIX_PATH=${WORK_DIR}/install -DCMAKE_BUILD_TYPE=Release)
run_step(${CMAKE_COMMAND} --build "${WORK_DIR}/cuda_consumer/build")
run_step("${WORK_DIR}/cuda_consumer/build/cuda_consumer")

file(GLOB_RECURSE config "${WORK_DIR}/install/*ekinetConfig.cmake")
file(READ "${config}" config_text)
string(REGEX MATCH "find_dependency\\(OpenBLAS CONFIG PATHS \"([^\"]+)\"" recorded "${config_text}")
if(recorded)
  string(REPLACE "${CMAKE_MATCH_1}" "${WORK_DIR}/gone/cmake/openblas" config_text "${config_text}")
  file(WRITE "${config}" "${config_text}")
  execute_process(COMMAND ${CMAKE_COMMAND} -S "${SOURCE_DIR}/cpp/examples/oscillator" -B "${WORK_DIR}/build-gone"
                          -DCMAKE_PREFIX_PATH=${WORK_DIR}/install
                  RESULT_VARIABLE result OUTPUT_VARIABLE output ERROR_VARIABLE output)
  # CMake wraps the message's lines, so match words that it cannot break.
  if(result EQUAL 0 OR NOT output MATCHES "scipy-openblas32" OR NOT output MATCHES "get_lib_dir")
    message(FATAL_ERROR "find_package(ekinet) with its OpenBLAS gone: expected a failure naming the missing "
                        "scipy-openblas32 and OpenBLAS_DIR, got (${result}):\n${output}")
  endif()
endif()
