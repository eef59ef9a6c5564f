// fs_meta_test runs the behaviour and concurrency suites (meta_test.cc, meta_concurrency_test.cc) against
// the MetaService itself.
#include "meta_test.h"

namespace ff::fs::meta::testing {

std::vector<MetaSuiteParam> meta_suite_params() { return {MetaSuiteParam{"InProcess", nullptr}}; }

ConcurrencySuite concurrency_suite() { return {{"memory", "rocksdb", "etcd"}, nullptr}; }

}  // namespace ff::fs::meta::testing
