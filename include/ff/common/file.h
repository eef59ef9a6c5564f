// Small file helpers.
#pragma once

#include <string>
#include <string_view>

#include "ff/common/result.h"
#include "ff/common/status.h"

namespace ff {

// Writes content to path through a temporary file in the same directory and a rename, so readers
// never see a partial file.
Status write_file_atomically(const std::string& path, std::string_view content);

// Reads a whole file. For small files (configs, load tables), not for traces.
Result<std::string> read_file(const std::string& path);

}  // namespace ff
