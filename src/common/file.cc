#include "ff/common/file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <fstream>
#include <sstream>

namespace ff {

Status write_file_atomically(const std::string& path, std::string_view content) {
  const std::string temporary = fmt::format("{}.tmp.{}", path, ::getpid());
  int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return errno_error(errno, fmt::format("create {}", temporary));
  size_t written = 0;
  while (written < content.size()) {
    ssize_t n = ::write(fd, content.data() + written, content.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      Status error = errno_error(errno, fmt::format("write {}", temporary));
      ::close(fd);
      ::unlink(temporary.c_str());
      return error;
    }
    written += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    Status error = errno_error(errno, fmt::format("sync {}", temporary));
    ::unlink(temporary.c_str());
    return error;
  }
  if (::rename(temporary.c_str(), path.c_str()) != 0) {
    Status error = errno_error(errno, fmt::format("rename {} to {}", temporary, path));
    ::unlink(temporary.c_str());
    return error;
  }
  return Status::ok();
}

Result<std::string> read_file(const std::string& path) {
  std::ifstream input(path, std::ios::binary);
  if (!input) return errno_error(errno, fmt::format("open {}", path));
  std::ostringstream content;
  content << input.rdbuf();
  if (input.bad()) return errno_error(errno, fmt::format("read {}", path));
  return content.str();
}

}  // namespace ff
