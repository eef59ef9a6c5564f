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

}  // namespace ff::fs
