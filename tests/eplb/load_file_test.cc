// Tests of the load-file readers: valid CSV/JSON/.npy, and errors that name the position.
#include "ff/eplb/load_file.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <string>

namespace ff::eplb {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(LoadCsv, HeaderBlankLinesAndComments) {
  const Result<LoadMatrix> matrix = parse_load_csv("e0,e1,e2\n1,2,3\n\n# note\n4, 5.5 ,6\n", "x.csv");
  ASSERT_TRUE(matrix.is_ok()) << matrix.status().to_string();
  EXPECT_EQ(matrix->num_layers, 2);
  EXPECT_EQ(matrix->num_experts, 3);
  EXPECT_THAT(matrix->values, ElementsAre(1, 2, 3, 4, 5.5f, 6));
}

TEST(LoadCsv, ErrorsNameLineAndColumn) {
  EXPECT_THAT(parse_load_csv("1,2,3\n4,x,6\n", "x.csv").status().message(),
              HasSubstr("x.csv:2: column 2 is 'x', expected a number"));
  EXPECT_THAT(parse_load_csv("1,2,3\n4,5\n", "x.csv").status().message(),
              HasSubstr("x.csv:2: row has 2 values, expected 3"));
  EXPECT_THAT(parse_load_csv("a,b\n", "x.csv").status().message(), HasSubstr("x.csv: no rows of loads"));
  // Only the first row may be a header.
  EXPECT_THAT(parse_load_csv("1,2\nb,c\n", "x.csv").status().message(), HasSubstr("x.csv:2: column 1 is 'b'"));
}

TEST(LoadJson, ListOfListsAndWeightObject) {
  const Result<LoadMatrix> list = parse_load_json("[[1, 2], [3, 4.5]]", "x.json");
  ASSERT_TRUE(list.is_ok()) << list.status().to_string();
  EXPECT_THAT(list->values, ElementsAre(1, 2, 3, 4.5f));
  const Result<LoadMatrix> object = parse_load_json(R"({"weight": [[7, 8, 9]]})", "x.json");
  ASSERT_TRUE(object.is_ok()) << object.status().to_string();
  EXPECT_EQ(object->num_experts, 3);
}

TEST(LoadJson, Errors) {
  EXPECT_THAT(parse_load_json("[[1, 2], [3, \"a\"]]", "x.json").status().message(),
              HasSubstr("x.json: row 1, column 1 is \"a\", expected a number"));
  EXPECT_THAT(parse_load_json("[[1, 2], [3]]", "x.json").status().message(),
              HasSubstr("row has 1 values, expected 2"));
  EXPECT_THAT(parse_load_json("[[1, 2]", "x.json").status().message(), HasSubstr("x.json: byte 8: not valid JSON"));
  EXPECT_THAT(parse_load_json(R"({"loads": []})", "x.json").status().message(), HasSubstr("without the key \"weight\""));
}

// A .npy file as numpy writes it (format 1.0, header padded to a multiple of 64 bytes).
template <typename T>
std::string make_npy(const std::string& descr, const std::string& shape, const std::vector<T>& values,
                     bool fortran = false) {
  std::string header = "{'descr': '" + descr + "', 'fortran_order': " + (fortran ? "True" : "False") +
                       ", 'shape': " + shape + ", }";
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::string bytes("\x93NUMPY\x01\x00", 8);
  bytes += static_cast<char>(header.size() & 0xff);
  bytes += static_cast<char>(header.size() >> 8);
  bytes += header;
  std::string data(values.size() * sizeof(T), '\0');
  std::memcpy(data.data(), values.data(), data.size());
  return bytes + data;
}

TEST(LoadNpy, ReadsEachDtype) {
  const Result<LoadMatrix> f4 = parse_load_npy(make_npy<float>("<f4", "(2, 2)", {1, 2, 3, 4}), "x.npy");
  ASSERT_TRUE(f4.is_ok()) << f4.status().to_string();
  EXPECT_EQ(f4->num_layers, 2);
  EXPECT_THAT(f4->values, ElementsAre(1, 2, 3, 4));
  const Result<LoadMatrix> f8 = parse_load_npy(make_npy<double>("<f8", "(1, 3)", {0.5, 1, 2}), "x.npy");
  ASSERT_TRUE(f8.is_ok());
  EXPECT_THAT(f8->values, ElementsAre(0.5f, 1, 2));
  const Result<LoadMatrix> i4 = parse_load_npy(make_npy<int32_t>("<i4", "(3,)", {5, 6, 7}), "x.npy");
  ASSERT_TRUE(i4.is_ok());
  EXPECT_EQ(i4->num_layers, 1);  // 1-D: one layer
  EXPECT_THAT(i4->values, ElementsAre(5, 6, 7));
  const Result<LoadMatrix> i8 = parse_load_npy(make_npy<int64_t>("<i8", "(2, 1)", {9, 10}), "x.npy");
  ASSERT_TRUE(i8.is_ok());
  EXPECT_THAT(i8->values, ElementsAre(9, 10));
}

TEST(LoadNpy, ErrorsNameOffsetAndExpectation) {
  EXPECT_THAT(parse_load_npy("PK\x03\x04 not npy", "x.npy").status().message(),
              HasSubstr("x.npy: offset 0: expected the .npy magic"));
  EXPECT_THAT(parse_load_npy(make_npy<float>(">f4", "(2,)", {1, 2}), "x.npy").status().message(),
              HasSubstr("dtype '>f4' is not supported"));
  EXPECT_THAT(parse_load_npy(make_npy<float>("<f4", "(2,)", {1, 2}, true), "x.npy").status().message(),
              HasSubstr("fortran_order is True; expected False"));
  EXPECT_THAT(parse_load_npy(make_npy<float>("<f4", "(1, 2, 2)", {1, 2, 3, 4}), "x.npy").status().message(),
              HasSubstr("has 3 dimensions"));
  std::string truncated = make_npy<float>("<f4", "(2, 2)", {1, 2, 3, 4});
  truncated.resize(truncated.size() - 3);
  EXPECT_THAT(parse_load_npy(truncated, "x.npy").status().message(),
              HasSubstr("offset 128: 13 bytes of data, expected 16"));
}

TEST(ReadLoadFile, UnknownExtensionAndMissingFile) {
  EXPECT_THAT(read_load_file("loads.txt").status().message(), HasSubstr("expected a .csv, .json or .npy file"));
  EXPECT_THAT(read_load_file("/nonexistent/loads.csv").status().message(), HasSubstr("/nonexistent/loads.csv"));
}

}  // namespace
}  // namespace ff::eplb
