#include <gtest/gtest.h>

#include <string>

#include "ff/common/result.h"
#include "ff/common/status.h"

namespace ff {
namespace {

Result<int> parse_positive(int value) {
  if (value <= 0) return invalid_argument("value={} must be positive", value);
  return value;
}

Result<int> doubled(int value) {
  FF_ASSIGN_OR_RETURN(int parsed, parse_positive(value));
  return parsed * 2;
}

Status check_both(int a, int b) {
  FF_RETURN_IF_ERROR(parse_positive(a));
  FF_RETURN_IF_ERROR(parse_positive(b).status().with_context("second"));
  return Status::ok();
}

TEST(StatusTest, OkHasNoMessage) {
  Status status;
  EXPECT_TRUE(status.is_ok());
  EXPECT_EQ(status.code(), StatusCode::kOk);
  EXPECT_EQ(status.message(), "");
  EXPECT_EQ(status.to_string(), "ok");
}

TEST(StatusTest, FactoriesFormatMessages) {
  Status status = invalid_argument("num_gpus={} is not a multiple of num_nodes={}", 7, 2);
  EXPECT_FALSE(status.is_ok());
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "num_gpus=7 is not a multiple of num_nodes=2");
  EXPECT_EQ(status.to_string(), "invalid argument: num_gpus=7 is not a multiple of num_nodes=2");
  EXPECT_EQ(fmt::format("{}", not_found("x")), "not found: x");
}

TEST(StatusTest, WithContextPrefixesErrorsAndKeepsOk) {
  EXPECT_EQ(io_error("disk full").with_context("writing chunk 3").message(), "writing chunk 3: disk full");
  EXPECT_TRUE(Status::ok().with_context("anything").is_ok());
}

TEST(StatusTest, ErrnoErrorNamesTheOperation) {
  Status status = errno_error(ENOENT, "open /nonexistent");
  EXPECT_EQ(status.code(), StatusCode::kIoError);
  EXPECT_EQ(status.message(), "open /nonexistent: No such file or directory");
}

TEST(ResultTest, ValueAndErrorPropagate) {
  Result<int> good = doubled(21);
  ASSERT_TRUE(good.is_ok());
  EXPECT_EQ(*good, 42);

  Result<int> bad = doubled(-3);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_EQ(bad.status().message(), "value=-3 must be positive");
  EXPECT_EQ(bad.value_or(7), 7);
}

TEST(ResultTest, ReturnIfErrorStopsAtFirstFailure) {
  EXPECT_TRUE(check_both(1, 2).is_ok());
  EXPECT_EQ(check_both(-1, -2).message(), "value=-1 must be positive");
  EXPECT_EQ(check_both(1, -2).message(), "second: value=-2 must be positive");
}

TEST(ResultTest, MoveOnlyValues) {
  Result<std::unique_ptr<int>> result = std::make_unique<int>(5);
  std::unique_ptr<int> owned = std::move(result).value();
  EXPECT_EQ(*owned, 5);
}

TEST(AssertDeathTest, FailedAssertionAbortsWithMessage) {
  EXPECT_DEATH(FF_ASSERT(1 + 1 == 3, "arithmetic is {}", "broken"), "assertion failed: 1 \\+ 1 == 3: arithmetic is broken");
  EXPECT_DEATH(FF_ASSERT_EQ(2, 3), "2 vs 3");
  EXPECT_DEATH({ Result<int> failed = invalid_argument("bad"); (void)failed.value(); }, "value\\(\\) of a failed Result");
}

}  // namespace
}  // namespace ff
