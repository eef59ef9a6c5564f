// Shared helpers of the metadata service tests.
#pragma once

#include <cerrno>
#include <ostream>

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

}  // namespace ff::fs::meta::testing
