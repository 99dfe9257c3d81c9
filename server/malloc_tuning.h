// File: malloc_tuning.h
//
// TuneMallocForLargeMessages: glibc malloc settings for a process that allocates and frees
// multi-megabyte buffers on every call (a 1M-float step moves 4 MB each way: gRPC's receive
// buffer, the parsed request, the decoded gradient, the encoded reply, its serialisation).
//
// By default glibc serves a block above its mmap threshold (adaptive, at most 32 MiB) with a fresh
// mmap() and hands freed memory at the top of a heap back to the kernel, so every such buffer is
// new memory whose first touch page-faults; on the virtual machines optd was built on that costs
// about 10 ns per float, several times the optimizer step itself. With the threshold at its
// maximum and trimming only above 1 GiB free, freed buffers are reused. The price: memory freed
// after a burst of large calls stays in the process (RSS) for the next ones.
//
// Called once by main() of optd and of optd-echo (bench/, so both sides of the benchmark allocate
// alike), before any thread starts. Does nothing when GLIBC_TUNABLES is set: an operator's own
// malloc tunables win. Not thread-safe; returns nothing (glibc ignores settings it refuses).
//
// StartIdleTrimmer: the price above, paid only while steps run. A background thread looks at the
// heap every kTrimCheckInterval; once its free memory has stayed unchanged (nothing allocated or
// freed: no step in flight) for two checks in a row and is over kTrimMinFreeBytes, it hands it
// back to the kernel (malloc_trim). So a server that stops training shrinks to what its sessions
// hold (parameters and optimizer state), while a training one keeps reusing its message buffers.
// Called once by optd's main(), after TuneMallocForLargeMessages; the thread runs until exit.

#ifndef OPTD_SERVER_MALLOC_TUNING_H_
#define OPTD_SERVER_MALLOC_TUNING_H_

namespace optd {

void TuneMallocForLargeMessages();

inline constexpr int kTrimCheckIntervalMillis = 1000;
inline constexpr long kTrimMinFreeBytes = 16L << 20;

void StartIdleTrimmer();

}  // namespace optd

#endif  // OPTD_SERVER_MALLOC_TUNING_H_
