// File: memory_limits.h
//
// DefaultMemoryBudget: the memory budget optd uses when --max_memory_bytes is not given (see
// server/session/memory_budget.h): kDefaultBudgetFraction of the smallest of
//   - the machine's physical memory (MemTotal in /proc/meminfo),
//   - the cgroup's limit (cgroup v2 memory.max, or v1 memory.limit_in_bytes), when there is one,
//   - what an address-space limit (RLIMIT_AS, e.g. `prlimit --as`) leaves after the mappings the
//     process already has (its libraries, thread stacks and heap at start-up),
// so that requests are refused with RESOURCE_EXHAUSTED before the kernel or the allocator refuses
// optd itself. The rest is headroom for what the budget does not count (gRPC's own buffers,
// malloc's retained free memory, encoded replies).
//
// Who calls it: main.cc, once, at start-up. Reads /proc and /sys: not for hot paths.

#ifndef OPTD_SERVER_MEMORY_LIMITS_H_
#define OPTD_SERVER_MEMORY_LIMITS_H_

#include <cstdint>
#include <string>

namespace optd {

inline constexpr double kDefaultBudgetFraction = 0.75;

// The default budget, and in *explanation (if not null) where it came from, for the start-up log.
int64_t DefaultMemoryBudget(std::string* explanation = nullptr);

}  // namespace optd

#endif  // OPTD_SERVER_MEMORY_LIMITS_H_
