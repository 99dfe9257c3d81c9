#include "client/cpp/fan_out.h"

#include <thread>
#include <vector>

namespace optd {
namespace client {

void FanOut(int n, const std::function<void(int)>& fn) {
  std::vector<std::thread> threads;
  threads.reserve(n > 1 ? n - 1 : 0);
  for (int i = 1; i < n; ++i) threads.emplace_back(fn, i);
  if (n >= 1) fn(0);
  for (std::thread& t : threads) t.join();
}

}  // namespace client
}  // namespace optd
