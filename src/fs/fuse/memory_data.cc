// MemoryData: file contents in this process's memory (fuse.h). Each file is a byte string guarded by
// its own shared mutex; the handle table and the file table by one mutex each.
// Lock order: handles_mutex_ -> files_mutex_ -> File::mutex (never the reverse).
#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <shared_mutex>

#include "ff/fs/fuse.h"

namespace ff::fs::fuse {

namespace {

// One file's bytes; the string's size is the length storage "holds".
struct File {
  std::shared_mutex mutex;
  std::string bytes;
};

struct Handle {
  meta::InodeId inode = 0;
  uint64_t session = 0;
  bool writable = false;
  uint64_t written_end = 0;  // end of this handle's writes (the length hint on close)
  std::shared_ptr<File> file;
};

}  // namespace

struct MemoryData::Impl {
  meta::MetaApi* meta = nullptr;
  uint64_t client_id = 0;

  std::mutex handles_mutex;  // guards handles, next_handle
  std::map<uint64_t, Handle> handles;
  uint64_t next_handle = 1;

  std::mutex files_mutex;  // guards files
  std::map<meta::InodeId, std::shared_ptr<File>> files;

  std::shared_ptr<File> file(meta::InodeId inode) {
    std::lock_guard lock(files_mutex);
    auto& slot = files[inode];
    if (!slot) slot = std::make_shared<File>();
    return slot;
  }

  Result<Handle*> find(uint64_t handle) {
    std::lock_guard lock(handles_mutex);
    auto it = handles.find(handle);
    if (it == handles.end()) return meta::meta_error(EBADF, fmt::format("memory data: no open handle {}", handle));
    // NOTE: std::map nodes are stable; a handle is erased only by close(), which must not race with
    // other uses of the same handle (the caller's contract, as for FileClient).
    return &it->second;
  }

  Result<uint64_t> add(const meta::OpenFile& opened, uint32_t flags) {
    FF_ASSERT(meta != nullptr, "MemoryData::bind was not called");
    Handle handle{opened.inode.id, opened.session, (flags & meta::kOpenWrite) != 0, 0, file(opened.inode.id)};
    std::lock_guard lock(handles_mutex);
    uint64_t id = next_handle++;
    handles.emplace(id, std::move(handle));
    return id;
  }
};

MemoryData::MemoryData() : impl_(std::make_unique<Impl>()) {
  static std::atomic<uint64_t> next_client{1};
  impl_->client_id = (uint64_t{0xfe} << 56) | next_client.fetch_add(1);
}

MemoryData::~MemoryData() = default;

void MemoryData::bind(meta::MetaApi& meta) { impl_->meta = &meta; }

Result<uint64_t> MemoryData::open(const meta::Caller& caller, meta::InodeId inode, uint32_t flags) {
  FF_ASSERT(impl_->meta != nullptr, "MemoryData::bind was not called");
  FF_ASSIGN_OR_RETURN(meta::OpenFile opened, impl_->meta->open(caller, inode, flags, impl_->client_id));
  return impl_->add(opened, flags);
}

Result<uint64_t> MemoryData::create(const meta::Caller& caller, meta::InodeId parent, std::string_view name,
                                    uint32_t mode, uint32_t flags, std::optional<meta::Inode>* parent_after) {
  FF_ASSERT(impl_->meta != nullptr, "MemoryData::bind was not called");
  // One transaction; the creator may open what it created whatever the mode says (open(2) with O_CREAT).
  FF_ASSIGN_OR_RETURN(meta::OpenFile opened,
                      impl_->meta->create_open(caller, parent, name, mode, flags, impl_->client_id));
  if (parent_after != nullptr) *parent_after = opened.parent;
  return impl_->add(opened, flags);
}

Result<size_t> MemoryData::read(uint64_t handle, uint64_t offset, std::span<std::byte> out) {
  FF_ASSIGN_OR_RETURN(Handle * h, impl_->find(handle));
  std::shared_lock lock(h->file->mutex);
  const std::string& bytes = h->file->bytes;
  if (offset >= bytes.size()) return size_t{0};
  size_t n = std::min<size_t>(out.size(), bytes.size() - offset);
  std::memcpy(out.data(), bytes.data() + offset, n);
  return n;
}

Result<size_t> MemoryData::write(uint64_t handle, uint64_t offset, std::span<const std::byte> data) {
  FF_ASSIGN_OR_RETURN(Handle * h, impl_->find(handle));
  if (!h->writable)
    return meta::meta_error(EBADF, fmt::format("memory data: handle {} is not open for writing", handle));
  constexpr uint64_t kMaxBytes = uint64_t{16} << 30;
  if (offset + data.size() > kMaxBytes) {
    return meta::meta_error(EFBIG,
                            fmt::format("memory data: a write to {} exceeds the {} byte limit of a file in memory",
                                        offset + data.size(), kMaxBytes));
  }
  {
    std::unique_lock lock(h->file->mutex);
    std::string& bytes = h->file->bytes;
    if (bytes.size() < offset + data.size()) bytes.resize(offset + data.size());
    std::memcpy(bytes.data() + offset, data.data(), data.size());
  }
  std::lock_guard lock(impl_->handles_mutex);
  h->written_end = std::max<uint64_t>(h->written_end, offset + data.size());
  return data.size();
}

Result<meta::Inode> MemoryData::fsync(uint64_t handle) {
  FF_ASSIGN_OR_RETURN(Handle * h, impl_->find(handle));
  uint64_t hint = 0;
  {
    std::lock_guard lock(impl_->handles_mutex);
    hint = h->written_end;
  }
  return impl_->meta->sync(h->inode, hint);
}

Status MemoryData::close(uint64_t handle) {
  Handle h;
  {
    std::lock_guard lock(impl_->handles_mutex);
    auto it = impl_->handles.find(handle);
    if (it == impl_->handles.end())
      return meta::meta_error(EBADF, fmt::format("memory data: no open handle {}", handle));
    h = std::move(it->second);
    impl_->handles.erase(it);
  }
  return impl_->meta->close(h.inode, h.session, h.written_end);
}

Result<meta::Inode> MemoryData::stat(uint64_t handle) {
  FF_ASSIGN_OR_RETURN(Handle * h, impl_->find(handle));
  FF_ASSIGN_OR_RETURN(meta::Inode inode, impl_->meta->getattr(h->inode));
  std::shared_lock lock(h->file->mutex);
  inode.length = std::max<uint64_t>(inode.length, h->file->bytes.size());
  return inode;
}

Result<meta::Inode> MemoryData::setattr(const meta::Caller& caller, meta::InodeId inode, const meta::SetAttr& attr) {
  FF_ASSERT(impl_->meta != nullptr, "MemoryData::bind was not called");
  return impl_->meta->setattr(caller, inode, attr);
}

Result<uint64_t> MemoryData::file_length(const meta::Inode& inode) {
  std::shared_ptr<File> file = impl_->file(inode.id);
  std::shared_lock lock(file->mutex);
  return uint64_t{file->bytes.size()};
}

Status MemoryData::truncate(const meta::Inode& inode, uint64_t length) {
  std::shared_ptr<File> file = impl_->file(inode.id);
  std::unique_lock lock(file->mutex);
  file->bytes.resize(length);
  return Status::ok();
}

Status MemoryData::remove_file(const meta::Inode& inode) {
  std::lock_guard lock(impl_->files_mutex);
  impl_->files.erase(inode.id);
  return Status::ok();
}

}  // namespace ff::fs::fuse
