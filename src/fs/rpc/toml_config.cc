#include "ff/fs/rpc/toml_config.h"

#include <charconv>
#include <limits>

#include <fmt/format.h>
#include <toml++/toml.h>

#include "ff/common/file.h"
#include "ff/fs/mgmtd_addresses.h"

namespace ff::fs::rpc {

struct TomlReader::Impl {
  toml::table table;
};

TomlReader::TomlReader(std::unique_ptr<Impl> impl, std::string source)
    : impl_(std::move(impl)), source_(std::move(source)) {}
TomlReader::TomlReader(TomlReader&&) noexcept = default;
TomlReader& TomlReader::operator=(TomlReader&&) noexcept = default;
TomlReader::~TomlReader() = default;

Result<TomlReader> TomlReader::from_string(std::string_view text, std::string source) {
  auto impl = std::make_unique<Impl>();
  try {
    impl->table = toml::parse(text, source);
  } catch (const toml::parse_error& error) {
    const auto& begin = error.source().begin;
    return invalid_argument("{}:{}:{}: TOML syntax error: {}", source, begin.line, begin.column,
                            error.description());
  }
  return TomlReader(std::move(impl), std::move(source));
}

Result<TomlReader> TomlReader::from_file(const std::string& path) {
  FF_ASSIGN_OR_RETURN(std::string text, read_file(path));
  return from_string(text, path);
}

namespace {

// Walks a dotted key; numeric parts index arrays.
const toml::node* find_node(const toml::table& table, std::string_view key) {
  const toml::node* node = &table;
  size_t start = 0;
  while (node != nullptr && start <= key.size()) {
    size_t dot = key.find('.', start);
    std::string_view part = key.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
    if (const auto* t = node->as_table()) {
      node = t->get(part);
    } else if (const auto* a = node->as_array()) {
      size_t index = 0;
      auto [ptr, ec] = std::from_chars(part.data(), part.data() + part.size(), index);
      node = (ec == std::errc() && ptr == part.data() + part.size()) ? a->get(index) : nullptr;
    } else {
      node = nullptr;
    }
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  return node;
}

std::string describe(const toml::node& node) {
  std::string value;
  if (node.is_string()) {
    value = fmt::format("\"{}\"", *node.value<std::string>());
  } else if (node.is_integer()) {
    value = std::to_string(*node.value<int64_t>());
  } else if (node.is_floating_point()) {
    value = fmt::format("{}", *node.value<double>());
  } else if (node.is_boolean()) {
    value = *node.value<bool>() ? "true" : "false";
  } else {
    switch (node.type()) {
      case toml::node_type::table: value = "a table"; break;
      case toml::node_type::array: value = "an array"; break;
      case toml::node_type::date: value = "a date"; break;
      case toml::node_type::time: value = "a time"; break;
      case toml::node_type::date_time: value = "a date-time"; break;
      default: value = "a value"; break;
    }
  }
  return value;
}

// Every leaf key under node, dotted, with array elements of tables indexed.
void collect_keys(const toml::node& node, const std::string& prefix, std::vector<std::string>* keys) {
  if (const auto* t = node.as_table()) {
    for (const auto& [k, child] : *t) {
      collect_keys(child, prefix.empty() ? std::string(k.str()) : prefix + "." + std::string(k.str()), keys);
    }
  } else if (const auto* a = node.as_array(); a != nullptr && a->is_array_of_tables()) {
    for (size_t i = 0; i < a->size(); ++i) collect_keys(*a->get(i), prefix + "." + std::to_string(i), keys);
  } else {
    keys->push_back(prefix);
  }
}

}  // namespace

bool TomlReader::has(std::string_view key) const { return find_node(impl_->table, key) != nullptr; }

Status TomlReader::read(std::string_view key, std::string* out) {
  const toml::node* node = find_node(impl_->table, key);
  if (node == nullptr) return Status::ok();
  used_.emplace(key);
  if (!node->is_string()) {
    return invalid_argument("{}: key '{}' is {}, expected a string", source_, key, describe(*node));
  }
  *out = *node->value<std::string>();
  return Status::ok();
}

Status TomlReader::read(std::string_view key, bool* out) {
  const toml::node* node = find_node(impl_->table, key);
  if (node == nullptr) return Status::ok();
  used_.emplace(key);
  if (!node->is_boolean()) {
    return invalid_argument("{}: key '{}' is {}, expected true or false", source_, key, describe(*node));
  }
  *out = *node->value<bool>();
  return Status::ok();
}

namespace {
template <typename T>
Status read_integer(const toml::node* node, const std::string& source, std::string_view key, T* out) {
  if (!node->is_integer()) {
    return invalid_argument("{}: key '{}' is {}, expected an integer", source, key, describe(*node));
  }
  int64_t value = *node->value<int64_t>();
  bool fits = true;
  if constexpr (std::is_unsigned_v<T>) {
    fits = value >= 0 && static_cast<uint64_t>(value) <= std::numeric_limits<T>::max();
  } else {
    fits = value >= std::numeric_limits<T>::min() && value <= std::numeric_limits<T>::max();
  }
  if (!fits) {
    return invalid_argument("{}: key '{}' is {}, expected an integer in [{}, {}]", source, key, value,
                            std::numeric_limits<T>::min(), std::numeric_limits<T>::max());
  }
  *out = static_cast<T>(value);
  return Status::ok();
}
}  // namespace

#define FF_TOML_READ_INTEGER(type)                                            \
  Status TomlReader::read(std::string_view key, type* out) {                  \
    const toml::node* node = find_node(impl_->table, key);                    \
    if (node == nullptr) return Status::ok();                                 \
    used_.emplace(key);                                                       \
    return read_integer(node, source_, key, out);                             \
  }
FF_TOML_READ_INTEGER(int64_t)
FF_TOML_READ_INTEGER(uint64_t)
FF_TOML_READ_INTEGER(uint32_t)
FF_TOML_READ_INTEGER(uint16_t)
#undef FF_TOML_READ_INTEGER

Status TomlReader::read(std::string_view key, double* out) {
  const toml::node* node = find_node(impl_->table, key);
  if (node == nullptr) return Status::ok();
  used_.emplace(key);
  if (node->is_integer()) {
    *out = static_cast<double>(*node->value<int64_t>());
  } else if (node->is_floating_point()) {
    *out = *node->value<double>();
  } else {
    return invalid_argument("{}: key '{}' is {}, expected a number", source_, key, describe(*node));
  }
  return Status::ok();
}

Status TomlReader::read(std::string_view key, std::vector<std::string>* out) {
  const toml::node* node = find_node(impl_->table, key);
  if (node == nullptr) return Status::ok();
  used_.emplace(key);
  const auto* array = node->as_array();
  if (array == nullptr) {
    return invalid_argument("{}: key '{}' is {}, expected an array of strings", source_, key, describe(*node));
  }
  std::vector<std::string> values;
  for (size_t i = 0; i < array->size(); ++i) {
    const toml::node& element = *array->get(i);
    if (!element.is_string()) {
      return invalid_argument("{}: key '{}' element {} is {}, expected a string", source_, key, i,
                              describe(element));
    }
    values.push_back(*element.value<std::string>());
  }
  *out = std::move(values);
  return Status::ok();
}

Result<size_t> TomlReader::array_size(std::string_view key) {
  const toml::node* node = find_node(impl_->table, key);
  if (node == nullptr) return size_t{0};
  const auto* array = node->as_array();
  if (array == nullptr || !array->is_array_of_tables()) {
    return invalid_argument("{}: key '{}' is {}, expected an array of tables ([[{}]])", source_, key,
                            describe(*node), key);
  }
  return array->size();
}

Status TomlReader::finish() const {
  std::vector<std::string> keys;
  collect_keys(impl_->table, "", &keys);
  std::vector<std::string> unknown;
  for (const std::string& key : keys) {
    if (!used_.contains(key)) unknown.push_back(key);
  }
  if (!unknown.empty()) {
    return invalid_argument("{}: unknown key{} {} (misspelt, or not a setting of this program)", source_,
                            unknown.size() > 1 ? "s" : "", fmt::join(unknown, ", "));
  }
  return Status::ok();
}

std::string HostPort::to_string() const { return fmt::format("{}:{}", host, port); }

Result<HostPort> parse_host_port(std::string_view text) {
  size_t colon = text.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == text.size()) {
    return invalid_argument("address '{}' is not host:port (e.g. 127.0.0.1:9000)", text);
  }
  HostPort result;
  result.host = std::string(text.substr(0, colon));
  std::string_view port = text.substr(colon + 1);
  unsigned value = 0;
  auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (ec != std::errc() || ptr != port.data() + port.size() || value > 65535) {
    return invalid_argument("address '{}': port '{}' is not a number in [0, 65535]", text, port);
  }
  result.port = static_cast<uint16_t>(value);
  return result;
}

Status check_host_port_list(std::string_view text) {
  FF_ASSIGN_OR_RETURN(MgmtdAddresses list, MgmtdAddresses::parse(text));  // the split, and no empty element
  for (const std::string& element : list.all()) {
    auto parsed = parse_host_port(element);
    if (!parsed.is_ok()) return invalid_argument("address list '{}': {}", text, parsed.status().message());
  }
  return Status::ok();
}

}  // namespace ff::fs::rpc
