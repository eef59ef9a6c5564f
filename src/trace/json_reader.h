// Internal to ff::trace: a streaming JSON pull reader specialised for Chrome traces.
//
// Why not nlohmann::json::sax_parse: the analyzer only needs a handful of fields of each event and
// skips everything else (PyTorch kernel "args" are most of the bytes). A pull reader lets the event
// parser ask for exactly the fields it wants, skips the rest without building strings or numbers,
// and converts "ts"/"dur" microsecond decimals straight to integer nanoseconds without going through
// double (PyTorch timestamps have 16 significant digits, at the edge of a double's precision).
// docs/trace-analysis.md records the measured difference.
//
// The reader validates the JSON grammar of everything it reads or skips (so a malformed trace is an
// error with a byte offset, not silent garbage), except that it does not reject control characters
// inside strings and accepts any number token made of [0-9+-.eE] that begins like a number.
//
// Errors are sticky: the first failure records a Status with "<label>: byte N: <what>" and every
// later call returns false, so the event loop checks one flag instead of threading Status through
// every character.
//
// Thread-safety: one reader per thread.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>

#include "ff/common/result.h"
#include "ff/common/status.h"

namespace ff::trace::internal {

// A plain or gzip-compressed file read in large blocks. Gzip is detected by its magic bytes, not by
// the file name, so a renamed file still works.
class ByteSource {
 public:
  static Result<std::unique_ptr<ByteSource>> open(const std::string& path);
  ~ByteSource();
  ByteSource(const ByteSource&) = delete;
  ByteSource& operator=(const ByteSource&) = delete;

  // Reads up to capacity bytes of (decompressed) content; 0 at the end of the input.
  Result<size_t> read(char* buffer, size_t capacity);

  // Size of the file on disk and how much of it has been consumed (compressed bytes for gzip), for
  // progress reports.
  uint64_t file_size_bytes() const { return file_size_bytes_; }
  uint64_t file_bytes_consumed() const;
  bool compressed() const { return gz_ != nullptr; }

 private:
  ByteSource() = default;
  std::string path_;
  int fd_ = -1;
  void* gz_ = nullptr;  // gzFile; void* keeps zlib.h out of this header.
  uint64_t file_size_bytes_ = 0;
  uint64_t plain_bytes_read_ = 0;
};

class JsonReader {
 public:
  // label prefixes every error message (the file path).
  JsonReader(ByteSource& source, std::string label, size_t buffer_bytes = size_t{1} << 20);

  bool failed() const { return !error_.is_ok(); }
  const Status& error() const { return error_; }
  // Absolute byte offset (in the decompressed content) of the next unread character.
  uint64_t offset() const { return buffer_offset_ + static_cast<uint64_t>(cursor_ - buffer_.get()); }

  // Skips whitespace and returns the next character without consuming it, or -1 at the end of the
  // input (or after an error).
  int peek() {
    for (;;) {
      while (cursor_ < end_) {
        const unsigned char c = static_cast<unsigned char>(*cursor_);
        // NOTE: one compare rejects every non-whitespace character (all are > ' ').
        if (c > ' ' || (c != ' ' && c != '\n' && c != '\r' && c != '\t')) return c;
        ++cursor_;
      }
      if (!refill()) return -1;
    }
  }
  // Consumes the character that peek() returned.
  void advance() { ++cursor_; }

  // Consumes `expected` after optional whitespace, or fails with "expected 'X' <context>".
  bool consume(char expected, std::string_view context);

  // Reads a string value (the next non-space character must be '"') into out, decoding escapes.
  bool read_string(std::string& out);
  bool skip_string();
  // Reads (out != nullptr) or skips a string; the one implementation behind both.
  bool scan_string(std::string* out);
  // Reads a number token into a small buffer and converts it to an integer, rounded to nearest;
  // `scale_exponent` multiplies by 10^scale_exponent first (3 turns microseconds into nanoseconds).
  bool read_scaled_integer(int scale_exponent, int64_t& out);
  // Skips any JSON value, nested at most max_depth deep.
  bool skip_value(int max_depth = 512);

  // After an object member or array element: consumes ',' (kMore) or `close` (kEnd); anything else
  // records "expected ',' or '<close>' <where>, found ..." and returns kError.
  enum class Next { kMore, kEnd, kError };
  Next next_item(char close, std::string_view where);

  // Records an error at the current offset (if none is recorded yet) and returns false.
  template <typename... Args>
  bool fail(fmt::format_string<Args...> format, Args&&... args) {
    return fail_at(offset(), fmt::format(format, std::forward<Args>(args)...));
  }
  bool fail_at(uint64_t offset, const std::string& message);
  // "'x'" or "end of input", for messages.
  static std::string describe(int c);

  // Bytes of the file consumed so far (compressed for gzip), for progress.
  uint64_t file_bytes_consumed() const { return source_.file_bytes_consumed(); }

 private:
  // Loads the next block; false at the end of the input or on a read error.
  bool refill();
  bool read_number_token(char* token, size_t capacity, size_t& length);
  bool skip_literal(std::string_view literal);
  bool read_escape(std::string* out);

  ByteSource& source_;
  std::string label_;
  std::unique_ptr<char[]> buffer_;
  size_t capacity_;
  char* cursor_;
  char* end_;
  uint64_t buffer_offset_ = 0;
  bool at_end_ = false;
  Status error_;
};

// Converts a JSON number token times 10^scale_exponent to an integer, rounded to nearest, without
// floating point. False when the token is not a number or the result overflows int64.
bool scaled_integer_from_token(std::string_view token, int scale_exponent, int64_t& out);

}  // namespace ff::trace::internal
