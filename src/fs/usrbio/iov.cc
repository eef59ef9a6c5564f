// Iov (a named shared-memory data buffer) and register_fd.
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

#include "ring_layout.h"

namespace ff::fs::usrbio {

Result<Iov> Iov::create(std::string_view name, uint64_t size) {
  FF_RETURN_IF_ERROR(validate_name(name));
  if (size == 0 || size > internal::kMaxIovBytes) {
    return invalid_argument("Iov '{}': size {} bytes; expected 1 .. {} (1 TiB)", name, size, internal::kMaxIovBytes);
  }
  FF_ASSIGN_OR_RETURN(internal::Mapping mapping, internal::Mapping::create(internal::iov_path(name), size));
  Iov iov;
  iov.name_ = std::string(name);
  iov.size_ = size;
  iov.data_ = mapping.release();
  iov.owner_ = true;
  return iov;
}

Result<Iov> Iov::open(std::string_view name) {
  FF_RETURN_IF_ERROR(validate_name(name));
  struct stat info {};
  FF_ASSIGN_OR_RETURN(internal::Mapping mapping, internal::Mapping::open(internal::iov_path(name), &info));
  Iov iov;
  iov.name_ = std::string(name);
  iov.size_ = mapping.bytes();
  iov.data_ = mapping.release();
  iov.owner_ = false;
  return iov;
}

Status Iov::remove_stale(std::string_view name) {
  FF_RETURN_IF_ERROR(validate_name(name));
  for (const std::string& path : {internal::iov_path(name), internal::ior_path(name)}) {
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) return errno_error(errno, "unlink " + path);
  }
  return Status::ok();
}

Iov::~Iov() { reset(); }

void Iov::reset() {
  if (data_ != nullptr) {
    ::munmap(data_, size_);
    if (owner_) ::unlink(path().c_str());
  }
  data_ = nullptr;
  size_ = 0;
  owner_ = false;
}

Iov::Iov(Iov&& other) noexcept
    : name_(std::move(other.name_)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      owner_(std::exchange(other.owner_, false)) {}

Iov& Iov::operator=(Iov&& other) noexcept {
  if (this != &other) {
    reset();
    name_ = std::move(other.name_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    owner_ = std::exchange(other.owner_, false);
  }
  return *this;
}

std::string Iov::path() const { return internal::iov_path(name_); }

Result<std::span<std::byte>> Iov::range(uint64_t offset, uint64_t length) const {
  if (offset > size_ || length > size_ - offset) {
    return invalid_argument("Iov '{}': range [{}, {}) is outside its {} bytes", name_, offset, offset + length, size_);
  }
  return std::span<std::byte>(data_ + offset, length);
}

Result<FileId> register_fd(int fd, std::string_view mount_path) {
  struct stat info {};
  if (::fstat(fd, &info) != 0) return errno_error(errno, fmt::format("register_fd: fstat fd {}", fd));
  if (!S_ISREG(info.st_mode)) {
    return invalid_argument("register_fd: fd {} is not a regular file (mode 0{:o})", fd, info.st_mode);
  }
  if (!mount_path.empty()) {
    struct stat mount {};
    const std::string path(mount_path);
    if (::stat(path.c_str(), &mount) != 0) return errno_error(errno, "register_fd: stat mount " + path);
    if (mount.st_dev != info.st_dev) {
      return invalid_argument("register_fd: fd {} is on device {}, not on the mount {} (device {})", fd,
                              static_cast<uint64_t>(info.st_dev), path, static_cast<uint64_t>(mount.st_dev));
    }
  }
  if (info.st_ino == 0) return invalid_argument("register_fd: fd {} has inode number 0", fd);
  return static_cast<FileId>(info.st_ino);
}

}  // namespace ff::fs::usrbio
