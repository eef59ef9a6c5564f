// fs_meta_test runs the behaviour suite (meta_test.cc) against the MetaService itself.
#include "meta_test.h"

namespace ff::fs::meta::testing {

std::vector<MetaSuiteParam> meta_suite_params() { return {MetaSuiteParam{"InProcess", nullptr}}; }

}  // namespace ff::fs::meta::testing
