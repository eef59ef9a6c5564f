#include "ff/fs/crc32c.h"

#include <isa-l/crc.h>

#include <array>
#include <climits>

namespace ff::fs {

// ISA-L's crc32_iscsi(buffer, len, init) neither inverts its input nor its output: the standard CRC32C
// is ~crc32_iscsi(data, ~0). Extending a standard CRC c over more bytes is ~crc32_iscsi(more, ~c).
uint32_t crc32c_extend(uint32_t crc, std::span<const std::byte> data) {
  uint32_t raw = ~crc;
  const auto* bytes = reinterpret_cast<unsigned char*>(const_cast<std::byte*>(data.data()));
  size_t remaining = data.size();
  // crc32_iscsi takes an int length; feed it at most 1 GiB at a time.
  while (remaining > 0) {
    const size_t piece = remaining < (size_t{1} << 30) ? remaining : (size_t{1} << 30);
    raw = crc32_iscsi(const_cast<unsigned char*>(bytes), static_cast<int>(piece), raw);
    bytes += piece;
    remaining -= piece;
  }
  return ~raw;
}

uint32_t crc32c(std::span<const std::byte> data) { return crc32c_extend(0, data); }

uint32_t crc32c_extend_zeros(uint32_t crc, uint64_t count) {
  static const std::array<std::byte, 4096> kZeros{};
  while (count > 0) {
    const uint64_t piece = count < kZeros.size() ? count : kZeros.size();
    crc = crc32c_extend(crc, std::span<const std::byte>(kZeros.data(), piece));
    count -= piece;
  }
  return crc;
}

}  // namespace ff::fs
