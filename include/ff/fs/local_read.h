// Local reads: a client on the same host as a storage target reads a chunk's committed bytes straight
// from the target's data file instead of receiving them over RPC (no loopback TCP copies, no payload
// through gRPC, no read on the server's disk threads). The read RPC still goes to the target, which
// checks chain version, serving state and dirtiness as for any read and answers with where the bytes
// lie (LocalExtent, chunk_store.h); the client reads them and checks each crc segment against the
// committed version's CRC32C that came with the answer. A mismatch (the chunk moved and its block was
// reused, an in-place update landed, or the disk is corrupt) sends the read over RPC, which verifies
// and repairs as before. Design and trade-offs: docs/fs.md, "Local reads".
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "ff/common/result.h"
#include "ff/fs/chunk_store.h"

namespace ff::fs {

// This machine's identity for local reads: the kernel's boot id (/proc/sys/kernel/random/boot_id),
// the same for every process of one running kernel. Empty where the kernel has none (then local reads
// are neither asked for nor answered).
const std::string& this_host_id();

// The default piece length of local reads (`piece_bytes` below; ClientConfig::local_read_piece_bytes).
inline constexpr uint64_t kLocalReadPieceBytes = 256 << 10;

// Reads extent's bytes: [position, position + verify_bytes) of the version from extent.path (O_DIRECT
// where the file system allows), checks every segment's CRC32C, and returns the answer's bytes
// [skip, skip + count) in a 4 KiB-aligned buffer (owned by the returned SharedBytes). Open files are
// cached per path (thread-safe). Errors: unavailable (the file cannot be opened or is not the file
// the target named: not the same host after all, or no permission), data_loss (a CRC differs: the
// caller reads over RPC instead), io_error, invalid_argument (an extent that does not add up).
// A read of more than `piece_bytes` (rounded up to whole crc segments and 4 KiB; 0: no pieces) into a buffer of its
// own goes to the disk as pieces of that length, all in flight at once through one io_uring per thread, each piece's
// CRCs computed (and, for a caller's buffer, its bytes copied on) as soon as it lands, while the disk moves the rest
// (docs/fs-client.md, "Local reads in pieces"). Where io_uring is refused, one read.
Result<SharedBytes> read_local_extent(const LocalExtent& extent, uint64_t piece_bytes = kLocalReadPieceBytes);

// The place of [offset, offset + length) within `whole`, the extent of a whole committed version (position 0, as a
// ReadReq::whole_chunk answer): whole crc segments around the range, with their CRCs. nullopt when nothing is left
// to read there (the range starts at or past the version's end, or is empty); invalid_argument when `whole` is
// not a whole version's extent.
Result<std::optional<LocalExtent>> range_of_whole(const LocalExtent& whole, uint64_t offset, uint64_t length);

// What read_local_extent reads, before any check: the bytes of the extent's segments and their CRC32C as
// read. A client may read where the last answer for the same range said the bytes lie while it waits for
// this read's answer (StorageClient), then keep the bytes only if the answer names the same place and
// every segment's CRC matches the committed version's: then the bytes are that version's, whenever
// they were read, and the read returns the state at the moment of the answer, as any read does.
struct LocalBytes {
  LocalExtent extent;                  // where they were read
  std::shared_ptr<std::byte> buffer;   // [position, position + verify_bytes) of the version
  std::vector<uint32_t> crcs;          // CRC32C of each segment as read

  bool same_place(const LocalExtent& other) const;
  // The answer's bytes when `committed` names the same place and its CRCs match; else failed_precondition
  // (another place) or data_loss (a segment differs), naming both.
  Result<SharedBytes> answer(const LocalExtent& committed) const;
};
// Errors as read_local_extent's, except data_loss (nothing is checked yet).
Result<LocalBytes> read_local_bytes(const LocalExtent& extent, uint64_t piece_bytes = kLocalReadPieceBytes);
// The same, reading into `into` instead of a buffer of its own when the extent's bytes are exactly the answer's
// (skip 0) and fit `into` whole once rounded up to 4 KiB, and `into` is 4 KiB-aligned (LocalBytes::buffer then
// points into it and owns nothing: the caller keeps `into` alive while the bytes are used); else as above.
Result<LocalBytes> read_local_bytes(const LocalExtent& extent, std::span<std::byte> into,
                                    uint64_t piece_bytes = kLocalReadPieceBytes);
// Whether read_local_bytes(extent, into) reads into `into`.
bool reads_into(const LocalExtent& extent, std::span<const std::byte> into);

// Reads of many extents in flight at once through one io_uring: a caller with several reads to make (a batch of small
// reads, a reader keeping a queue depth) submits each and reaps them as they land, one system call per round for all
// of them instead of a thread (or a pread) per read. Each read lands in a 4 KiB-aligned buffer of its own and comes
// back as read_local_bytes' LocalBytes: the bytes and their CRCs as read, nothing checked yet (LocalBytes::answer
// checks). One thread uses a queue at a time: its ring is that thread's (where the kernel allows, its completions are
// posted in the system calls that thread makes, none interrupting it), set up again when another thread takes the
// queue over with nothing in flight; reads still in flight when another thread takes it over fail (failed_precondition)
// and the queue reads with pread after. Where io_uring is refused, submit() reads at once (pread) and reap() hands the
// bytes back. A read not done within `timeout_ms` fails deadline_exceeded with every other read then in
// flight; the ring and their buffers are given up (never reused: the disk may still write there) and later reads use
// pread.
class LocalReadQueue {
 public:
  // use_io_uring false: pread at submission, as where the kernel refuses io_uring (tests run both).
  explicit LocalReadQueue(uint32_t depth = 32, uint32_t timeout_ms = 30000, bool use_io_uring = true);
  ~LocalReadQueue();  // waits for reads still in flight (up to the timeout)
  LocalReadQueue(const LocalReadQueue&) = delete;
  LocalReadQueue& operator=(const LocalReadQueue&) = delete;

  struct Done {
    uint64_t tag = 0;
    Result<LocalBytes> bytes = LocalBytes{};
  };
  // Starts reading the extent's segments; the bytes come back from reap() with `tag`. Fails now, with nothing started:
  // invalid_argument (an extent that does not add up), unavailable (its file, as read_local_bytes), resource_exhausted
  // (depth() reads in flight: reap first; or no memory for the buffer).
  Status submit(const LocalExtent& extent, uint64_t tag);
  Status submit(LocalExtent&& extent, uint64_t tag);  // the same, taking the extent (no copy of its path and CRCs)
  // Sends what was submitted to the disk, waits until at least min(min, in_flight(), max) reads are done, and appends
  // the reads done by then to `out`, at most `max` of them (the others stay for the next call, which then waits for
  // nothing). Each read's CRCs are computed as it is handed back, so a caller that hands back one at a time and submits
  // the next before the following reap keeps the disk busy while it checks.
  void reap(size_t min, std::vector<Done>& out, size_t max = SIZE_MAX);
  size_t in_flight() const;  // submitted and not yet reaped
  uint32_t depth() const;
  bool uses_io_uring() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ff::fs
