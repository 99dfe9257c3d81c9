#include "bench/child_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"

namespace optd {
namespace bench {
namespace {

constexpr char kReadyMarker[] = "listening on ";
constexpr absl::Duration kStopGrace = absl::Seconds(5);

std::string ErrnoText(absl::string_view what) {
  return absl::StrCat(what, ": ", std::strerror(errno));
}

// waitpid without blocking until `deadline`; true (and *status set) once the child is reaped.
bool WaitUntil(pid_t pid, absl::Time deadline, int* status) {
  while (true) {
    const pid_t r = waitpid(pid, status, WNOHANG);
    if (r == pid || (r < 0 && errno == ECHILD)) return true;
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(10));
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Start(
    const std::vector<std::string>& argv, absl::Duration timeout) {
  if (argv.empty()) return absl::InvalidArgumentError("ChildProcess::Start: empty argv");
  // Everything the child needs is prepared before fork: after it, only async-signal-safe calls.
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);

  char stderr_path[] = "/tmp/optd-bench-stderr-XXXXXX";
  const int stderr_fd = mkstemp(stderr_path);
  if (stderr_fd < 0) return absl::InternalError(ErrnoText("mkstemp"));
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) {
    close(stderr_fd);
    unlink(stderr_path);
    return absl::InternalError(ErrnoText("pipe2"));
  }
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    close(stderr_fd);
    close(out[0]);
    close(out[1]);
    unlink(stderr_path);
    return absl::InternalError(ErrnoText("fork"));
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);  // never outlive optd-bench
    if (getppid() != parent) _exit(127);
    dup2(out[1], STDOUT_FILENO);  // dup2 clears O_CLOEXEC on the copy
    dup2(stderr_fd, STDERR_FILENO);
    execv(args[0], args.data());
    _exit(127);
  }
  close(out[1]);
  close(stderr_fd);
  std::unique_ptr<ChildProcess> child(new ChildProcess(pid, out[0], stderr_path));

  // Read stdout until the "listening on" line, EOF (the child died) or the timeout.
  const absl::Time deadline = absl::Now() + timeout;
  std::string text;
  while (true) {
    const size_t line_end = text.find('\n');
    if (line_end != std::string::npos) {
      const std::string line = text.substr(0, line_end);
      text.erase(0, line_end + 1);
      const size_t at = line.find(kReadyMarker);
      if (at != std::string::npos) {
        child->address_ = line.substr(at + std::strlen(kReadyMarker));
        return child;
      }
      continue;
    }
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::UnavailableError(absl::StrCat(argv[0], " printed no \"", kReadyMarker,
                                                 "\" line within ", absl::FormatDuration(timeout),
                                                 "; stderr:\n", child->StderrTail()));
    }
    pollfd p{child->stdout_fd_, POLLIN, 0};
    const int ready = poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1);
    if (ready < 0 && errno != EINTR) return absl::InternalError(ErrnoText("poll"));
    if (ready <= 0) continue;
    char buffer[4096];
    const ssize_t n = read(child->stdout_fd_, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return absl::UnavailableError(
          absl::StrCat(argv[0], " exited before listening; stderr:\n", child->StderrTail()));
    }
    text.append(buffer, n);
  }
}

ChildProcess::ChildProcess(pid_t pid, int stdout_fd, std::string stderr_path)
    : pid_(pid), stdout_fd_(stdout_fd), stderr_path_(std::move(stderr_path)) {}

ChildProcess::~ChildProcess() { Stop().IgnoreError(); }

absl::StatusOr<CpuTime> ChildProcess::Cpu() const {
  if (stopped_) return absl::NotFoundError("the process has stopped");
  // The CPU-time clock of another process: all its threads, in nanoseconds.
  clockid_t clock;
  timespec now;
  if (clock_getcpuclockid(pid_, &clock) != 0 || clock_gettime(clock, &now) != 0) {
    return absl::NotFoundError(ErrnoText(absl::StrCat("CPU clock of pid ", pid_)));
  }
  return CpuTime{absl::DurationFromTimespec(now)};
}

void ChildProcess::Terminate() {
  if (!stopped_) kill(pid_, SIGTERM);
}

absl::Status ChildProcess::Stop() {
  if (stopped_) return absl::OkStatus();
  stopped_ = true;
  int status = 0;
  absl::Status result;
  kill(pid_, SIGTERM);
  if (!WaitUntil(pid_, absl::Now() + kStopGrace, &status)) {
    kill(pid_, SIGKILL);
    WaitUntil(pid_, absl::InfiniteFuture(), &status);
    result = absl::InternalError(absl::StrCat("pid ", pid_, " ignored SIGTERM for ",
                                              absl::FormatDuration(kStopGrace), "; killed"));
  } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    result = absl::InternalError(
        absl::StrCat("pid ", pid_, " ended with status ", status, "; stderr:\n", StderrTail()));
  }
  close(stdout_fd_);
  unlink(stderr_path_.c_str());
  return result;
}

std::string ChildProcess::StderrTail() const {
  std::ifstream file(stderr_path_);
  std::stringstream buffer;
  buffer << file.rdbuf();
  std::string text = buffer.str();
  if (text.size() > 4096) text.erase(0, text.size() - 4096);
  return text;
}

}  // namespace bench
}  // namespace optd
