// CRC32C (Castagnoli), the standard convention (init and final xor 0xFFFFFFFF; crc32c("123456789") is
// 0xE3069283), computed with ISA-L's crc32_iscsi.
//
// Thread-safety: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace ff::fs {

// CRC32C of data.
uint32_t crc32c(std::span<const std::byte> data);

// CRC32C of (A + data) given crc = crc32c(A): extends a CRC over more bytes.
uint32_t crc32c_extend(uint32_t crc, std::span<const std::byte> data);

// CRC32C of (A + `count` zero bytes) given crc = crc32c(A).
uint32_t crc32c_extend_zeros(uint32_t crc, uint64_t count);

// CRC32C of (A + B) given crc_a = crc32c(A), crc_b = crc32c(B) and B's length, without the bytes (zlib's
// crc32_combine for the Castagnoli polynomial: ~0.1 us). Lets the chunk engine derive a version's whole
// CRC from its segment CRCs after patching a few segments.
uint32_t crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t length_b);

}  // namespace ff::fs
