// File: kernel_internal.h
//
// Internal helpers shared by the optimizer kernels in server/optim (sgd.cc, adam.cc, ...). Not part
// of the library's API: nothing outside server/optim includes it, except bench/optimizer_bench.cc,
// whose memory-floor loops are compiled as the kernels are.
//
// The kernels are element loops over raw float pointers. Options that change the loop body
// (weight decay on or off, amsgrad, nesterov, ...) are template parameters, so each loop the
// compiler sees is branch-free and vectorises. DispatchBool turns a runtime flag into such a
// parameter:
//
//   DispatchBool(weight_decay != 0, [&](auto kWeightDecay) {
//     Kernel<decltype(kWeightDecay)::value>(p, g, n);
//   });
//
// Kernels are compiled for AVX2 and for the baseline with OPTD_SIMD_CLONES (base/simd.h).
//
// A kernel that writes parameters counts, in the same loop, those it leaves NaN or +-inf, and
// returns the count (Optimizer::UpdateSegments):
//
//   NonFiniteCount non_finite = 0;
//   for (int64_t i = 0; i < n; ++i) {
//     const float p_new = ...;
//     p[i] = p_new;
//     non_finite += IsNonFinite(p_new);
//   }
//   return non_finite;
//
// SumOfSquares is the one reduction the norm-based kernels share. Coefficients that a float cannot
// hold well (FitsFloat) take a double path.
//
// Stateless; thread-safe.

#ifndef OPTD_SERVER_OPTIM_KERNEL_INTERNAL_H_
#define OPTD_SERVER_OPTIM_KERNEL_INTERNAL_H_

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>

#include "base/simd.h"

namespace optd {
namespace optim_internal {

// Returns f(std::true_type()) if `flag`, else f(std::false_type()); both must return one type.
template <typename F>
inline decltype(auto) DispatchBool(bool flag, F&& f) {
  if (flag) return std::forward<F>(f)(std::true_type());
  return std::forward<F>(f)(std::false_type());
}

// The count of non-finite parameters inside a kernel's loop. int32 lanes are as wide as float
// lanes, so counting costs an and, a compare and a subtract per vector (an int64 count also
// widens every mask to two vectors). A kernel runs on one segment of at most
// Optimizer::kBlockElements elements, far below its range.
using NonFiniteCount = int32_t;

// 1 if `x` is NaN or +-inf, else 0. Branch-free: a loop that adds it up still vectorises.
inline NonFiniteCount IsNonFinite(float x) { return !std::isfinite(x); }

// Sum of x[i]^2 in double, in a fixed order: eight interleaved partial sums (which the compiler
// vectorises) combined pairwise, then the tail.
inline double SumOfSquares(const float* __restrict x, int64_t n) {
  constexpr int kLanes = 8;
  double acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const double xj = x[i + j];
      acc[j] += xj * xj;
    }
  }
  double sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) {
    const double xi = x[i];
    sum += xi * xi;
  }
  return sum;
}

// True if the non-negative coefficient `c` rounds to a normal float or to 0: a huge one would
// overflow to inf (and inf * 0 = NaN), a tiny one would lose digits as a subnormal.
inline bool FitsFloat(double c) {
  return c == 0.0 ||
         (c >= std::numeric_limits<float>::min() && c <= std::numeric_limits<float>::max());
}

}  // namespace optim_internal
}  // namespace optd

#endif  // OPTD_SERVER_OPTIM_KERNEL_INTERNAL_H_
