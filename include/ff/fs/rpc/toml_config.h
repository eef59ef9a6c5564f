// TomlReader: reads a TOML config (toml++) into typed fields with errors a user can act on: every
// error names the file, the dotted key, the value found and what was expected, and keys that no field
// reads are reported as unknown (a misspelt key is an error, not a silently ignored setting).
//
//   FF_ASSIGN_OR_RETURN(TomlReader reader, TomlReader::from_file(path));
//   FF_RETURN_IF_ERROR(reader.read("mgmtd.listen", &config.listen));
//   FF_RETURN_IF_ERROR(reader.read_required("storage.node_id", &config.node_id));
//   FF_RETURN_IF_ERROR(reader.finish());  // unknown keys
//
// Thread-safety: a TomlReader is used by one thread.
#pragma once

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "ff/common/result.h"
#include "ff/common/status.h"

namespace ff::fs::rpc {

class TomlReader {
 public:
  // Parses TOML text; `source` names it in messages (a path or "<string>").
  static Result<TomlReader> from_string(std::string_view text, std::string source = "<string>");
  static Result<TomlReader> from_file(const std::string& path);

  TomlReader(TomlReader&&) noexcept;
  TomlReader& operator=(TomlReader&&) noexcept;
  ~TomlReader();

  // Each read leaves *out untouched when the key is absent; read_required fails then. Integers are
  // range-checked against the field's type; a double accepts an integer.
  Status read(std::string_view key, std::string* out);
  Status read(std::string_view key, bool* out);
  Status read(std::string_view key, int64_t* out);
  Status read(std::string_view key, uint64_t* out);
  Status read(std::string_view key, uint32_t* out);
  Status read(std::string_view key, uint16_t* out);
  Status read(std::string_view key, double* out);
  Status read(std::string_view key, std::vector<std::string>* out);
  template <typename T>
  Status read_required(std::string_view key, T* out) {
    if (!has(key)) return invalid_argument("{}: required key '{}' is missing", source_, key);
    return read(key, out);
  }

  bool has(std::string_view key) const;

  // The number of elements of the array of tables at `key` (0 when absent); elements are read with
  // keys like "targets.2.path" (a dotted index).
  Result<size_t> array_size(std::string_view key);

  // Fails naming every key present in the file that no read() asked for.
  Status finish() const;

  const std::string& source() const { return source_; }

 private:
  struct Impl;
  TomlReader(std::unique_ptr<Impl> impl, std::string source);
  std::unique_ptr<Impl> impl_;
  std::string source_;
  std::set<std::string> used_;
};

// Parses "host:port" (port 0 allowed: the OS picks one). Errors name the text.
struct HostPort {
  std::string host;
  uint16_t port = 0;
  std::string to_string() const;
};
Result<HostPort> parse_host_port(std::string_view text);
// Checks "host:port[,host:port...]" (e.g. a primary mgmtd and its standbys); the error names the bad element.
Status check_host_port_list(std::string_view text);

}  // namespace ff::fs::rpc
