// MgmtdAddresses: the ff-mgmtd instances a client or storage server talks to, written
// "host:port[,host:port...]" (a primary and its standbys on etcd; only the primary listens). Calls go
// to one address; a call that finds it unreachable, silent (deadline) or not serving moves the list
// on to the next, so a standby that took over is found without a restart. One address: never moves.
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include <atomic>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "ff/common/result.h"

namespace ff::fs {

class MgmtdAddresses {
 public:
  // Splits on ',' (spaces around an element are dropped); an empty element is an error naming it.
  // The elements are transport addresses (host:port for gRPC: the tools check that).
  static Result<MgmtdAddresses> parse(std::string_view list);
  // The same without the check (for a config validated elsewhere): an empty element stays, and calls
  // to it fail with the transport's message.
  static MgmtdAddresses unchecked(std::string_view list);

  MgmtdAddresses(const MgmtdAddresses& other) : addresses_(other.addresses_), index_(other.index_.load()) {}
  MgmtdAddresses& operator=(const MgmtdAddresses& other) {
    addresses_ = other.addresses_;
    index_ = other.index_.load();
    return *this;
  }

  // The address calls go to now.
  const std::string& current() const { return addresses_[index_.load() % addresses_.size()]; }
  // After a call to `used` ended with `status`: moves to the next address if the status says that
  // mgmtd is unreachable, silent or not serving (a standby, a stopped primary) and `used` is still
  // the current one (concurrent failures of one address move once). Returns true if it moved.
  bool failed(const std::string& used, const Status& status);

  const std::vector<std::string>& all() const { return addresses_; }
  // "a,b" (for messages).
  std::string names() const;

 private:
  explicit MgmtdAddresses(std::vector<std::string> addresses) : addresses_(std::move(addresses)) {}
  std::vector<std::string> addresses_;  // never empty
  std::atomic<size_t> index_{0};
};

}  // namespace ff::fs
