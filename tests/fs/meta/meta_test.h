// Shared helpers of the metadata service tests.
#pragma once

#include <cerrno>
#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "ff/fs/meta.h"

namespace ff::fs::meta::testing {

// EXPECT_ERRNO(expression, ENOENT): the Status/Result carries that errno.
#define EXPECT_ERRNO(expression, expected_errno)                                  \
  do {                                                                            \
    auto ff_outcome_ = (expression);                                              \
    const ::ff::Status& ff_status_ = ::ff::internal::status_of(ff_outcome_);      \
    EXPECT_EQ(::ff::fs::meta::errno_of(ff_status_), expected_errno)               \
        << #expression << " returned " << ff_status_.to_string() << ", expected " \
        << ::ff::fs::meta::errno_name(expected_errno);                            \
  } while (false)

// How the behaviour suite (meta_test.cc) reaches a MetaService: directly (frontend == nullptr), or
// through something in front of it, e.g. RemoteMeta over gRPC to a MetaRpcServer (tests/fs/meta_rpc).
// Each test binary that compiles meta_test.cc defines meta_suite_params() with the ways it runs.
class MetaFrontend {
 public:
  virtual ~MetaFrontend() = default;
  virtual MetaApi& api() = 0;
};
struct MetaSuiteParam {
  std::string name;  // the gtest instantiation's name: letters, digits, '_'
  std::function<std::unique_ptr<MetaFrontend>(MetaService& service)> frontend;
};
std::vector<MetaSuiteParam> meta_suite_params();
// The concurrency suite (meta_concurrency_test.cc): the engines it runs on ("memory", "rocksdb",
// "etcd", optionally with a suffix after '_' that names the variant, so test names differ between
// binaries), and what to put in front of each service instance (null: nothing).
struct ConcurrencySuite {
  std::vector<std::string> engines;
  std::function<std::unique_ptr<MetaFrontend>(MetaService& service)> frontend;
};
ConcurrencySuite concurrency_suite();

// gtest (and ctest's test list) prints the parameter by its name.
inline void PrintTo(const MetaSuiteParam& param, std::ostream* out) { *out << param.name; }

}  // namespace ff::fs::meta::testing
