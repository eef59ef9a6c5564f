// Reading expert loads from files: CSV, JSON and NumPy .npy. Used by ff-eplb; exposed so tests and
// other tools read loads the same way.
//
// Thread-safety: pure functions.
#pragma once

#include <string>
#include <string_view>

#include "ff/common/result.h"
#include "ff/eplb/eplb.h"

namespace ff::eplb {

// CSV: one row per layer, one column per expert, comma-separated; an optional header row (its first
// cell is not a number) and blank lines are skipped. Every row must have the same number of columns.
// `source` names the input in error messages ("loads.csv:3: column 5 is 'x', expected a number").
Result<LoadMatrix> parse_load_csv(std::string_view text, std::string_view source);

// JSON: a list of lists of numbers, or an object {"weight": [[...], ...]}.
Result<LoadMatrix> parse_load_json(std::string_view text, std::string_view source);

// NumPy .npy (format version 1, 2 or 3): little-endian float32, float64, int32 or int64, C order,
// 1-D (one layer) or 2-D (layers, experts). Errors name the byte offset and what was expected.
Result<LoadMatrix> parse_load_npy(std::string_view bytes, std::string_view source);

// Reads path, choosing the parser by extension: .csv, .json or .npy (anything else is an error).
Result<LoadMatrix> read_load_file(const std::string& path);

}  // namespace ff::eplb
