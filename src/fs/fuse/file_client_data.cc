// FileData over the native client (FileClient, include/ff/fs/file_client.h): compiled when
// ff::fs_client exists. A thin forwarder; the client does the striping, retries and length reports.
#include "ff/fs/file_client.h"
#include "ff/fs/fuse.h"

namespace ff::fs::fuse {

namespace {

class FileClientData final : public FileData {
 public:
  explicit FileClientData(FileClient& client) : client_(client) {}

  Result<uint64_t> open(const meta::Caller& caller, meta::InodeId inode, uint32_t flags) override {
    return client_.open(caller, inode, flags);
  }
  Result<uint64_t> create(const meta::Caller& caller, meta::InodeId parent, std::string_view name, uint32_t mode,
                          uint32_t flags, std::optional<meta::Inode>* parent_after = nullptr) override {
    return client_.create(caller, parent, name, mode, flags, parent_after);
  }
  Result<size_t> read(uint64_t handle, uint64_t offset, std::span<std::byte> out) override {
    return client_.read(handle, offset, out);
  }
  bool has_read_pieces() const override { return true; }
  Result<std::vector<SharedBytes>> read_pieces(uint64_t handle, uint64_t offset, size_t length) override {
    return client_.read_pieces(handle, offset, length);
  }
  Result<size_t> write(uint64_t handle, uint64_t offset, std::span<const std::byte> data) override {
    return client_.write(handle, offset, data);
  }
  Result<meta::Inode> fsync(uint64_t handle) override { return client_.fsync(handle); }
  Status close(uint64_t handle) override { return client_.close(handle); }
  Result<meta::Inode> stat(uint64_t handle) override { return client_.stat(handle); }
  Result<meta::Inode> setattr(const meta::Caller& caller, meta::InodeId inode, const meta::SetAttr& attr) override {
    return client_.setattr(caller, inode, attr);
  }

 private:
  FileClient& client_;
};

}  // namespace

std::unique_ptr<FileData> file_client_data(FileClient& client) { return std::make_unique<FileClientData>(client); }

}  // namespace ff::fs::fuse
