// glibc malloc settings for processes that allocate and free MiB-sized I/O buffers at high rates.
#pragma once

#include <cstddef>

namespace ff {

// By default glibc returns freed memory at the top of a heap to the kernel once more than
// M_TRIM_THRESHOLD is free there, and serves large blocks by mmap / munmap, so a process that
// allocates and frees a 1 MiB payload per request faults every new buffer in page by page. This keeps
// up to `trim_bytes` free per heap and serves blocks below `mmap_bytes` from the heaps (glibc caps
// the latter at 32 MiB on 64-bit). Measured on a 2-core VM (docs/fs-operations.md): 1 MiB reads at
// queue depth 8 from a local 3-server cluster took 150,000-200,000 page faults per second and
// 1,360-1,700 CPU-ms per GB before, 400-1,800 and 1,150-1,190 after. The cost: each heap may keep
// up to trim_bytes of freed memory mapped.
//
// Leaves the settings alone, returning false, when the environment already sets them
// (MALLOC_TRIM_THRESHOLD_, MALLOC_MMAP_THRESHOLD_, or malloc tunables in GLIBC_TUNABLES), and off glibc.
// Also false when glibc rejects a value. Call it once at process start, before threads allocate.
bool tune_malloc_for_io_buffers(size_t trim_bytes = size_t{64} << 20, size_t mmap_bytes = size_t{32} << 20);

}  // namespace ff
