// File: status_matchers.h
//
// gMock matchers and gTest assertions for absl::Status and absl::StatusOr, shared by every optd
// test (abseil 20220623 ships none):
//
//   EXPECT_OK(session->Update(update));                        // Status or StatusOr
//   ASSERT_OK(result);
//   EXPECT_THAT(store.Find("x"), StatusIs(absl::StatusCode::kNotFound));
//   EXPECT_THAT(Validate(o), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("beta1")));
//   EXPECT_THAT(Parse("3"), IsOkAndHolds(3));
//
// Test-only: included by *_test.cc files (target optd::status_matchers). Stateless.

#ifndef OPTD_BASE_STATUS_MATCHERS_H_
#define OPTD_BASE_STATUS_MATCHERS_H_

#include <ostream>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace optd {
namespace testing_internal {

inline const absl::Status& ToStatus(const absl::Status& status) { return status; }
template <typename T>
const absl::Status& ToStatus(const absl::StatusOr<T>& status_or) {
  return status_or.status();
}

inline ::testing::AssertionResult IsOk(const absl::Status& status) {
  if (status.ok()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << status;
}

}  // namespace testing_internal

// Matches a Status or StatusOr whose code is `code` and whose message matches `message`.
MATCHER_P2(StatusIs, code, message,
           std::string(negation ? "isn't" : "is") + " a status with code " +
               absl::StatusCodeToString(code) + " and a message that " +
               ::testing::DescribeMatcher<std::string>(message)) {
  const absl::Status& status = ::optd::testing_internal::ToStatus(arg);
  if (status.code() != code) {
    *result_listener << "whose status is " << status;
    return false;
  }
  return ::testing::ExplainMatchResult(message, std::string(status.message()), result_listener);
}

// Matches a Status or StatusOr whose code is `code`, whatever its message.
inline auto StatusIs(absl::StatusCode code) { return StatusIs(code, ::testing::_); }

// Matches an OK StatusOr whose value matches `value`.
MATCHER_P(IsOkAndHolds, value, "is OK and holds a value that matches") {
  if (!arg.ok()) {
    *result_listener << "whose status is " << arg.status();
    return false;
  }
  return ::testing::ExplainMatchResult(value, *arg, result_listener);
}

}  // namespace optd

// Expects `expr` (an absl::Status or absl::StatusOr, evaluated once) to be OK; prints the status
// otherwise.
#define EXPECT_OK(expr) \
  EXPECT_TRUE(::optd::testing_internal::IsOk(::optd::testing_internal::ToStatus(expr)))
#define ASSERT_OK(expr) \
  ASSERT_TRUE(::optd::testing_internal::IsOk(::optd::testing_internal::ToStatus(expr)))

#endif  // OPTD_BASE_STATUS_MATCHERS_H_
