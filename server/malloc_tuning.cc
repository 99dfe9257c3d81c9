#include "server/malloc_tuning.h"

#include <chrono>
#include <cstdlib>
#include <thread>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace optd {

void TuneMallocForLargeMessages() {
#if defined(__GLIBC__)
  if (std::getenv("GLIBC_TUNABLES") != nullptr) return;
  constexpr int kMmapThreshold = 32 << 20;  // glibc's maximum on 64-bit (HEAP_MAX_SIZE / 2)
  constexpr int kTrimThreshold = 1 << 30;
  mallopt(M_MMAP_THRESHOLD, kMmapThreshold);
  mallopt(M_TRIM_THRESHOLD, kTrimThreshold);
  mallopt(M_ARENA_MAX, 2);
#endif
}

void StartIdleTrimmer() {
#if defined(__GLIBC__)
  std::thread([] {
    size_t last_free = 0;
    int unchanged = 0;
    while (true) {
      std::this_thread::sleep_for(std::chrono::milliseconds(kTrimCheckIntervalMillis));
      const struct mallinfo2 info = mallinfo2();
      unchanged = info.fordblks == last_free ? unchanged + 1 : 0;
      last_free = info.fordblks;
      if (unchanged == 2 && info.fordblks > static_cast<size_t>(kTrimMinFreeBytes)) {
        malloc_trim(0);
        last_free = mallinfo2().fordblks;
      }
    }
  }).detach();
#endif
}

}  // namespace optd
