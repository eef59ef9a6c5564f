#include "json_reader.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>

#include "ff/common/assert.h"

namespace ff::trace::internal {

Result<std::unique_ptr<ByteSource>> ByteSource::open(const std::string& path) {
  std::unique_ptr<ByteSource> source(new ByteSource());
  source->path_ = path;
  source->fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (source->fd_ < 0) return errno_error(errno, fmt::format("open {}", path));
  struct stat info {};
  if (::fstat(source->fd_, &info) != 0) return errno_error(errno, fmt::format("stat {}", path));
  if (S_ISDIR(info.st_mode)) return io_error("open {}: is a directory", path);
  source->file_size_bytes_ = static_cast<uint64_t>(info.st_size);

  unsigned char magic[2] = {0, 0};
  ssize_t got = ::pread(source->fd_, magic, sizeof(magic), 0);
  if (got < 0) return errno_error(errno, fmt::format("read {}", path));
  if (got == 2 && magic[0] == 0x1f && magic[1] == 0x8b) {
    // gzdopen takes ownership of the descriptor.
    gzFile gz = ::gzdopen(source->fd_, "rb");
    if (gz == nullptr) return io_error("open {}: zlib could not open the gzip stream", path);
    source->fd_ = -1;
    // NOTE: a 1 MiB zlib input buffer amortises read() calls; the default 8 KiB costs ~10% speed.
    ::gzbuffer(gz, 1 << 20);
    source->gz_ = gz;
  }
  return source;
}

ByteSource::~ByteSource() {
  if (gz_ != nullptr) ::gzclose(static_cast<gzFile>(gz_));
  if (fd_ >= 0) ::close(fd_);
}

uint64_t ByteSource::file_bytes_consumed() const {
  if (gz_ != nullptr) {
    const z_off_t offset = ::gzoffset(static_cast<gzFile>(gz_));
    return offset < 0 ? 0 : static_cast<uint64_t>(offset);
  }
  return plain_bytes_read_;
}

Result<size_t> ByteSource::read(char* buffer, size_t capacity) {
  FF_ASSERT(capacity > 0);
  if (gz_ != nullptr) {
    const unsigned request = static_cast<unsigned>(std::min<size_t>(capacity, size_t{1} << 30));
    const int n = ::gzread(static_cast<gzFile>(gz_), buffer, request);
    if (n < 0) {
      int zlib_error = 0;
      const char* message = ::gzerror(static_cast<gzFile>(gz_), &zlib_error);
      return data_loss("read {}: gzip error: {}", path_, message != nullptr ? message : "unknown");
    }
    return static_cast<size_t>(n);
  }
  for (int attempt = 0; attempt < 1000; ++attempt) {  // Bounded retry on EINTR.
    const ssize_t n = ::read(fd_, buffer, capacity);
    if (n >= 0) {
      plain_bytes_read_ += static_cast<uint64_t>(n);
      return static_cast<size_t>(n);
    }
    if (errno != EINTR) return errno_error(errno, fmt::format("read {}", path_));
  }
  return io_error("read {}: interrupted 1000 times in a row", path_);
}

JsonReader::JsonReader(ByteSource& source, std::string label, size_t buffer_bytes)
    : source_(source), label_(std::move(label)), buffer_(new char[buffer_bytes]), capacity_(buffer_bytes) {
  FF_ASSERT(buffer_bytes >= 64);
  cursor_ = buffer_.get();
  end_ = buffer_.get();
}

bool JsonReader::refill() {
  if (at_end_ || failed()) return false;
  buffer_offset_ += static_cast<uint64_t>(end_ - buffer_.get());
  cursor_ = buffer_.get();
  end_ = buffer_.get();
  Result<size_t> got = source_.read(buffer_.get(), capacity_);
  if (!got.is_ok()) {
    error_ = got.status();
    return false;
  }
  if (*got == 0) {
    at_end_ = true;
    return false;
  }
  end_ = buffer_.get() + *got;
  return true;
}

bool JsonReader::fail_at(uint64_t offset, const std::string& message) {
  if (!failed()) error_ = invalid_argument("{}: byte {}: {}", label_, offset, message);
  // Stop every later read.
  at_end_ = true;
  cursor_ = end_;
  return false;
}

std::string JsonReader::describe(int c) {
  if (c < 0) return "end of input";
  if (c >= 0x20 && c < 0x7f) return fmt::format("'{}'", static_cast<char>(c));
  return fmt::format("byte 0x{:02x}", c);
}

bool JsonReader::consume(char expected, std::string_view context) {
  const int c = peek();
  if (c != static_cast<unsigned char>(expected)) {
    if (failed()) return false;
    return fail("expected '{}' {}, found {}", expected, context, describe(c));
  }
  advance();
  return true;
}

namespace {

void append_utf8(std::string& out, uint32_t code_point) {
  if (code_point < 0x80) {
    out += static_cast<char>(code_point);
  } else if (code_point < 0x800) {
    out += static_cast<char>(0xc0 | (code_point >> 6));
    out += static_cast<char>(0x80 | (code_point & 0x3f));
  } else if (code_point < 0x10000) {
    out += static_cast<char>(0xe0 | (code_point >> 12));
    out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (code_point & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (code_point >> 18));
    out += static_cast<char>(0x80 | ((code_point >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (code_point & 0x3f));
  }
}

int hex_value(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

// Called with the cursor just past a backslash. Appends the decoded character when out is set.
bool JsonReader::read_escape(std::string* out) {
  auto next_raw = [this]() -> int {
    if (cursor_ == end_ && !refill()) return -1;
    return static_cast<unsigned char>(*cursor_++);
  };
  auto read_hex4 = [&](uint32_t& value) {
    value = 0;
    for (int i = 0; i < 4; ++i) {
      const uint64_t at = offset();
      const int digit = hex_value(next_raw());
      if (digit < 0) return failed() ? false : fail_at(at, "expected 4 hex digits after \\u in a string");
      value = value * 16 + static_cast<uint32_t>(digit);
    }
    return true;
  };
  const uint64_t at = offset();
  const int c = next_raw();
  char decoded = 0;
  switch (c) {
    case '"': decoded = '"'; break;
    case '\\': decoded = '\\'; break;
    case '/': decoded = '/'; break;
    case 'b': decoded = '\b'; break;
    case 'f': decoded = '\f'; break;
    case 'n': decoded = '\n'; break;
    case 'r': decoded = '\r'; break;
    case 't': decoded = '\t'; break;
    case 'u': {
      uint32_t code_point = 0;
      if (!read_hex4(code_point)) return false;
      // A high surrogate followed by \uDC00..\uDFFF forms one code point; a lone surrogate is kept
      // as U+FFFD rather than rejected, as browsers do.
      if (code_point >= 0xd800 && code_point < 0xdc00) {
        if (cursor_ == end_) refill();
        if (cursor_ < end_ && *cursor_ == '\\') {
          ++cursor_;
          if (next_raw() != 'u') return failed() ? false : fail("expected \\u after a high surrogate");
          uint32_t low = 0;
          if (!read_hex4(low)) return false;
          code_point = (low >= 0xdc00 && low < 0xe000) ? 0x10000 + ((code_point - 0xd800) << 10) + (low - 0xdc00)
                                                       : 0xfffd;
        } else {
          code_point = 0xfffd;
        }
      } else if (code_point >= 0xdc00 && code_point < 0xe000) {
        code_point = 0xfffd;
      }
      if (out != nullptr) append_utf8(*out, code_point);
      return true;
    }
    default:
      if (failed()) return false;
      return fail_at(at, fmt::format("invalid escape \\{} in a string", c < 0 ? std::string("<end>") : describe(c)));
  }
  if (out != nullptr) *out += decoded;
  return true;
}

JsonReader::Next JsonReader::next_item(char close, std::string_view where) {
  const int next = peek();
  if (next == ',') {
    advance();
    return Next::kMore;
  }
  if (next == close) {
    advance();
    return Next::kEnd;
  }
  if (!failed()) fail("expected ',' or '{}' {}, found {}", close, where, describe(next));
  return Next::kError;
}

bool JsonReader::read_string(std::string& out) {
  out.clear();
  return scan_string(&out);
}

bool JsonReader::skip_string() { return scan_string(nullptr); }

bool JsonReader::scan_string(std::string* out) {
  const int first = peek();
  if (first != '"') return failed() ? false : fail("expected a string, found {}", describe(first));
  const uint64_t start = offset();
  advance();
  for (;;) {
    if (cursor_ == end_ && !refill()) {
      return failed() ? false : fail_at(start, "unterminated string");
    }
    // NOTE: memchr is vectorised; most strings have no escapes, so one scan per string suffices.
    const size_t available = static_cast<size_t>(end_ - cursor_);
    const char* quote = static_cast<const char*>(std::memchr(cursor_, '"', available));
    const char* stop = quote != nullptr ? quote : end_;
    const char* backslash = static_cast<const char*>(std::memchr(cursor_, '\\', static_cast<size_t>(stop - cursor_)));
    if (backslash != nullptr) {
      if (out != nullptr) out->append(cursor_, static_cast<size_t>(backslash - cursor_));
      cursor_ = const_cast<char*>(backslash) + 1;
      if (!read_escape(out)) return false;
      continue;
    }
    if (out != nullptr) out->append(cursor_, static_cast<size_t>(stop - cursor_));
    cursor_ = const_cast<char*>(stop);
    if (quote != nullptr) {
      ++cursor_;
      return true;
    }
  }
}

bool JsonReader::read_number_token(char* token, size_t capacity, size_t& length) {
  length = 0;
  const int first = peek();
  if (first != '-' && (first < '0' || first > '9')) {
    return failed() ? false : fail("expected a number, found {}", describe(first));
  }
  for (;;) {
    while (cursor_ < end_) {
      const char c = *cursor_;
      const bool number_char = (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '+' || c == 'e' || c == 'E';
      if (!number_char) return true;
      if (length + 1 >= capacity) return fail("number longer than {} characters", capacity - 1);
      token[length++] = c;
      ++cursor_;
    }
    if (!refill()) return !failed();
  }
}

bool scaled_integer_from_token(std::string_view token, int scale_exponent, int64_t& out) {
  size_t i = 0;
  bool negative = false;
  if (i < token.size() && token[i] == '-') {
    negative = true;
    ++i;
  }
  // Up to 18 significant digits go into the mantissa (fits in int64); further digits only move the
  // decimal point.
  int64_t mantissa = 0;
  int significant = 0;
  int exponent10 = 0;
  bool any_digit = false;
  for (; i < token.size() && token[i] >= '0' && token[i] <= '9'; ++i) {
    any_digit = true;
    if (significant < 18) {
      mantissa = mantissa * 10 + (token[i] - '0');
      if (mantissa != 0) ++significant;
    } else {
      ++exponent10;
    }
  }
  if (i < token.size() && token[i] == '.') {
    ++i;
    bool fraction_digit = false;
    for (; i < token.size() && token[i] >= '0' && token[i] <= '9'; ++i) {
      fraction_digit = true;
      if (significant < 18) {
        mantissa = mantissa * 10 + (token[i] - '0');
        if (mantissa != 0) ++significant;
        --exponent10;
      }
    }
    if (!fraction_digit) return false;
  }
  if (!any_digit) return false;
  if (i < token.size() && (token[i] == 'e' || token[i] == 'E')) {
    ++i;
    bool exponent_negative = false;
    if (i < token.size() && (token[i] == '+' || token[i] == '-')) exponent_negative = token[i++] == '-';
    int exponent = 0;
    bool exponent_digit = false;
    for (; i < token.size() && token[i] >= '0' && token[i] <= '9'; ++i) {
      exponent_digit = true;
      if (exponent < 10000) exponent = exponent * 10 + (token[i] - '0');
    }
    if (!exponent_digit) return false;
    exponent10 += exponent_negative ? -exponent : exponent;
  }
  if (i != token.size()) return false;
  exponent10 += scale_exponent;
  if (mantissa == 0) {
    out = 0;
    return true;
  }
  if (exponent10 < -18) {
    out = 0;
    return true;
  }
  for (; exponent10 > 0; --exponent10) {
    if (mantissa > INT64_MAX / 10) return false;
    mantissa *= 10;
  }
  if (exponent10 < 0) {
    // Digits below the unit are dropped with rounding to nearest (half away from zero), so
    // "1.0005" us is 1001 ns, and 0.1 + 0.2 printed as 0.30000000000000004 is 300 ns.
    for (; exponent10 < -1; ++exponent10) mantissa /= 10;
    mantissa = mantissa / 10 + (mantissa % 10 >= 5 ? 1 : 0);
  }
  out = negative ? -mantissa : mantissa;
  return true;
}

bool JsonReader::read_scaled_integer(int scale_exponent, int64_t& out) {
  char token[72];
  size_t length = 0;
  const uint64_t start = offset();
  if (!read_number_token(token, sizeof(token), length)) return false;
  if (!scaled_integer_from_token(std::string_view(token, length), scale_exponent, out)) {
    return fail_at(start, fmt::format("invalid or out-of-range number '{}'", std::string_view(token, length)));
  }
  return true;
}

bool JsonReader::skip_literal(std::string_view literal) {
  const uint64_t start = offset();
  for (char expected : literal) {
    if (cursor_ == end_ && !refill()) return failed() ? false : fail_at(start, "truncated literal");
    if (*cursor_ != expected) return fail_at(start, "invalid literal (expected true, false or null)");
    ++cursor_;
  }
  return true;
}

bool JsonReader::skip_value(int max_depth) {
  const int c = peek();
  switch (c) {
    case '"': return skip_string();
    case 't': return skip_literal("true");
    case 'f': return skip_literal("false");
    case 'n': return skip_literal("null");
    case '{': {
      if (max_depth <= 0) return fail("JSON nested too deeply");
      advance();
      if (peek() == '}') {
        advance();
        return true;
      }
      for (;;) {
        if (!skip_string() || !consume(':', "after an object key") || !skip_value(max_depth - 1)) return false;
        const Next next = next_item('}', "in an object");
        if (next != Next::kMore) return next == Next::kEnd;
      }
    }
    case '[': {
      if (max_depth <= 0) return fail("JSON nested too deeply");
      advance();
      if (peek() == ']') {
        advance();
        return true;
      }
      for (;;) {
        if (!skip_value(max_depth - 1)) return false;
        const Next next = next_item(']', "in an array");
        if (next != Next::kMore) return next == Next::kEnd;
      }
    }
    default: {
      if (c == '-' || (c >= '0' && c <= '9')) {
        char token[72];
        size_t length = 0;
        const uint64_t start = offset();
        if (!read_number_token(token, sizeof(token), length)) return false;
        int64_t ignored = 0;
        // Validate the shape only; the value may legitimately overflow int64 (e.g. 1e300).
        if (!scaled_integer_from_token(std::string_view(token, length), -400, ignored)) {
          return fail_at(start, fmt::format("invalid number '{}'", std::string_view(token, length)));
        }
        return true;
      }
      if (failed()) return false;
      return fail("expected a JSON value, found {}", describe(c));
    }
  }
}

}  // namespace ff::trace::internal
