#include "codec.h"

#include <cstring>

#include "ff/common/assert.h"

namespace ff::fs::meta::codec {
namespace {

constexpr uint8_t kInodeFormat = 1;
constexpr uint8_t kSessionFormat = 1;

void put_u64(std::string* out, uint64_t value) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}
void put_u32(std::string* out, uint32_t value) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}
void put_string(std::string* out, std::string_view value) {
  put_u32(out, static_cast<uint32_t>(value.size()));
  out->append(value);
}

// Reads fields in order; any short read makes ok() false (never reads out of bounds).
class Reader {
 public:
  explicit Reader(std::string_view bytes) : bytes_(bytes) {}
  uint64_t u64() { return fixed(8); }
  uint32_t u32() { return static_cast<uint32_t>(fixed(4)); }
  uint8_t u8() { return static_cast<uint8_t>(fixed(1)); }
  std::string string() {
    uint32_t size = u32();
    if (!ok_ || bytes_.size() - offset_ < size) {
      ok_ = false;
      return {};
    }
    std::string value(bytes_.substr(offset_, size));
    offset_ += size;
    return value;
  }
  bool ok() const { return ok_; }
  bool done() const { return offset_ == bytes_.size(); }

 private:
  uint64_t fixed(size_t size) {
    if (!ok_ || bytes_.size() - offset_ < size) {
      ok_ = false;
      return 0;
    }
    uint64_t value = 0;
    for (size_t i = 0; i < size; ++i)
      value |= static_cast<uint64_t>(static_cast<uint8_t>(bytes_[offset_ + i])) << (8 * i);
    offset_ += size;
    return value;
  }
  std::string_view bytes_;
  size_t offset_ = 0;
  bool ok_ = true;
};

std::string key_with_id(char tag, uint64_t id) {
  std::string key(1, tag);
  put_u64_be(&key, id);
  return key;
}

bool valid_type(uint8_t type) { return type >= 1 && type <= 7; }

}  // namespace

void put_u64_be(std::string* out, uint64_t value) {
  for (int i = 7; i >= 0; --i) out->push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}
uint64_t get_u64_be(std::string_view bytes) {
  FF_ASSERT(bytes.size() == 8);
  uint64_t value = 0;
  for (char c : bytes) value = (value << 8) | static_cast<uint8_t>(c);
  return value;
}

std::string inode_key(InodeId id) { return key_with_id('I', id); }
std::string dentry_prefix(InodeId parent) { return key_with_id('D', parent); }
std::string dentry_key(InodeId parent, std::string_view name) {
  std::string key = dentry_prefix(parent);
  key.append(name);
  return key;
}
std::string session_prefix(InodeId inode) { return key_with_id('S', inode); }
std::string session_key(InodeId inode, uint64_t session) {
  std::string key = session_prefix(inode);
  put_u64_be(&key, session);
  return key;
}
std::string client_session_prefix(uint64_t client) { return key_with_id('C', client); }
std::string client_session_key(uint64_t client, InodeId inode, uint64_t session) {
  std::string key = client_session_prefix(client);
  put_u64_be(&key, inode);
  put_u64_be(&key, session);
  return key;
}
std::string lease_key(uint64_t client) { return key_with_id('L', client); }
std::string lease_prefix() { return "L"; }
std::string garbage_key(InodeId inode) { return key_with_id('G', inode); }
std::string garbage_prefix() { return "G"; }
std::string xattr_prefix(InodeId inode) { return key_with_id('X', inode); }
std::string xattr_key(InodeId inode, std::string_view name) {
  std::string key = xattr_prefix(inode);
  key.append(name);
  return key;
}
std::string dir_change_key(InodeId dir) { return key_with_id('T', dir); }

std::string encode_inode(const Inode& inode) {
  std::string out;
  out.reserve(96 + inode.symlink_target.size() + 4 * inode.layout.chains.size());
  out.push_back(static_cast<char>(kInodeFormat));
  put_u64(&out, inode.id);
  out.push_back(static_cast<char>(inode.type));
  put_u32(&out, inode.mode);
  put_u32(&out, inode.uid);
  put_u32(&out, inode.gid);
  put_u32(&out, inode.nlink);
  put_u64(&out, inode.length);
  put_u64(&out, static_cast<uint64_t>(inode.atime_ns));
  put_u64(&out, static_cast<uint64_t>(inode.mtime_ns));
  put_u64(&out, static_cast<uint64_t>(inode.ctime_ns));
  put_u32(&out, inode.rdev);
  put_u64(&out, inode.parent);
  put_string(&out, inode.symlink_target);
  put_u32(&out, inode.layout.chain_table);
  put_u32(&out, inode.layout.chunk_size);
  put_u64(&out, inode.layout.seed);
  put_u32(&out, static_cast<uint32_t>(inode.layout.chains.size()));
  for (ChainId chain : inode.layout.chains) put_u32(&out, chain);
  return out;
}

Result<Inode> decode_inode(std::string_view bytes) {
  Reader reader(bytes);
  uint8_t format = reader.u8();
  if (reader.ok() && format != kInodeFormat) {
    return data_loss("inode record has format {}, expected {}", format, kInodeFormat);
  }
  Inode inode;
  inode.id = reader.u64();
  uint8_t type = reader.u8();
  inode.type = static_cast<FileType>(type);
  inode.mode = reader.u32();
  inode.uid = reader.u32();
  inode.gid = reader.u32();
  inode.nlink = reader.u32();
  inode.length = reader.u64();
  inode.atime_ns = static_cast<int64_t>(reader.u64());
  inode.mtime_ns = static_cast<int64_t>(reader.u64());
  inode.ctime_ns = static_cast<int64_t>(reader.u64());
  inode.rdev = reader.u32();
  inode.parent = reader.u64();
  inode.symlink_target = reader.string();
  inode.layout.chain_table = reader.u32();
  inode.layout.chunk_size = reader.u32();
  inode.layout.seed = reader.u64();
  uint32_t chains = reader.u32();
  if (reader.ok() && chains > 1 << 16) return data_loss("inode {} record has {} chains", inode.id, chains);
  for (uint32_t i = 0; i < chains && reader.ok(); ++i) inode.layout.chains.push_back(reader.u32());
  if (!reader.ok() || !reader.done() || !valid_type(type)) {
    return data_loss("inode record of {} bytes is malformed (truncated, trailing bytes or bad type {})", bytes.size(),
                     type);
  }
  return inode;
}

std::string encode_dentry(const Dentry& dentry) {
  std::string out;
  put_u64(&out, dentry.inode);
  out.push_back(static_cast<char>(dentry.type));
  return out;
}

Result<Dentry> decode_dentry(std::string_view bytes) {
  Reader reader(bytes);
  Dentry dentry;
  dentry.inode = reader.u64();
  uint8_t type = reader.u8();
  if (!reader.ok() || !reader.done() || !valid_type(type)) {
    return data_loss("directory entry record of {} bytes is malformed", bytes.size());
  }
  dentry.type = static_cast<FileType>(type);
  return dentry;
}

std::string encode_session(const Session& session) {
  std::string out;
  out.push_back(static_cast<char>(kSessionFormat));
  put_u64(&out, session.client);
  out.push_back(session.write ? 1 : 0);
  put_u64(&out, static_cast<uint64_t>(session.opened_ms));
  return out;
}

Result<Session> decode_session(std::string_view bytes) {
  Reader reader(bytes);
  uint8_t format = reader.u8();
  Session session;
  session.client = reader.u64();
  session.write = reader.u8() != 0;
  session.opened_ms = static_cast<int64_t>(reader.u64());
  if (!reader.ok() || !reader.done() || format != kSessionFormat) {
    return data_loss("session record of {} bytes is malformed", bytes.size());
  }
  return session;
}

std::string encode_u64(uint64_t value) {
  std::string out;
  put_u64(&out, value);
  return out;
}

Result<uint64_t> decode_u64(std::string_view bytes, std::string_view what) {
  Reader reader(bytes);
  uint64_t value = reader.u64();
  if (!reader.ok() || !reader.done()) return data_loss("{} record has {} bytes, expected 8", what, bytes.size());
  return value;
}

}  // namespace ff::fs::meta::codec
