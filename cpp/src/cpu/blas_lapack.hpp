// Fortran BLAS/LAPACK entry points, declared here so any conforming library links: scipy-openblas32 exports
// them with the prefix scipy_, system libraries without. Trailing size_t arguments are the hidden lengths
// of the character arguments (gfortran ABI).
#pragma once

#include <cstddef>

#define EKINET_CONCAT_(a, b) a##b
#define EKINET_CONCAT(a, b) EKINET_CONCAT_(a, b)
#define EKINET_BLAS(name) EKINET_CONCAT(EKINET_BLAS_PREFIX, name)

extern "C" {
void EKINET_BLAS(sgemm_)(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                         const int*, const float*, const int*, const float*, float*, const int*, std::size_t,
                         std::size_t);
void EKINET_BLAS(dgemm_)(const char*, const char*, const int*, const int*, const int*, const double*,
                         const double*, const int*, const double*, const int*, const double*, double*, const int*,
                         std::size_t, std::size_t);
void EKINET_BLAS(ssyrk_)(const char*, const char*, const int*, const int*, const float*, const float*, const int*,
                         const float*, float*, const int*, std::size_t, std::size_t);
void EKINET_BLAS(dsyrk_)(const char*, const char*, const int*, const int*, const double*, const double*,
                         const int*, const double*, double*, const int*, std::size_t, std::size_t);
void EKINET_BLAS(strsm_)(const char*, const char*, const char*, const char*, const int*, const int*, const float*,
                         const float*, const int*, float*, const int*, std::size_t, std::size_t, std::size_t,
                         std::size_t);
void EKINET_BLAS(dtrsm_)(const char*, const char*, const char*, const char*, const int*, const int*,
                         const double*, const double*, const int*, double*, const int*, std::size_t, std::size_t,
                         std::size_t, std::size_t);
void EKINET_BLAS(strmm_)(const char*, const char*, const char*, const char*, const int*, const int*, const float*,
                         const float*, const int*, float*, const int*, std::size_t, std::size_t, std::size_t,
                         std::size_t);
void EKINET_BLAS(dtrmm_)(const char*, const char*, const char*, const char*, const int*, const int*,
                         const double*, const double*, const int*, double*, const int*, std::size_t, std::size_t,
                         std::size_t, std::size_t);
void EKINET_BLAS(spotrf_)(const char*, const int*, float*, const int*, int*, std::size_t);
void EKINET_BLAS(dpotrf_)(const char*, const int*, double*, const int*, int*, std::size_t);
void EKINET_BLAS(spotrs_)(const char*, const int*, const int*, const float*, const int*, float*, const int*, int*,
                          std::size_t);
void EKINET_BLAS(dpotrs_)(const char*, const int*, const int*, const double*, const int*, double*, const int*,
                          int*, std::size_t);
void EKINET_BLAS(ssyevd_)(const char*, const char*, const int*, float*, const int*, float*, float*, const int*,
                          int*, const int*, int*, std::size_t, std::size_t);
void EKINET_BLAS(dsyevd_)(const char*, const char*, const int*, double*, const int*, double*, double*, const int*,
                          int*, const int*, int*, std::size_t, std::size_t);

#ifdef EKINET_HAVE_GEMM_BATCH_STRIDED
// OpenBLAS >= 0.3.28 extension (CBLAS interface; 101/102 row/column major, 111/112 no/transpose).
void EKINET_BLAS(cblas_sgemm_batch_strided)(int, int, int, int, int, int, float, const float*, int, int, const float*,
                                            int, int, float, float*, int, int, int);
void EKINET_BLAS(cblas_dgemm_batch_strided)(int, int, int, int, int, int, double, const double*, int, int,
                                            const double*, int, int, double, double*, int, int, int);
#endif
}

namespace ekinet::detail::blas {

#define EKINET_OVERLOAD(name, s_name, d_name)                                          \
  template <class... Args>                                                             \
  void name(float, Args... args) { EKINET_BLAS(s_name)(args...); }                     \
  template <class... Args>                                                             \
  void name(double, Args... args) { EKINET_BLAS(d_name)(args...); }

EKINET_OVERLOAD(gemm, sgemm_, dgemm_)
EKINET_OVERLOAD(syrk, ssyrk_, dsyrk_)
EKINET_OVERLOAD(trsm, strsm_, dtrsm_)
EKINET_OVERLOAD(trmm, strmm_, dtrmm_)
EKINET_OVERLOAD(potrf, spotrf_, dpotrf_)
EKINET_OVERLOAD(potrs, spotrs_, dpotrs_)
EKINET_OVERLOAD(syevd, ssyevd_, dsyevd_)
#ifdef EKINET_HAVE_GEMM_BATCH_STRIDED
EKINET_OVERLOAD(gemm_batch_strided, cblas_sgemm_batch_strided, cblas_dgemm_batch_strided)
#endif

#undef EKINET_OVERLOAD

}  // namespace ekinet::detail::blas
