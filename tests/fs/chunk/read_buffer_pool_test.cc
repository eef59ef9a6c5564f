// ReadBufferPool (src/fs/chunk/read_buffer_pool.h): size classes, reuse within the idle bound, and buffers of
// 1 MiB and more on 2 MiB-aligned memory marked for huge pages where the kernel offers them.
#include "../../../src/fs/chunk/read_buffer_pool.h"

#include <gtest/gtest.h>
#include <sys/mman.h>

#include <cstring>
#include <fstream>
#include <string>

namespace ff::fs::chunk_internal {
namespace {

TEST(ReadBufferPoolTest, BuffersAreAlignedUsableAndReusedWithinTheBound) {
  auto pool = ReadBufferPool::create(8ull << 20);
  const std::byte* first = nullptr;
  for (uint64_t bytes : {uint64_t{1}, uint64_t{4096}, uint64_t{100'000}, uint64_t{1} << 20, uint64_t{3} << 20}) {
    SCOPED_TRACE(bytes);
    std::shared_ptr<std::byte> buffer = pool->acquire(bytes);
    ASSERT_NE(buffer, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(buffer.get()) % ReadBufferPool::kAlignment, 0u);
    std::memset(buffer.get(), 0x5a, bytes);  // the whole request is usable
    if (bytes == (uint64_t{1} << 20)) first = buffer.get();
  }
  // 1 byte and 4096 bytes share the 4 KiB class: the second reused the first's buffer. The 1 MiB buffer went back
  // to the pool too and comes out again.
  EXPECT_EQ(pool->stats().reused, 1u);
  std::shared_ptr<std::byte> again = pool->acquire(1 << 20);
  EXPECT_EQ(again.get(), first);
  EXPECT_EQ(pool->stats().reused, 2u);
}

TEST(ReadBufferPoolTest, LargeBuffersSitOnHugePagesWhereTheKernelGivesThem) {
  std::ifstream in("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string modes;
  std::getline(in, modes);
  const bool offered = modes.find("[always]") != std::string::npos || modes.find("[madvise]") != std::string::npos;
  EXPECT_EQ(huge_pages_available(), offered) << "transparent_hugepage/enabled: " << modes;
  auto pool = ReadBufferPool::create(64ull << 20);
  for (uint64_t bytes : {uint64_t{1} << 20, uint64_t{4} << 20, uint64_t{300} << 20}) {  // the last one unpooled
    SCOPED_TRACE(bytes);
    std::shared_ptr<std::byte> buffer = pool->acquire(bytes);
    ASSERT_NE(buffer, nullptr);
    std::memset(buffer.get(), 1, bytes);
    if (offered) {
      EXPECT_EQ(reinterpret_cast<uintptr_t>(buffer.get()) % (2u << 20), 0u);
    }
  }
  // A 1 MiB buffer takes a whole 2 MiB page, and the idle bound counts that.
  auto small_bound = ReadBufferPool::create(3ull << 20);
  {
    auto a = small_bound->acquire(1 << 20);
    auto b = small_bound->acquire(1 << 20);
    auto c = small_bound->acquire(1 << 20);
    ASSERT_TRUE(a && b && c);
  }
  // Released: with huge pages the first fills 2 of the 3 MiB and the others are freed; on 4 KiB pages all three fit.
  EXPECT_EQ(small_bound->stats().idle_bytes, offered ? (2ull << 20) : (3ull << 20));
}

}  // namespace
}  // namespace ff::fs::chunk_internal
