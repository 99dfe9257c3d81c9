// File: kernel_internal.h
//
// Internal helpers shared by the optimizer kernels in server/optim (sgd.cc, adam.cc, ...). Not part
// of the library's API: nothing outside server/optim includes it.
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
// Stateless; thread-safe.

#ifndef OPTD_SERVER_OPTIM_KERNEL_INTERNAL_H_
#define OPTD_SERVER_OPTIM_KERNEL_INTERNAL_H_

#include <type_traits>
#include <utility>

namespace optd {
namespace optim_internal {

// Calls f(std::true_type()) if `flag`, else f(std::false_type()).
template <typename F>
inline void DispatchBool(bool flag, F&& f) {
  if (flag) {
    std::forward<F>(f)(std::true_type());
  } else {
    std::forward<F>(f)(std::false_type());
  }
}

}  // namespace optim_internal
}  // namespace optd

#endif  // OPTD_SERVER_OPTIM_KERNEL_INTERNAL_H_
