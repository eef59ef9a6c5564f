// Process plumbing shared by ff-mgmtd and ff-storage: termination signals and port files.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "ff/common/status.h"

namespace ff::fs::rpc {

// Blocks SIGINT and SIGTERM in the calling thread and every thread it starts afterwards (call first in
// main), so wait_for_termination() receives them synchronously.
void block_termination_signals();

// Returns the signal number when SIGINT/SIGTERM arrives, or 0 when `should_stop` (polled every
// poll_ms) returns true.
int wait_for_termination(const std::function<bool()>& should_stop, int64_t poll_ms = 100);

// Writes "host:port\n" to path atomically (tests learn the bound port this way); no-op for "".
Status write_address_file(const std::string& path, const std::string& address);

}  // namespace ff::fs::rpc
