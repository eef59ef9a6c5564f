#include "ff/common/assert.h"

#include <cstdio>
#include <cstdlib>

namespace ff::internal {

void assertion_failed(const char* condition, const char* file, int line, const std::string& message) {
  // Plain stdio, not the logger: the logger itself may be what is broken.
  std::fprintf(stderr, "%s:%d: assertion failed: %s%s%s\n", file, line, condition, message.empty() ? "" : ": ",
               message.c_str());
  std::fflush(stderr);
  std::abort();
}

}  // namespace ff::internal
