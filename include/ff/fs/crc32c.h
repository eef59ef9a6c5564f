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

// CRC32C of the concatenation of pieces, given each piece's CRC32C: every piece but the last is
// `piece_length` bytes, the last `last_length`. The same as folding with crc32c_combine, but the shift
// by one piece is a table (built once per thread and piece length): ~5 ns per piece instead of ~0.1 us,
// which matters for the 1024 segment CRCs of a 4 MiB chunk on every patched write. 0 for no pieces.
uint32_t crc32c_fold(std::span<const uint32_t> crcs, uint64_t piece_length, uint64_t last_length);

}  // namespace ff::fs
