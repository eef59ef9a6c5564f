// Always-on assertions for programmer errors (violated invariants), never for bad user input:
// bad input is a Status. A failed assertion prints the condition, the location and a formatted
// message to stderr and aborts, in every build type.
#pragma once

#include <fmt/format.h>

#include <string>

namespace ff::internal {
[[noreturn]] void assertion_failed(const char* condition, const char* file, int line, const std::string& message);
}  // namespace ff::internal

#define FF_LIKELY_(x) __builtin_expect(!!(x), 1)

// FF_ASSERT(condition) or FF_ASSERT(condition, "format {}", args...).
#define FF_ASSERT(condition, ...)                                                                        \
  do {                                                                                                   \
    if (!FF_LIKELY_(condition)) {                                                                        \
      ::ff::internal::assertion_failed(#condition, __FILE__, __LINE__, ::fmt::format("" __VA_ARGS__));   \
    }                                                                                                    \
  } while (false)

#define FF_ASSERT_OP_(a, b, op, ...)                                                                     \
  do {                                                                                                   \
    const auto& ff_a_ = (a);                                                                             \
    const auto& ff_b_ = (b);                                                                             \
    if (!FF_LIKELY_(ff_a_ op ff_b_)) {                                                                   \
      ::ff::internal::assertion_failed(#a " " #op " " #b, __FILE__, __LINE__,                            \
                                       ::ff::internal::compare_message(ff_a_, ff_b_, ::fmt::format("" __VA_ARGS__))); \
    }                                                                                                    \
  } while (false)

namespace ff::internal {
template <typename A, typename B>
std::string compare_message(const A& a, const B& b, const std::string& extra) {
  return extra.empty() ? ::fmt::format("{} vs {}", a, b) : ::fmt::format("{} vs {}: {}", a, b, extra);
}
}  // namespace ff::internal

// FF_ASSERT_EQ(a, b) or FF_ASSERT_EQ(a, b, "format {}", args...); the failure prints both values.
#define FF_ASSERT_EQ(a, b, ...) FF_ASSERT_OP_(a, b, ==, __VA_ARGS__)
#define FF_ASSERT_NE(a, b, ...) FF_ASSERT_OP_(a, b, !=, __VA_ARGS__)
#define FF_ASSERT_LT(a, b, ...) FF_ASSERT_OP_(a, b, <, __VA_ARGS__)
#define FF_ASSERT_LE(a, b, ...) FF_ASSERT_OP_(a, b, <=, __VA_ARGS__)
#define FF_ASSERT_GT(a, b, ...) FF_ASSERT_OP_(a, b, >, __VA_ARGS__)
#define FF_ASSERT_GE(a, b, ...) FF_ASSERT_OP_(a, b, >=, __VA_ARGS__)

// Marks code that must be unreachable.
#define FF_UNREACHABLE(...) ::ff::internal::assertion_failed("unreachable", __FILE__, __LINE__, ::fmt::format("" __VA_ARGS__))
