// Key encoding and value serialization of the metadata service (docs/fs-meta.md, "Key encoding").
// Integers in keys are big-endian so byte order is numeric order; values are a version byte followed by
// little-endian fixed-width fields and length-prefixed strings.
//
//   "A"                              -> next free inode id (u64)            inode id allocator
//   "I" id                           -> Inode                               inodes
//   "D" parent name                  -> child id (u64) + type (u8)          directory entries
//   "S" inode session                -> Session                             open files
//   "C" client inode session         -> ""                                  sessions by client
//   "L" client                       -> lease expiry (i64 ms, system time)  client leases
//   "G" inode                        -> Inode                               deleted files awaiting chunk removal
//   "X" inode name                   -> value bytes                         extended attributes (one key each)
//   "T" directory                    -> i64 ns                              last entry change of a directory
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "ff/common/result.h"
#include "ff/fs/meta.h"

namespace ff::fs::meta::codec {

inline constexpr char kAllocatorKey[] = "A";

std::string inode_key(InodeId id);
std::string dentry_key(InodeId parent, std::string_view name);
std::string dentry_prefix(InodeId parent);
std::string session_key(InodeId inode, uint64_t session);
std::string session_prefix(InodeId inode);
std::string client_session_key(uint64_t client, InodeId inode, uint64_t session);
std::string client_session_prefix(uint64_t client);
std::string lease_key(uint64_t client);
std::string lease_prefix();
std::string garbage_key(InodeId inode);
std::string garbage_prefix();
std::string xattr_key(InodeId inode, std::string_view name);
std::string xattr_prefix(InodeId inode);
std::string dir_change_key(InodeId dir);

void put_u64_be(std::string* out, uint64_t value);
uint64_t get_u64_be(std::string_view bytes);  // exactly 8 bytes

std::string encode_inode(const Inode& inode);
Result<Inode> decode_inode(std::string_view bytes);

struct Dentry {
  InodeId inode = 0;
  FileType type = FileType::kRegular;
};
std::string encode_dentry(const Dentry& dentry);
Result<Dentry> decode_dentry(std::string_view bytes);

struct Session {
  uint64_t client = 0;
  bool write = false;
  int64_t opened_ms = 0;
};
std::string encode_session(const Session& session);
Result<Session> decode_session(std::string_view bytes);

std::string encode_u64(uint64_t value);  // little-endian value records (allocator, lease)
Result<uint64_t> decode_u64(std::string_view bytes, std::string_view what);

}  // namespace ff::fs::meta::codec
