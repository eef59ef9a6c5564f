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

namespace {

constexpr uint32_t kPolyReflected = 0x82F63B78;  // CRC32C, bit-reflected

// a * b modulo the CRC polynomial (bit-reflected representation; x^0 is bit 31).
uint32_t multmodp(uint32_t a, uint32_t b) {
  uint32_t m = 1u << 31;
  uint32_t p = 0;
  for (;;) {
    if ((a & m) != 0) {
      p ^= b;
      if ((a & (m - 1)) == 0) break;
    }
    m >>= 1;
    b = (b & 1) != 0 ? (b >> 1) ^ kPolyReflected : b >> 1;
  }
  return p;
}

// x^(2^k) modulo the polynomial, k = 0..31.
const std::array<uint32_t, 32>& x2n_table() {
  static const std::array<uint32_t, 32> table = [] {
    std::array<uint32_t, 32> t{};
    uint32_t p = 1u << 30;  // x^1
    t[0] = p;
    for (size_t k = 1; k < t.size(); ++k) t[k] = p = multmodp(p, p);
    return t;
  }();
  return table;
}

// x^(n * 2^k) modulo the polynomial.
uint32_t x2nmodp(uint64_t n, unsigned k) {
  const auto& table = x2n_table();
  uint32_t p = 1u << 31;  // x^0
  while (n != 0) {
    if ((n & 1) != 0) p = multmodp(table[k & 31], p);
    n >>= 1;
    ++k;
  }
  return p;
}

}  // namespace

uint32_t crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t length_b) {
  return multmodp(x2nmodp(length_b, 3), crc_a) ^ crc_b;
}

uint32_t crc32c_fold(std::span<const uint32_t> crcs, uint64_t piece_length, uint64_t last_length) {
  if (crcs.empty()) return 0;
  if (crcs.size() == 1) return crcs[0];
  // Shifting a CRC by piece_length bytes multiplies it by x^(8 * piece_length) mod P, which is linear
  // in the CRC: one table per byte of it.
  struct Shift {
    uint64_t length = 0;
    std::array<std::array<uint32_t, 256>, 4> table{};
  };
  thread_local Shift shift;
  if (shift.length != piece_length) {
    const uint32_t op = x2nmodp(piece_length, 3);
    for (unsigned byte = 0; byte < 4; ++byte) {
      for (uint32_t value = 0; value < 256; ++value) shift.table[byte][value] = multmodp(op, value << (8 * byte));
    }
    shift.length = piece_length;
  }
  uint32_t whole = crcs[0];
  for (size_t index = 1; index + 1 < crcs.size(); ++index) {
    whole = shift.table[0][whole & 0xff] ^ shift.table[1][(whole >> 8) & 0xff] ^ shift.table[2][(whole >> 16) & 0xff] ^
            shift.table[3][whole >> 24] ^ crcs[index];
  }
  return crc32c_combine(whole, crcs.back(), last_length);
}

}  // namespace ff::fs
