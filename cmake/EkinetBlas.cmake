# Finds the CPU BLAS/LAPACK. Sets EKINET_BLAS_TARGETS, EKINET_BLAS_PREFIX (symbol prefix), EKINET_BLAS_NAME
# and EKINET_BLAS_CONFIG_CODE (the lines the installed package config runs to find the same library again).
set(_ekinet_blas_mode "${EKINET_BLAS}")
if(_ekinet_blas_mode STREQUAL "AUTO" OR _ekinet_blas_mode STREQUAL "SCIPY_OPENBLAS")
  find_package(Python3 COMPONENTS Interpreter QUIET)
  if(Python3_Interpreter_FOUND)
    execute_process(
      COMMAND "${Python3_EXECUTABLE}" -c "import scipy_openblas32 as s; print(s.get_lib_dir(), end='')"
      OUTPUT_VARIABLE _ekinet_openblas_lib_dir RESULT_VARIABLE _ekinet_openblas_result ERROR_QUIET)
  endif()
  if(Python3_Interpreter_FOUND AND _ekinet_openblas_result EQUAL 0)
    set(_ekinet_openblas_config_dir "${_ekinet_openblas_lib_dir}/cmake/openblas")
    find_package(OpenBLAS CONFIG REQUIRED PATHS "${_ekinet_openblas_config_dir}" NO_DEFAULT_PATH)
    set(EKINET_BLAS_TARGETS OpenBLAS::OpenBLAS)
    set(EKINET_BLAS_PREFIX "scipy_")
    set(EKINET_BLAS_NAME "scipy-openblas32 ${OpenBLAS_VERSION}")
    # The config records the wheel's absolute path: if that Python environment moved or lost the package, say
    # so and how to point at another copy (OpenBLAS_DIR), rather than fail later on missing scipy_ symbols.
    string(CONCAT EKINET_BLAS_CONFIG_CODE
           "if(NOT OpenBLAS_DIR AND NOT EXISTS \"${_ekinet_openblas_config_dir}/OpenBLASConfig.cmake\")\n"
           "  set(ekinet_NOT_FOUND_MESSAGE \"ekinet was built against scipy-openblas32 at "
           "${_ekinet_openblas_config_dir}, which no longer exists. Install the same scipy-openblas32 "
           "(${OpenBLAS_VERSION}) there again, or pass -DOpenBLAS_DIR=<lib dir>/cmake/openblas with <lib dir> from "
           "python -c 'import scipy_openblas32 as s; print(s.get_lib_dir())'.\")\n"
           "  set(ekinet_FOUND FALSE)\n  return()\nendif()\n"
           "find_dependency(OpenBLAS CONFIG PATHS \"${_ekinet_openblas_config_dir}\" NO_DEFAULT_PATH)")
  elseif(_ekinet_blas_mode STREQUAL "SCIPY_OPENBLAS")
    message(FATAL_ERROR "EKINET_BLAS=SCIPY_OPENBLAS but the Python package scipy_openblas32 is not importable: "
                        "pip install scipy-openblas32, or configure with -DEKINET_BLAS=SYSTEM.")
  else()
    set(_ekinet_blas_mode "SYSTEM")
  endif()
endif()
if(_ekinet_blas_mode STREQUAL "SYSTEM")
  set(BLA_VENDOR OpenBLAS)
  find_package(BLAS)
  find_package(LAPACK)
  if(BLAS_FOUND AND LAPACK_FOUND)
    # The package config must find OpenBLAS again, not the first vendor FindBLAS tries (MKL, FlexiBLAS, ...):
    # the library may call OpenBLAS-only functions. The consumer's own BLA_VENDOR is restored afterwards.
    string(CONCAT EKINET_BLAS_CONFIG_CODE "set(_ekinet_consumer_bla_vendor \"\${BLA_VENDOR}\")\n"
                  "set(BLA_VENDOR OpenBLAS)\nfind_dependency(BLAS)\nfind_dependency(LAPACK)\n"
                  "set(BLA_VENDOR \"\${_ekinet_consumer_bla_vendor}\")")
  else()
    unset(BLA_VENDOR)
    find_package(BLAS REQUIRED)
    find_package(LAPACK REQUIRED)
    set(EKINET_BLAS_CONFIG_CODE "find_dependency(BLAS)\nfind_dependency(LAPACK)")
  endif()
  set(EKINET_BLAS_TARGETS LAPACK::LAPACK BLAS::BLAS)
  set(EKINET_BLAS_PREFIX "")
  set(EKINET_BLAS_NAME "system BLAS/LAPACK (${BLAS_LIBRARIES})")
endif()
message(STATUS "ekinet: CPU BLAS/LAPACK: ${EKINET_BLAS_NAME}")

# OpenBLAS's strided batched GEMM (the ensemble forward pass); a loop over members otherwise.
include(CheckFunctionExists)
include(CMakePushCheckState)
cmake_push_check_state(RESET)
set(CMAKE_REQUIRED_LIBRARIES ${EKINET_BLAS_TARGETS})
set(CMAKE_REQUIRED_QUIET ON)
check_function_exists(${EKINET_BLAS_PREFIX}cblas_sgemm_batch_strided EKINET_HAVE_GEMM_BATCH_STRIDED)
cmake_pop_check_state()
