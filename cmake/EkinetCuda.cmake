# Decides EKINET_WITH_CUDA from EKINET_CUDA and what is installed; enables the CUDA language when used.
set(EKINET_WITH_CUDA OFF)
if(NOT EKINET_CUDA STREQUAL "OFF")
  find_package(CUDAToolkit QUIET)
  include(CheckLanguage)
  check_language(CUDA)
  if(CUDAToolkit_FOUND AND CMAKE_CUDA_COMPILER AND TARGET CUDA::cublas AND TARGET CUDA::cusolver)
    set(EKINET_WITH_CUDA ON)
  elseif(EKINET_CUDA STREQUAL "ON")
    message(FATAL_ERROR "EKINET_CUDA=ON but no CUDA toolkit with nvcc, cuBLAS and cuSOLVER was found. "
                        "Install the CUDA toolkit, set CUDAToolkit_ROOT, or configure with -DEKINET_CUDA=OFF.")
  endif()
endif()

if(EKINET_WITH_CUDA)
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES 80 90)  # A100 and H100/H200; override with -DCMAKE_CUDA_ARCHITECTURES=...
  endif()
  enable_language(CUDA)
  message(STATUS "ekinet: CUDA backend ON (toolkit ${CUDAToolkit_VERSION}, architectures ${CMAKE_CUDA_ARCHITECTURES})")
else()
  message(STATUS "ekinet: CUDA backend OFF")
endif()
