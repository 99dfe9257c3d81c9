// File: fuzz_check.h
//
// FUZZ_CHECK: the fuzzers' assertion. A property that does not hold prints what failed (and a
// detail, if given) and aborts, which libFuzzer reports as a crash and saves the input. Not
// compiled out: the fuzzers are built without NDEBUG or not, alike.

#ifndef OPTD_FUZZ_FUZZ_CHECK_H_
#define OPTD_FUZZ_FUZZ_CHECK_H_

#include <cstdio>
#include <cstdlib>
#include <string>

namespace optd {
namespace fuzz {

[[noreturn]] inline void CheckFailed(const char* file, int line, const char* condition,
                                     const std::string& detail) {
  std::fprintf(stderr, "%s:%d: FUZZ_CHECK failed: %s\n", file, line, condition);
  if (!detail.empty()) std::fprintf(stderr, "  %s\n", detail.c_str());
  std::fflush(stderr);
  std::abort();
}

}  // namespace fuzz
}  // namespace optd

// FUZZ_CHECK(condition) and FUZZ_CHECK(condition, detail): `detail` (a std::string, evaluated
// only on failure) says what was seen.
#define FUZZ_CHECK(condition, ...)                                                         \
  do {                                                                                     \
    if (!(condition)) {                                                                    \
      ::optd::fuzz::CheckFailed(__FILE__, __LINE__, #condition, std::string(__VA_ARGS__)); \
    }                                                                                      \
  } while (0)

#endif  // OPTD_FUZZ_FUZZ_CHECK_H_
