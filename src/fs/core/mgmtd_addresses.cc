#include "ff/fs/mgmtd_addresses.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "ff/fs/types.h"

namespace ff::fs {

namespace {

std::vector<std::string> split(std::string_view list) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    size_t comma = list.find(',', start);
    std::string_view element = list.substr(start, comma == std::string_view::npos ? list.npos : comma - start);
    while (!element.empty() && element.front() == ' ') element.remove_prefix(1);
    while (!element.empty() && element.back() == ' ') element.remove_suffix(1);
    out.emplace_back(element);
    if (comma == std::string_view::npos) return out;
    start = comma + 1;
  }
}

}  // namespace

Result<MgmtdAddresses> MgmtdAddresses::parse(std::string_view list) {
  std::vector<std::string> addresses = split(list);
  for (size_t i = 0; i < addresses.size(); ++i) {
    if (addresses[i].empty()) {
      return invalid_argument("mgmtd address list '{}': element {} is empty (expected address[,address...])", list,
                              i + 1);
    }
  }
  return MgmtdAddresses(std::move(addresses));
}

MgmtdAddresses MgmtdAddresses::unchecked(std::string_view list) { return MgmtdAddresses(split(list)); }

bool MgmtdAddresses::failed(const std::string& used, const Status& status) {
  if (addresses_.size() < 2 || status.is_ok()) return false;
  const bool moves = status.code() == StatusCode::kUnavailable || status.code() == StatusCode::kDeadlineExceeded ||
                     fs_error_of(status) == FsError::kNotServing;
  if (!moves) return false;
  size_t seen = index_.load();
  if (addresses_[seen % addresses_.size()] != used) return false;
  return index_.compare_exchange_strong(seen, seen + 1);
}

std::string MgmtdAddresses::names() const { return fmt::format("{}", fmt::join(addresses_, ",")); }

}  // namespace ff::fs
