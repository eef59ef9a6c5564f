// fireflyer._fs.usrbio: the USRBIO-style shared-memory rings (include/ff/fs/usrbio.h,
// docs/fs-usrbio.md) for Python: Iov (with a numpy view of the shared buffer, no copy), Ior (prep,
// submit, wait), register_fd, and RingServer (an in-process server over a fireflyer.fs Client).
//
//   from fireflyer._fs import usrbio
//   iov = usrbio.Iov("job0", 64 << 20); buf = iov.array()       # numpy uint8 view of /dev/shm/ff-iov-job0
//   ior = usrbio.Ior("job0", iov, entries=256)
//   ior.register_with_mount("/mnt/ff")                          # or usrbio.RingServer(client._native, "job0")
//   fd = os.open("/mnt/ff/data.bin", os.O_RDONLY); f = usrbio.register_fd(fd, "/mnt/ff")
//   for i in range(64): ior.prep_read(f, i << 20, 1 << 20, i << 20, i)
//   ior.submit(); done = ior.wait(64, timeout_ms=10_000)        # [(bytes or -errno, user_data), ...]
//
// Errors: ValueError (bad arguments), TimeoutError (wait timed out; the message names the server's
// state and heartbeat age), BlockingIOError (ring full: reap first), BrokenPipeError (the server
// detached or found the ring broken), FileNotFoundError / PermissionError / FileExistsError / OSError
// with the errno otherwise. Waits release the GIL.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/function.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/unique_ptr.h>
#include <nanobind/stl/vector.h>

#include <cerrno>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "binding_common.h"
#include "ff/fs/usrbio.h"

namespace nb = nanobind;

namespace ff::fs::python {

namespace {

// Ring errors by code where they carry no errno tag: a wait past its timeout is TimeoutError, a full
// ring BlockingIOError, a detached server or broken ring BrokenPipeError.
int ring_errno(const Status& status) {
  if (status.message().starts_with("[E")) return meta::errno_of(status);
  switch (status.code()) {
    case StatusCode::kDeadlineExceeded: return ETIMEDOUT;
    case StatusCode::kResourceExhausted: return EAGAIN;
    case StatusCode::kUnavailable: return EPIPE;
    case StatusCode::kAlreadyExists: return EEXIST;
    case StatusCode::kNotFound: return ENOENT;
    case StatusCode::kPermissionDenied: return EACCES;
    default: return meta::errno_of(status);
  }
}
void ring_check(const Status& status) { check(status, &ring_errno); }
template <typename T>
T ring_value(Result<T> result) {
  return value_of(std::move(result), &ring_errno);
}

struct PyIov {
  usrbio::Iov iov;
  usrbio::Iov& get() {
    if (iov.data() == nullptr) throw nb::value_error("the Iov is closed");
    return iov;
  }
};

struct PyIor {
  usrbio::Ior ior;
  usrbio::Ior& get() {
    if (ior.capacity() == 0) throw nb::value_error("the Ior is closed");
    return ior;
  }
};

// An in-process server over a Client's FileClient. It is registered with the Client (ClientUsers), whose
// close() stops it first, so the FileClient never goes while the server uses it (whichever of
// RingServer.stop() and Client.close() comes first; keep_alive keeps the Client object alive as long).
struct PyRingServer {
  struct State {
    std::mutex mutex;  // guards io, server
    std::unique_ptr<usrbio::FileClientBatchIo> io;
    std::unique_ptr<usrbio::RingServer> server;
  };
  std::shared_ptr<State> state;
  std::shared_ptr<ClientUsers> users;
  uint64_t user_id = 0;

  PyRingServer(std::shared_ptr<State> s, std::shared_ptr<ClientUsers> u) : state(std::move(s)), users(std::move(u)) {
    std::weak_ptr<State> weak = state;
    user_id = users->add([weak] {
      if (auto alive = weak.lock()) stop_state(*alive);
    });
  }
  // The server's threads never take the GIL, so joining them with it held cannot deadlock.
  ~PyRingServer() {
    users->remove(user_id);
    stop_state(*state);
  }
  // Finishes the current batch, closes the ring's files, detaches.
  static void stop_state(State& s) {
    std::lock_guard lock(s.mutex);
    s.server.reset();
    s.io.reset();
  }
  void stop() {
    users->remove(user_id);
    nb::gil_scoped_release release;
    stop_state(*state);
  }
  bool running() {
    std::lock_guard lock(state->mutex);
    return state->server && state->server->running();
  }
  usrbio::RingServer::Stats stats() {
    std::lock_guard lock(state->mutex);
    if (!state->server) throw nb::value_error("the RingServer is stopped");
    return state->server->stats();
  }
};

}  // namespace

void bind_usrbio(nb::module_& parent, ClientRefOf client_ref_of) {
  nb::module_ module = parent.def_submodule("usrbio", "USRBIO-style shared-memory I/O rings (docs/fs-usrbio.md)");
  module.attr("VIRTUAL_DIR") = std::string(usrbio::kVirtualDir);
  module.attr("MAX_ENTRIES") = usrbio::kMaxEntries;

  nb::class_<PyIov>(module, "Iov", "A named shared-memory data buffer (/dev/shm/ff-iov-<name>)")
      .def(
          "__init__",
          [](PyIov* self, const std::string& name, uint64_t size) {
            new (self) PyIov{ring_value(usrbio::Iov::create(name, size))};
          },
          nb::arg("name"), nb::arg("size"), "Creates the buffer (sparse: pages cost memory when touched).")
      .def_static(
          "open", [](const std::string& name) { return new PyIov{ring_value(usrbio::Iov::open(name))}; },
          nb::arg("name"), "Maps an existing buffer (another process's).")
      .def_static(
          "remove_stale", [](const std::string& name) { ring_check(usrbio::Iov::remove_stale(name)); }, nb::arg("name"),
          "Removes /dev/shm/ff-iov-<name> and /dev/shm/ff-ior-<name> left by a crashed process.")
      .def_prop_ro("name", [](PyIov& self) { return self.get().name(); })
      .def_prop_ro("size", [](PyIov& self) { return self.get().size(); })
      .def_prop_ro("path", [](PyIov& self) { return self.get().path(); })
      .def(
          "array",
          [](nb::handle self_handle) {
            PyIov& self = nb::cast<PyIov&>(self_handle);
            usrbio::Iov& iov = self.get();
            const size_t shape[1] = {static_cast<size_t>(iov.size())};
            // NOTE: a view of the shared memory, kept alive by the Iov object (no copy).
            return nb::ndarray<nb::numpy, uint8_t, nb::ndim<1>>(reinterpret_cast<uint8_t*>(iov.data()), 1, shape,
                                                                self_handle);
          },
          "A writable numpy uint8 view of the whole buffer (valid while the Iov is open).")
      .def(
          "close", [](PyIov& self) { self.iov = usrbio::Iov(); },
          "Unmaps it (the creator also unlinks the name). Views from array() must not be used after this.");

  nb::class_<PyIor>(module, "Ior", "A submission/completion ring pair bound to one Iov (/dev/shm/ff-ior-<name>)")
      .def(
          "__init__",
          [](PyIor* self, const std::string& name, PyIov& iov, uint32_t entries, int32_t io_depth,
             int32_t io_timeout_ms) {
            new (self) PyIor{ring_value(usrbio::Ior::create(
                name, iov.get(), {.entries = entries, .io_depth = io_depth, .io_timeout_ms = io_timeout_ms}))};
          },
          nb::arg("name"), nb::arg("iov"), nb::arg("entries") = 1024, nb::arg("io_depth") = 0,
          nb::arg("io_timeout_ms") = 0, nb::keep_alive<1, 3>(),
          "entries: a power of two, 2 .. MAX_ENTRIES. One thread submits, one thread waits. io_depth (3FS's): 0 = "
          "the server takes whatever is submitted; n > 0 = batches of exactly n (a partial one waits, at most "
          "io_timeout_ms when that is > 0); n < 0 = at most -n per batch.")
      .def(
          "prep_read",
          [](PyIor& self, uint64_t file, uint64_t offset, uint64_t length, uint64_t iov_offset, uint64_t user_data) {
            return ring_value(self.get().prep_read(file, offset, length, iov_offset, user_data));
          },
          nb::arg("file"), nb::arg("offset"), nb::arg("length"), nb::arg("iov_offset"), nb::arg("user_data") = 0)
      .def(
          "prep_write",
          [](PyIor& self, uint64_t file, uint64_t offset, uint64_t length, uint64_t iov_offset, uint64_t user_data) {
            return ring_value(self.get().prep_write(file, offset, length, iov_offset, user_data));
          },
          nb::arg("file"), nb::arg("offset"), nb::arg("length"), nb::arg("iov_offset"), nb::arg("user_data") = 0)
      .def(
          "prep_close",
          [](PyIor& self, uint64_t file, uint64_t user_data) {
            return ring_value(self.get().prep_close(file, user_data));
          },
          nb::arg("file"), nb::arg("user_data") = 0)
      .def(
          "submit", [](PyIor& self) { return ring_value(self.get().submit()); },
          "Publishes every prepared entry with one doorbell; returns how many.")
      .def(
          "wait",
          [](PyIor& self, size_t min_results, size_t max_results, int64_t timeout_ms) {
            usrbio::Ior& ior = self.get();
            if (max_results == 0) max_results = ior.capacity();
            if (max_results < min_results) max_results = min_results;
            std::vector<usrbio::Completion> out(max_results);
            Result<size_t> got = [&] {
              nb::gil_scoped_release release;
              return ior.wait_for_ios(out, min_results, timeout_ms);
            }();
            const size_t count = ring_value(std::move(got));
            std::vector<std::tuple<int64_t, uint64_t>> results;
            results.reserve(count);
            for (size_t i = 0; i < count; ++i) results.emplace_back(out[i].result, out[i].user_data);
            return results;
          },
          nb::arg("min_results") = 1, nb::arg("max_results") = 0, nb::arg("timeout_ms") = 10'000,
          "Waits for at least min_results completions; returns [(bytes or -errno, user_data), ...].")
      .def(
          "register_with_mount",
          [](PyIor& self, const std::string& mount) { ring_check(self.get().register_with_mount(mount)); },
          nb::arg("mount"), "Makes the ff-fuse daemon of `mount` serve this ring (symlink in mount/.ff/usrbio).")
      .def("unregister_from_mount", [](PyIor& self) { ring_check(self.get().unregister_from_mount()); })
      .def_prop_ro("name", [](PyIor& self) { return self.get().name(); })
      .def_prop_ro("path", [](PyIor& self) { return self.get().path(); })
      .def_prop_ro("capacity", [](PyIor& self) { return self.get().capacity(); })
      .def_prop_ro("in_flight", [](PyIor& self) { return self.get().in_flight(); })
      .def("server_status",
           [](PyIor& self) {
             const usrbio::ServerStatus status = self.get().server_status();
             nb::dict d;
             d["state"] = std::string(usrbio::server_state_name(status.state));
             d["heartbeat_age_ms"] = status.heartbeat_age_ms;
             d["server_pid"] = status.server_pid;
             return d;
           })
      .def(
          "close", [](PyIor& self) { self.ior = usrbio::Ior(); }, "Unregisters and unlinks the ring.");

  module.def(
      "register_fd", [](int fd, const std::string& mount) { return ring_value(usrbio::register_fd(fd, mount)); },
      nb::arg("fd"), nb::arg("mount") = "", "The file id (st_ino, our inode id) of an fd opened through the mount.");

  nb::class_<PyRingServer>(module, "RingServer", "Serves a ring in this process over a fireflyer.fs Client")
      .def(
          "__init__",
          [client_ref_of](PyRingServer* self, nb::handle client, const std::string& name, uint32_t uid, uint32_t gid,
                          uint32_t max_batch) {
            ClientRef ref = client_ref_of(client);
            auto state = std::make_shared<PyRingServer::State>();
            state->io = std::make_unique<usrbio::FileClientBatchIo>(*ref.client);
            usrbio::RingServerOptions options;
            options.caller.uid = uid;
            options.caller.gid = gid;
            options.max_batch = max_batch;
            auto server = [&] {
              nb::gil_scoped_release release;
              return usrbio::RingServer::start(name, *state->io, std::move(options));
            }();
            state->server = ring_value(std::move(server));
            new (self) PyRingServer(std::move(state), std::move(ref.users));
          },
          nb::arg("client"), nb::arg("name"), nb::arg("uid") = 0, nb::arg("gid") = 0, nb::arg("max_batch") = 0,
          nb::keep_alive<1, 2>(),
          "client: the native client of a fireflyer.fs.Client (Client._native). Closing that Client stops "
          "this server first.")
      .def("stop", &PyRingServer::stop, "Finishes the current batch, closes its files, detaches.")
      .def_prop_ro("running", &PyRingServer::running)
      .def("stats", [](PyRingServer& self) {
        const usrbio::RingServer::Stats s = self.stats();
        nb::dict d;
        d["wakeups"] = s.wakeups;
        d["batches"] = s.batches;
        d["entries"] = s.entries;
        d["errors"] = s.errors;
        d["bytes_read"] = s.bytes_read;
        d["bytes_written"] = s.bytes_written;
        d["max_batch_entries"] = s.max_batch_entries;
        return d;
      });
}

}  // namespace ff::fs::python
