// tune_malloc_for_io_buffers (malloc_tuning.h).
#include "ff/common/malloc_tuning.h"

#include <cstdlib>
#include <cstring>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace ff {

bool tune_malloc_for_io_buffers(size_t trim_bytes, size_t mmap_bytes) {
#if defined(__GLIBC__)
  if (std::getenv("MALLOC_TRIM_THRESHOLD_") != nullptr || std::getenv("MALLOC_MMAP_THRESHOLD_") != nullptr) return false;
  if (const char* tunables = std::getenv("GLIBC_TUNABLES"); tunables != nullptr && std::strstr(tunables, "malloc.") != nullptr) {
    return false;
  }
  const bool trim = mallopt(M_TRIM_THRESHOLD, static_cast<int>(trim_bytes)) == 1;
  const bool mmap = mallopt(M_MMAP_THRESHOLD, static_cast<int>(mmap_bytes)) == 1;
  return trim && mmap;
#else
  (void)trim_bytes;
  (void)mmap_bytes;
  return false;
#endif
}

}  // namespace ff
