// UsrbioRegistry: the rings an ff-fuse daemon serves (usrbio.h).
//
// Lock order: `mutex` only; RingServers are started under it (attaching is a few system calls) but
// stopped outside it (stopping waits for the ring's current batch).
#include <cerrno>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include "ff/common/log.h"
#include "ring_layout.h"

namespace ff::fs::usrbio {

struct UsrbioRegistry::Impl {
  BatchIo* io = nullptr;
  RegistryOptions options;
  struct Ring {
    std::string target;
    std::unique_ptr<RingServer> server;
  };
  mutable std::mutex mutex;
  std::map<std::string, Ring, std::less<>> rings;  // guarded by mutex
  bool stopping = false;                           // guarded by mutex
  std::condition_variable wake;
  std::thread reaper;
};

UsrbioRegistry::UsrbioRegistry(BatchIo& io, RegistryOptions options) : impl_(std::make_unique<Impl>()) {
  impl_->io = &io;
  impl_->options = std::move(options);
  if (impl_->options.reap_interval_ms > 0) {
    impl_->reaper = std::thread([this] {
      std::unique_lock lock(impl_->mutex);
      while (!impl_->stopping) {
        impl_->wake.wait_for(lock, std::chrono::milliseconds(impl_->options.reap_interval_ms));
        if (impl_->stopping) break;
        lock.unlock();
        reap();
        lock.lock();
      }
    });
  }
}

UsrbioRegistry::~UsrbioRegistry() {
  std::map<std::string, Impl::Ring, std::less<>> rings;
  {
    std::lock_guard lock(impl_->mutex);
    impl_->stopping = true;
    rings.swap(impl_->rings);
  }
  impl_->wake.notify_all();
  if (impl_->reaper.joinable()) impl_->reaper.join();
  rings.clear();  // stops every server
}

Status UsrbioRegistry::register_ring(std::string_view link_name, std::string_view target, const meta::Caller& caller,
                                     pid_t pid) {
  if (Status valid = validate_name(link_name); !valid.is_ok()) return meta::meta_error(EINVAL, valid.message());
  std::string_view ring_name = target;
  if (ring_name.starts_with(kShmDir)) ring_name.remove_prefix(kShmDir.size());
  if (!ring_name.starts_with(kIorPrefix) || ring_name.substr(kIorPrefix.size()) != link_name) {
    return meta::meta_error(EINVAL, fmt::format("usrbio: the link '{}' must point at {}{}{} (got '{}')", link_name,
                                                kShmDir, kIorPrefix, link_name, target));
  }
  std::lock_guard lock(impl_->mutex);
  if (impl_->stopping) return meta::meta_error(EIO, "usrbio registry is shutting down");
  if (impl_->rings.contains(link_name)) {
    return meta::meta_error(EEXIST, fmt::format("usrbio ring '{}' is already registered", link_name));
  }
  if (impl_->rings.size() >= impl_->options.max_rings) {
    return meta::meta_error(
        ENOSPC, fmt::format("usrbio: {} rings registered (max_rings); '{}' refused", impl_->rings.size(), link_name));
  }
  RingServerOptions options = impl_->options.server;
  options.caller = caller;
  options.owner_pid = pid;
  FF_ASSIGN_OR_RETURN(auto server, RingServer::start(link_name, *impl_->io, std::move(options)));
  impl_->rings.emplace(
      std::string(link_name),
      Impl::Ring{std::string(kShmDir) + std::string(kIorPrefix) + std::string(link_name), std::move(server)});
  FF_LOG_INFO("usrbio: ring '{}' registered (uid {}, pid {})", link_name, caller.uid, pid);
  return Status::ok();
}

Status UsrbioRegistry::unregister_ring(std::string_view link_name) {
  std::unique_ptr<RingServer> server;
  {
    std::lock_guard lock(impl_->mutex);
    auto found = impl_->rings.find(link_name);
    if (found == impl_->rings.end()) {
      return meta::meta_error(ENOENT, fmt::format("usrbio ring '{}' is not registered", link_name));
    }
    server = std::move(found->second.server);
    impl_->rings.erase(found);
  }
  server.reset();  // outside the lock: waits for the ring's current batch
  return Status::ok();
}

Result<std::string> UsrbioRegistry::target_of(std::string_view link_name) const {
  std::lock_guard lock(impl_->mutex);
  auto found = impl_->rings.find(link_name);
  if (found == impl_->rings.end()) {
    return meta::meta_error(ENOENT, fmt::format("usrbio ring '{}' is not registered", link_name));
  }
  return found->second.target;
}

std::vector<std::string> UsrbioRegistry::names() const {
  std::lock_guard lock(impl_->mutex);
  std::vector<std::string> names;
  names.reserve(impl_->rings.size());
  for (const auto& [name, ring] : impl_->rings) names.push_back(name);
  return names;
}

size_t UsrbioRegistry::reap() {
  std::vector<std::unique_ptr<RingServer>> dead;
  {
    std::lock_guard lock(impl_->mutex);
    for (auto it = impl_->rings.begin(); it != impl_->rings.end();) {
      RingServer& server = *it->second.server;
      if (server.running()) {
        ++it;
        continue;
      }
      FF_LOG_INFO("usrbio: ring '{}' stopped (owner gone or ring broken); unregistered", it->first);
      // A dead owner's files would stay in /dev/shm (the client never unlinks them). Removed before the
      // ring leaves the registry, so a ring no longer listed has no files left; its Iov stays while
      // another registered ring maps it. (A few unlinks under the lock; the server is stopped already.)
      if (impl_->options.remove_files_of_dead_owners) {
        bool iov_shared = false;
        for (const auto& [name, ring] : impl_->rings) {
          iov_shared = iov_shared || (ring.server.get() != &server && ring.server->iov_path() == server.iov_path());
        }
        if (const int removed = server.remove_files(!iov_shared); removed > 0) {
          FF_LOG_INFO("usrbio: ring '{}': removed {} shm file(s) of its dead owner", it->first, removed);
        }
      }
      dead.push_back(std::move(it->second.server));
      it = impl_->rings.erase(it);
    }
  }
  return dead.size();  // servers stop as `dead` goes out of scope, outside the lock
}

}  // namespace ff::fs::usrbio
