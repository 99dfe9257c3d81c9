// File: child_process.h
//
// ChildProcess: a server binary (optd, optd-echo) that optd-bench starts, waits for until it prints
// "<name> listening on HOST:PORT", and stops by its pid: SIGTERM, up to 5 s to exit, then SIGKILL.
// The destructor stops it too, so every return path (errors included) leaves no server behind; a
// child also gets SIGTERM if optd-bench itself dies (PR_SET_PDEATHSIG).
//
// The child's stdout is read only up to the "listening on" line; its stderr goes to a temporary
// file whose text is returned with any start-up failure.
//
// Thread safety: thread-compatible. Create children before the process starts other threads
// (fork in a threaded process is only safe because the child execs at once).

#ifndef OPTD_BENCH_CHILD_PROCESS_H_
#define OPTD_BENCH_CHILD_PROCESS_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace optd {
namespace bench {

// CPU time (user + system, all threads) a process has used so far.
struct CpuTime {
  absl::Duration total;
};

class ChildProcess {
 public:
  // Runs argv[0] with arguments argv[1..] and waits up to `timeout` for a stdout line containing
  // "listening on "; the rest of that line is address(). Unavailable if the child exits or stays
  // silent (its stderr is in the message); InvalidArgument for an empty argv.
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Start(const std::vector<std::string>& argv,
                                                             absl::Duration timeout);

  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ~ChildProcess();  // Stop()

  pid_t pid() const { return pid_; }
  // "HOST:PORT" as the child printed it.
  const std::string& address() const { return address_; }

  // CPU time the child has used (its process CPU-time clock). NotFound once stopped.
  absl::StatusOr<CpuTime> Cpu() const;

  // Sends SIGTERM and returns at once (so several children can shut down in parallel); Stop()
  // then waits. No effect once stopped.
  void Terminate();

  // SIGTERM, waits up to 5 s, then SIGKILL. OK if the child exited with status 0 after SIGTERM;
  // Internal otherwise (killed, or a non-zero exit). Later calls return OK and do nothing.
  absl::Status Stop();

 private:
  ChildProcess(pid_t pid, int stdout_fd, std::string stderr_path);

  // The child's stderr so far (at most the last 4 KiB).
  std::string StderrTail() const;

  pid_t pid_;
  int stdout_fd_;  // read end of the child's stdout, kept open so late prints never SIGPIPE it
  std::string stderr_path_;
  std::string address_;
  bool stopped_ = false;
};

}  // namespace bench
}  // namespace optd

#endif  // OPTD_BENCH_CHILD_PROCESS_H_
