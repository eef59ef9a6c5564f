#include "ff/fs/crc32c.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string_view>
#include <vector>

namespace ff::fs {
namespace {

std::span<const std::byte> bytes_of(std::string_view text) {
  return {reinterpret_cast<const std::byte*>(text.data()), text.size()};
}

TEST(Crc32c, StandardCheckValue) {
  // The CRC-32C check value (RFC 3720 / the CRC catalogue): crc32c("123456789") == 0xE3069283.
  EXPECT_EQ(crc32c(bytes_of("123456789")), 0xE3069283u);
  EXPECT_EQ(crc32c(bytes_of("")), 0u);
  // RFC 3720 B.4: 32 bytes of zeros.
  std::vector<std::byte> zeros(32);
  EXPECT_EQ(crc32c(zeros), 0x8A9136AAu);
}

TEST(Crc32c, ExtendEqualsWhole) {
  const std::string_view text = "The quick brown fox jumps over the lazy dog, 0123456789 times.";
  for (size_t split = 0; split <= text.size(); ++split) {
    const uint32_t head = crc32c(bytes_of(text.substr(0, split)));
    EXPECT_EQ(crc32c_extend(head, bytes_of(text.substr(split))), crc32c(bytes_of(text))) << "split at " << split;
  }
}

TEST(Crc32c, ExtendZeros) {
  std::vector<std::byte> data(10000);
  std::memcpy(data.data(), "abc", 3);
  EXPECT_EQ(crc32c_extend_zeros(crc32c(std::span<const std::byte>(data).first(3)), data.size() - 3), crc32c(data));
}

TEST(Crc32c, CombineEqualsWhole) {
  const std::string_view text = "The quick brown fox jumps over the lazy dog, 0123456789 times.";
  for (size_t split = 0; split <= text.size(); ++split) {
    const uint32_t head = crc32c(bytes_of(text.substr(0, split)));
    const uint32_t tail = crc32c(bytes_of(text.substr(split)));
    EXPECT_EQ(crc32c_combine(head, tail, text.size() - split), crc32c(bytes_of(text))) << "split at " << split;
  }
  // Long second parts (a 4 KiB segment, a 1 MiB piece) and a third part folded in.
  std::vector<std::byte> data((1u << 20) + 4096 + 77);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::byte>((i * 2654435761u) >> 13);
  std::span<const std::byte> all(data);
  uint32_t folded = crc32c(all.first(77));
  folded = crc32c_combine(folded, crc32c(all.subspan(77, 4096)), 4096);
  folded = crc32c_combine(folded, crc32c(all.subspan(77 + 4096)), 1u << 20);
  EXPECT_EQ(folded, crc32c(all));
}

TEST(Crc32c, FoldEqualsWhole) {
  std::vector<std::byte> data(300 * 1000 + 123);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::byte>((i * 2654435761u) >> 11);
  std::span<const std::byte> all(data);
  for (uint64_t piece : {1ull, 7ull, 4096ull, 65536ull}) {
    for (uint64_t length : {uint64_t{1}, piece, piece + 1, 5 * piece + 3, uint64_t{data.size()}}) {
      length = std::min<uint64_t>(length, data.size());
      std::vector<uint32_t> crcs;
      for (uint64_t start = 0; start < length; start += piece) crcs.push_back(crc32c(all.subspan(start, std::min(piece, length - start))));
      const uint64_t last = length - (crcs.size() - 1) * piece;
      EXPECT_EQ(crc32c_fold(crcs, piece, last), crc32c(all.first(length))) << "piece " << piece << " length " << length;
    }
  }
  EXPECT_EQ(crc32c_fold({}, 4096, 0), 0u);
}

}  // namespace
}  // namespace ff::fs
