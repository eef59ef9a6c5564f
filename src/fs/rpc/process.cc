#include "ff/fs/rpc/process.h"

#include <csignal>
#include <ctime>

#include "ff/common/file.h"

namespace ff::fs::rpc {

namespace {
sigset_t termination_set() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}
}  // namespace

void block_termination_signals() {
  sigset_t set = termination_set();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

int wait_for_termination(const std::function<bool()>& should_stop, int64_t poll_ms) {
  sigset_t set = termination_set();
  timespec timeout{poll_ms / 1000, (poll_ms % 1000) * 1000000};
  while (true) {
    int signal_number = sigtimedwait(&set, nullptr, &timeout);
    if (signal_number > 0) return signal_number;
    if (should_stop && should_stop()) return 0;
  }
}

Status write_address_file(const std::string& path, const std::string& address) {
  if (path.empty()) return Status::ok();
  return write_file_atomically(path, address + "\n");
}

}  // namespace ff::fs::rpc
