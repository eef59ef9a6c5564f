// Status: the one error type of Fireflyer. Expected failures (bad input, I/O errors, timeouts) are
// values, never exceptions; programmer errors are FF_ASSERT failures (see assert.h).
//
// Thread-safety: a Status is a value; distinct objects may be used from distinct threads freely.
#pragma once

#include <fmt/format.h>

#include <memory>
#include <string>
#include <string_view>
#include <utility>

namespace ff {

enum class StatusCode : int {
  kOk = 0,
  kInvalidArgument,
  kNotFound,
  kAlreadyExists,
  kOutOfRange,
  kFailedPrecondition,
  kPermissionDenied,
  kResourceExhausted,
  kDeadlineExceeded,
  kUnavailable,
  kAborted,
  kCancelled,
  kDataLoss,
  kIoError,
  kUnimplemented,
  kInternal,
};

// Returns a stable lowercase name such as "invalid argument".
std::string_view status_code_name(StatusCode code);

class [[nodiscard]] Status {
 public:
  // The OK status. Cheap: no allocation.
  Status() = default;
  Status(StatusCode code, std::string message);

  static Status ok() { return Status(); }

  bool is_ok() const { return state_ == nullptr; }
  StatusCode code() const { return state_ ? state_->code : StatusCode::kOk; }
  // Empty for OK.
  const std::string& message() const;

  // "invalid argument: block_table has 3 columns, ..." or "ok".
  std::string to_string() const;

  // Returns a copy whose message is "<context>: <message>"; OK stays OK.
  Status with_context(std::string_view context) const;

  friend bool operator==(const Status& a, const Status& b) {
    return a.code() == b.code() && a.message() == b.message();
  }

 private:
  struct State {
    StatusCode code;
    std::string message;
  };
  // NOTE: a shared immutable state keeps OK statuses allocation-free and copies cheap.
  std::shared_ptr<const State> state_;
};

// Constructors for each error code with fmt-style formatting:
//   return ff::invalid_argument("num_gpus={} is not a multiple of num_nodes={}", gpus, nodes);
#define FF_DEFINE_STATUS_FACTORY(function_name, status_code)                        \
  template <typename... Args>                                                       \
  Status function_name(fmt::format_string<Args...> format, Args&&... args) {        \
    return Status(StatusCode::status_code, fmt::format(format, std::forward<Args>(args)...)); \
  }

FF_DEFINE_STATUS_FACTORY(invalid_argument, kInvalidArgument)
FF_DEFINE_STATUS_FACTORY(not_found, kNotFound)
FF_DEFINE_STATUS_FACTORY(already_exists, kAlreadyExists)
FF_DEFINE_STATUS_FACTORY(out_of_range, kOutOfRange)
FF_DEFINE_STATUS_FACTORY(failed_precondition, kFailedPrecondition)
FF_DEFINE_STATUS_FACTORY(permission_denied, kPermissionDenied)
FF_DEFINE_STATUS_FACTORY(resource_exhausted, kResourceExhausted)
FF_DEFINE_STATUS_FACTORY(deadline_exceeded, kDeadlineExceeded)
FF_DEFINE_STATUS_FACTORY(unavailable, kUnavailable)
FF_DEFINE_STATUS_FACTORY(aborted, kAborted)
FF_DEFINE_STATUS_FACTORY(cancelled, kCancelled)
FF_DEFINE_STATUS_FACTORY(data_loss, kDataLoss)
FF_DEFINE_STATUS_FACTORY(io_error, kIoError)
FF_DEFINE_STATUS_FACTORY(unimplemented, kUnimplemented)
FF_DEFINE_STATUS_FACTORY(internal_error, kInternal)

#undef FF_DEFINE_STATUS_FACTORY

// An io_error whose message ends with strerror(errno_value): "open /x/y: No such file or directory".
Status errno_error(int errno_value, std::string_view what);

}  // namespace ff

template <>
struct fmt::formatter<ff::Status> : fmt::formatter<std::string> {
  auto format(const ff::Status& status, fmt::format_context& context) const {
    return fmt::formatter<std::string>::format(status.to_string(), context);
  }
};

// Evaluates `expression` (a Status or Result<T>) and returns its Status from the enclosing function
// when it is not OK.
#define FF_RETURN_IF_ERROR(expression)                          \
  do {                                                          \
    auto ff_status_or_result_ = (expression);                   \
    if (!ff_status_or_result_.is_ok()) {                        \
      return ::ff::internal::status_of(ff_status_or_result_);   \
    }                                                           \
  } while (false)

namespace ff::internal {
inline const Status& status_of(const Status& status) { return status; }
template <typename R>
auto status_of(const R& result) -> decltype(result.status()) {
  return result.status();
}
}  // namespace ff::internal
