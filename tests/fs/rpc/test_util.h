// Helpers for the fs rpc tests: temporary directories, free ports on 127.0.0.1, and an etcd server
// started as a child process (etcd 3.4 on random ports with a temporary data dir, killed afterwards).
#pragma once

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <ostream>

#include "ff/common/result.h"
#include "ff/fs/messages.h"

// Defined once per test binary, whichever test helper header comes first.
#ifndef FF_TEST_STATUS_OSTREAM
#define FF_TEST_STATUS_OSTREAM
namespace ff {
// Lets gtest print a Status in failure messages (`EXPECT_TRUE(s.is_ok()) << s`).
inline std::ostream& operator<<(std::ostream& out, const Status& status) { return out << status.to_string(); }
}  // namespace ff
#endif

namespace ff::fs::rpc::testing {

inline constexpr int64_t kSecond = 1'000'000'000;

// `size` bytes of a pattern that differs with `seed` (payloads whose echo a test can check).
inline Bytes make_bytes(size_t size, uint8_t seed) {
  Bytes bytes(size);
  for (size_t i = 0; i < size; ++i) bytes[i] = static_cast<std::byte>((i * 131 + seed) & 0xff);
  return bytes;
}

// A fresh directory under $TMPDIR, removed with everything in it on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A port that was free on 127.0.0.1 a moment ago (bind to 0 and close).
uint16_t free_port();

// True when an `etcd` binary is on PATH.
bool have_etcd();

// One etcd member on 127.0.0.1; killed (SIGKILL) and its data removed on destruction.
class EtcdServer {
 public:
  // client_port 0: a free port (retried if taken); else exactly that port.
  static Result<std::unique_ptr<EtcdServer>> start(uint16_t client_port = 0);
  ~EtcdServer();
  std::string endpoint() const { return "127.0.0.1:" + std::to_string(client_port_); }

 private:
  EtcdServer() = default;
  pid_t pid_ = -1;
  uint16_t client_port_ = 0;
  std::unique_ptr<TempDir> dir_;
};

}  // namespace ff::fs::rpc::testing
