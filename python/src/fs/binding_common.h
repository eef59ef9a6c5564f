// What fs_binding.cc (fireflyer._fs) and usrbio_binding.cc (fireflyer._fs.usrbio) share: Status ->
// Python exception translation, and the hook through which objects built on a Client's FileClient (an
// in-process RingServer) are stopped before that client closes.
#pragma once

#include <nanobind/nanobind.h>

#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "ff/common/result.h"
#include "ff/fs/file_client.h"
#include "ff/fs/meta.h"

namespace ff::fs::python {

namespace nb = nanobind;

// A Status on its way to Python. Thrown anywhere (also with the GIL released); translate(), registered
// by the module, turns it into the Python exception once the GIL is held again: ValueError for an
// untagged invalid argument, else OSError(errno, message), whose constructor picks the subclass
// (FileNotFoundError, TimeoutError, BlockingIOError, BrokenPipeError, ...).
struct StatusError {
  bool value_error = false;
  int number = 0;
  std::string message;
};

// How a Status becomes an errno: meta::errno_of (the "[ENOENT] " tag, else by code) by default.
using ErrnoOf = int (*)(const Status&);

[[noreturn]] inline void raise(const Status& status, ErrnoOf errno_for = &meta::errno_of) {
  const std::string& message = status.message();
  if (status.code() == StatusCode::kInvalidArgument && !message.starts_with("[E")) throw StatusError{true, 0, message};
  throw StatusError{false, errno_for(status), message};
}

inline void check(const Status& status, ErrnoOf errno_for = &meta::errno_of) {
  if (!status.is_ok()) raise(status, errno_for);
}

template <typename T>
T value_of(Result<T> result, ErrnoOf errno_for = &meta::errno_of) {
  if (!result.is_ok()) raise(result.status(), errno_for);
  return std::move(result).value();
}

inline void translate(const std::exception_ptr& pointer, void*) {
  try {
    std::rethrow_exception(pointer);
  } catch (const StatusError& error) {
    if (error.value_error) {
      PyErr_SetString(PyExc_ValueError, error.message.c_str());
      return;
    }
    PyObject* exception = PyObject_CallFunction(PyExc_OSError, "is", error.number, error.message.c_str());
    if (exception == nullptr) return;  // the failed call set an error already
    PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exception)), exception);
    Py_DECREF(exception);
  }
}

// Objects that use a Client's FileClient and must be stopped before it is destroyed. The Client calls
// stop_all() at the start of close(); a user registers a stop function and unregisters it when it
// stops on its own. Thread-safe; stop functions run without the lock held (they may unregister).
class ClientUsers {
 public:
  uint64_t add(std::function<void()> stop) {
    std::lock_guard lock(mutex_);
    users_.emplace(++next_, std::move(stop));
    return next_;
  }
  void remove(uint64_t id) {
    std::lock_guard lock(mutex_);
    users_.erase(id);
  }
  void stop_all() {
    std::map<uint64_t, std::function<void()>> users;
    {
      std::lock_guard lock(mutex_);
      users.swap(users_);
    }
    for (auto& [id, stop] : users) stop();
  }

 private:
  std::mutex mutex_;  // guards users_, next_
  std::map<uint64_t, std::function<void()>> users_;
  uint64_t next_ = 0;
};

// What usrbio_binding needs of a fireflyer._fs.Client object: its FileClient (valid until the client
// closes) and its ClientUsers, where a RingServer registers to be stopped first.
struct ClientRef {
  FileClient* client = nullptr;
  std::shared_ptr<ClientUsers> users;
};
using ClientRefOf = std::function<ClientRef(nb::handle)>;

// fireflyer._fs.usrbio (usrbio_binding.cc).
void bind_usrbio(nb::module_& module, ClientRefOf client_ref_of);

}  // namespace ff::fs::python
