#include "server/memory_limits.h"

#include <sys/resource.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace optd {
namespace {

constexpr int64_t kUnlimited = std::numeric_limits<int64_t>::max();

// The first line of `path` as a byte count; kUnlimited if absent, "max" or unreadable.
int64_t ReadLimit(const char* path) {
  std::ifstream in(path);
  std::string line;
  if (!std::getline(in, line)) return kUnlimited;
  int64_t value = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(line), &value) || value <= 0) return kUnlimited;
  return value;
}

// A "<key>: <n> kB" line of a /proc file, in bytes; kUnlimited if absent.
int64_t ReadKb(const char* path, absl::string_view key) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    absl::string_view rest = line;
    if (!absl::ConsumePrefix(&rest, key) || !absl::ConsumePrefix(&rest, ":")) continue;
    rest = absl::StripAsciiWhitespace(rest);
    absl::ConsumeSuffix(&rest, "kB");
    int64_t kb = 0;
    if (absl::SimpleAtoi(absl::StripAsciiWhitespace(rest), &kb)) return kb * 1024;
  }
  return kUnlimited;
}

}  // namespace

int64_t DefaultMemoryBudget(std::string* explanation) {
  const int64_t physical = ReadKb("/proc/meminfo", "MemTotal");
  // cgroup v2 (the process's own group is mounted at /sys/fs/cgroup in a container), then v1.
  const int64_t cgroup = std::min(ReadLimit("/sys/fs/cgroup/memory.max"),
                                  ReadLimit("/sys/fs/cgroup/memory/memory.limit_in_bytes"));
  int64_t address_space = kUnlimited;
  rlimit limit{};
  if (getrlimit(RLIMIT_AS, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY) {
    const int64_t mapped = ReadKb("/proc/self/status", "VmSize");
    address_space = static_cast<int64_t>(limit.rlim_cur) - (mapped == kUnlimited ? 0 : mapped);
  }
  const int64_t smallest = std::max<int64_t>(std::min({physical, cgroup, address_space}), 1);
  const int64_t budget =
      smallest == kUnlimited
          ? kUnlimited
          : std::max<int64_t>(1, static_cast<int64_t>(kDefaultBudgetFraction * smallest));
  if (explanation != nullptr) {
    const char* source = smallest == address_space ? "the address-space limit (RLIMIT_AS) less "
                                                     "the process's mappings"
                         : smallest == cgroup      ? "the cgroup's memory limit"
                                                   : "the machine's memory";
    *explanation = absl::StrCat(static_cast<int>(kDefaultBudgetFraction * 100), "% of ", source,
                                " (", smallest, " bytes)");
  }
  return budget;
}

}  // namespace optd
