// Result<T>: a value or an error Status (never an OK status without a value).
//
//   Result<Placement> placement = rebalance(...);
//   if (!placement.is_ok()) return placement.status();
//   use(*placement);
//
// or, inside a function returning Status or Result<U>:
//   FF_ASSIGN_OR_RETURN(Placement placement, rebalance(...));
#pragma once

#include <optional>
#include <type_traits>
#include <utility>

#include "ff/common/assert.h"
#include "ff/common/status.h"

namespace ff {

template <typename T>
class [[nodiscard]] Result {
  static_assert(!std::is_same_v<std::decay_t<T>, Status>, "Result<Status> makes no sense; use Status");

 public:
  // NOLINTNEXTLINE(google-explicit-constructor): implicit, so `return value;` works.
  Result(T value) : value_(std::move(value)) {}
  // NOLINTNEXTLINE(google-explicit-constructor): implicit, so `return invalid_argument(...);` works.
  Result(Status status) : status_(std::move(status)) {
    FF_ASSERT(!status_.is_ok(), "a Result must not be built from an OK status without a value");
  }

  bool is_ok() const { return value_.has_value(); }
  const Status& status() const { return status_; }

  // Accessors assert that a value is present: reading the value of a failed Result is a bug.
  T& value() & {
    FF_ASSERT(is_ok(), "value() of a failed Result: {}", status_.to_string());
    return *value_;
  }
  const T& value() const& {
    FF_ASSERT(is_ok(), "value() of a failed Result: {}", status_.to_string());
    return *value_;
  }
  T&& value() && {
    FF_ASSERT(is_ok(), "value() of a failed Result: {}", status_.to_string());
    return std::move(*value_);
  }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  T value_or(T fallback) const& { return is_ok() ? *value_ : std::move(fallback); }

 private:
  std::optional<T> value_;
  Status status_;
};

}  // namespace ff

#define FF_CONCAT_INNER_(a, b) a##b
#define FF_CONCAT_(a, b) FF_CONCAT_INNER_(a, b)

// Declares or assigns `lhs` from a Result expression, returning its Status on error.
#define FF_ASSIGN_OR_RETURN(lhs, expression) \
  FF_ASSIGN_OR_RETURN_IMPL_(FF_CONCAT_(ff_result_, __LINE__), lhs, expression)
#define FF_ASSIGN_OR_RETURN_IMPL_(result_name, lhs, expression) \
  auto result_name = (expression);                              \
  if (!result_name.is_ok()) {                                   \
    return result_name.status();                                \
  }                                                             \
  lhs = std::move(result_name).value()
