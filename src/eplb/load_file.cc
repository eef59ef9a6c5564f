// Readers for expert-load files. Every error names the source, the position (line, or byte offset
// for .npy) and what was expected, so a user can fix the file.
#include "ff/eplb/load_file.h"

#include <bit>
#include <charconv>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>

#include "ff/common/assert.h"
#include "ff/common/file.h"

namespace ff::eplb {

namespace {

std::string_view trim(std::string_view text) {
  const char* kSpace = " \t\r\n";
  const size_t begin = text.find_first_not_of(kSpace);
  if (begin == std::string_view::npos) return {};
  return text.substr(begin, text.find_last_not_of(kSpace) - begin + 1);
}

bool parse_number(std::string_view text, double& value) {
  text = trim(text);
  if (!text.empty() && text.front() == '+') text.remove_prefix(1);
  if (text.empty()) return false;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  return error == std::errc() && end == text.data() + text.size();
}

// Appends one row of doubles to a matrix, checking it has the width of the first row.
Status append_row(LoadMatrix& matrix, const std::vector<double>& row, std::string_view where) {
  if (row.empty()) return invalid_argument("{}: a row has no values; expected one load per expert", where);
  if (matrix.num_layers == 0) {
    matrix.num_experts = static_cast<int64_t>(row.size());
  } else if (static_cast<int64_t>(row.size()) != matrix.num_experts) {
    return invalid_argument("{}: row has {} values, expected {} (one per expert, like the first row)", where,
                            row.size(), matrix.num_experts);
  }
  for (double value : row) matrix.values.push_back(static_cast<float>(value));
  matrix.num_layers += 1;
  return Status::ok();
}

}  // namespace

Result<LoadMatrix> parse_load_csv(std::string_view text, std::string_view source) {
  LoadMatrix matrix;
  std::vector<double> row;
  size_t line_begin = 0;
  bool seen_row = false;
  for (int64_t line_number = 1; line_begin < text.size(); ++line_number) {
    size_t line_end = text.find('\n', line_begin);
    if (line_end == std::string_view::npos) line_end = text.size();
    const std::string_view line = trim(text.substr(line_begin, line_end - line_begin));
    line_begin = line_end + 1;
    if (line.empty() || line.front() == '#') continue;
    row.clear();
    size_t cell_begin = 0;
    for (int64_t column = 1;; ++column) {
      size_t cell_end = line.find(',', cell_begin);
      const bool last = cell_end == std::string_view::npos;
      if (last) cell_end = line.size();
      const std::string_view cell = line.substr(cell_begin, cell_end - cell_begin);
      double value = 0;
      if (!parse_number(cell, value)) {
        // A first row whose first cell is not a number is a header ("e0,e1,..."); skip it.
        if (!seen_row && column == 1) break;
        return invalid_argument("{}:{}: column {} is '{}', expected a number", source, line_number, column,
                                trim(cell));
      }
      row.push_back(value);
      if (last) break;
      cell_begin = cell_end + 1;
    }
    const bool header = !seen_row && row.empty();
    seen_row = true;
    if (header) continue;
    FF_RETURN_IF_ERROR(append_row(matrix, row, fmt::format("{}:{}", source, line_number)));
  }
  if (matrix.num_layers == 0) {
    return invalid_argument("{}: no rows of loads; expected one row per layer, one column per expert", source);
  }
  return matrix;
}

Result<LoadMatrix> parse_load_json(std::string_view text, std::string_view source) {
  nlohmann::json document;
  try {
    document = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& error) {
    // The exception stays inside: the library returns a Status (STYLE.md).
    return invalid_argument("{}: byte {}: not valid JSON: {}", source, error.byte, error.what());
  }
  const nlohmann::json* rows = &document;
  if (document.is_object()) {
    if (!document.contains("weight")) {
      return invalid_argument("{}: an object without the key \"weight\"; expected a list of lists or "
                              "{{\"weight\": [[...], ...]}}", source);
    }
    rows = &document["weight"];
  }
  if (!rows->is_array() || rows->empty()) {
    return invalid_argument("{}: expected a non-empty list of rows (one per layer), found {}", source,
                            rows->type_name());
  }
  LoadMatrix matrix;
  std::vector<double> row;
  for (size_t layer = 0; layer < rows->size(); ++layer) {
    const nlohmann::json& entry = (*rows)[layer];
    if (!entry.is_array()) {
      return invalid_argument("{}: row {} is {}, expected a list of numbers (one per expert)", source, layer,
                              entry.type_name());
    }
    row.clear();
    for (size_t expert = 0; expert < entry.size(); ++expert) {
      if (!entry[expert].is_number()) {
        return invalid_argument("{}: row {}, column {} is {}, expected a number", source, layer, expert,
                                entry[expert].dump());
      }
      row.push_back(entry[expert].get<double>());
    }
    FF_RETURN_IF_ERROR(append_row(matrix, row, fmt::format("{}: row {}", source, layer)));
  }
  return matrix;
}

namespace {

// The value of `key` in a .npy header dict, e.g. "'<f4'" for 'descr'; empty when absent.
std::string_view npy_header_value(std::string_view header, std::string_view key) {
  const std::string quoted = fmt::format("'{}'", key);
  size_t position = header.find(quoted);
  if (position == std::string_view::npos) return {};
  position = header.find(':', position + quoted.size());
  if (position == std::string_view::npos) return {};
  std::string_view rest = trim(header.substr(position + 1));
  size_t end = 0;
  if (!rest.empty() && rest.front() == '(') {
    end = rest.find(')');
    end = end == std::string_view::npos ? rest.size() : end + 1;
  } else if (!rest.empty() && rest.front() == '\'') {
    end = rest.find('\'', 1);
    end = end == std::string_view::npos ? rest.size() : end + 1;
  } else {
    end = rest.find_first_of(",}");
    if (end == std::string_view::npos) end = rest.size();
  }
  return trim(rest.substr(0, end));
}

template <typename T>
void convert_npy(const char* data, size_t count, std::vector<float>& out) {
  out.resize(count);
  for (size_t i = 0; i < count; ++i) {
    T value;
    std::memcpy(&value, data + i * sizeof(T), sizeof(T));  // the data need not be aligned
    out[i] = static_cast<float>(value);
  }
}

}  // namespace

Result<LoadMatrix> parse_load_npy(std::string_view bytes, std::string_view source) {
  static_assert(std::endian::native == std::endian::little, "the .npy reader assumes a little-endian host");
  constexpr std::string_view kMagic("\x93NUMPY", 6);
  if (bytes.size() < 10 || bytes.substr(0, 6) != kMagic) {
    return invalid_argument("{}: offset 0: expected the .npy magic \\x93NUMPY (is this a .npy file?)", source);
  }
  const int major = static_cast<unsigned char>(bytes[6]);
  size_t header_length = 0;
  size_t header_begin = 0;
  if (major == 1) {
    header_length = static_cast<unsigned char>(bytes[8]) | (static_cast<size_t>(static_cast<unsigned char>(bytes[9])) << 8);
    header_begin = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) return invalid_argument("{}: offset 8: file ends inside the header length", source);
    for (int i = 0; i < 4; ++i) header_length |= static_cast<size_t>(static_cast<unsigned char>(bytes[8 + i])) << (8 * i);
    header_begin = 12;
  } else {
    return invalid_argument("{}: offset 6: .npy format version {} is not supported; expected 1, 2 or 3", source,
                            major);
  }
  if (bytes.size() < header_begin + header_length) {
    return invalid_argument("{}: offset {}: header of {} bytes runs past the end of the file ({} bytes)", source,
                            header_begin, header_length, bytes.size());
  }
  const std::string_view header = bytes.substr(header_begin, header_length);
  const std::string_view descr = npy_header_value(header, "descr");
  const std::string_view fortran = npy_header_value(header, "fortran_order");
  const std::string_view shape_text = npy_header_value(header, "shape");
  if (descr.empty() || fortran.empty() || shape_text.empty()) {
    return invalid_argument("{}: offset {}: header '{}' lacks descr, fortran_order or shape", source, header_begin,
                            trim(header));
  }
  if (fortran != "False") {
    return invalid_argument("{}: offset {}: fortran_order is {}; expected False (C order)", source, header_begin,
                            fortran);
  }
  size_t item_size = 0;
  if (descr == "'<f4'") item_size = 4;
  else if (descr == "'<f8'") item_size = 8;
  else if (descr == "'<i4'") item_size = 4;
  else if (descr == "'<i8'") item_size = 8;
  else {
    return invalid_argument("{}: offset {}: dtype {} is not supported; expected little-endian float32, float64, "
                            "int32 or int64 ('<f4', '<f8', '<i4', '<i8')", source, header_begin, descr);
  }
  // shape: "(3, 4)", "(12,)" or "()".
  std::vector<int64_t> shape;
  std::string_view dims = shape_text.substr(1, shape_text.size() - 2);
  while (!trim(dims).empty()) {
    const size_t comma = dims.find(',');
    const std::string_view dim = trim(dims.substr(0, comma));
    int64_t value = 0;
    const auto [end, error] = std::from_chars(dim.data(), dim.data() + dim.size(), value);
    if (error != std::errc() || end != dim.data() + dim.size() || value < 0) {
      return invalid_argument("{}: offset {}: shape {} is not a tuple of sizes", source, header_begin, shape_text);
    }
    shape.push_back(value);
    if (comma == std::string_view::npos) break;
    dims.remove_prefix(comma + 1);
  }
  if (shape.size() != 1 && shape.size() != 2) {
    return invalid_argument("{}: offset {}: shape {} has {} dimensions; expected 1 (one layer) or 2 (layers, "
                            "experts)", source, header_begin, shape_text, shape.size());
  }
  LoadMatrix matrix;
  matrix.num_layers = shape.size() == 2 ? shape[0] : 1;
  matrix.num_experts = shape.back();
  if (matrix.num_layers <= 0 || matrix.num_experts <= 0 || matrix.num_experts > (int64_t{1} << 32) ||
      matrix.num_layers > (int64_t{1} << 32) / matrix.num_experts) {
    return invalid_argument("{}: offset {}: shape {} is empty or too large", source, header_begin, shape_text);
  }
  const size_t count = static_cast<size_t>(matrix.num_layers * matrix.num_experts);
  const size_t data_begin = header_begin + header_length;
  if (bytes.size() - data_begin != count * item_size) {
    return invalid_argument("{}: offset {}: {} bytes of data, expected {} for shape {} of {}", source, data_begin,
                            bytes.size() - data_begin, count * item_size, shape_text, descr);
  }
  const char* data = bytes.data() + data_begin;
  if (descr == "'<f4'") convert_npy<float>(data, count, matrix.values);
  else if (descr == "'<f8'") convert_npy<double>(data, count, matrix.values);
  else if (descr == "'<i4'") convert_npy<int32_t>(data, count, matrix.values);
  else convert_npy<int64_t>(data, count, matrix.values);
  return matrix;
}

Result<LoadMatrix> read_load_file(const std::string& path) {
  auto ends_with = [&](std::string_view suffix) {
    return path.size() >= suffix.size() && path.compare(path.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  if (!ends_with(".csv") && !ends_with(".json") && !ends_with(".npy")) {
    return invalid_argument("{}: unknown load file type; expected a .csv, .json or .npy file", path);
  }
  FF_ASSIGN_OR_RETURN(const std::string content, read_file(path));
  if (ends_with(".csv")) return parse_load_csv(content, path);
  if (ends_with(".json")) return parse_load_json(content, path);
  return parse_load_npy(content, path);
}

}  // namespace ff::eplb
