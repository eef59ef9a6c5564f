#include "ff/fs/rpc/toml_config.h"

#include <gtest/gtest.h>

#include "test_util.h"

namespace ff::fs::rpc {
namespace {

TEST(TomlReaderTest, ReadsTypedValuesAndLeavesAbsentOnesAlone) {
  auto reader = TomlReader::from_string(R"(
[mgmtd]
listen = "127.0.0.1:9000"
heartbeat_timeout_s = 3
ratio = 0.5
verbose = true
endpoints = ["a:1", "b:2"]
[[targets]]
id = 101
path = "/data/a"
[[targets]]
id = 102
path = "/data/b"
)");
  ASSERT_TRUE(reader.is_ok()) << reader.status();
  std::string listen;
  double timeout_s = 0, ratio = 0;
  bool verbose = false;
  std::vector<std::string> endpoints;
  uint32_t absent = 7;
  ASSERT_TRUE(reader->read("mgmtd.listen", &listen).is_ok());
  ASSERT_TRUE(reader->read("mgmtd.heartbeat_timeout_s", &timeout_s).is_ok());
  ASSERT_TRUE(reader->read("mgmtd.ratio", &ratio).is_ok());
  ASSERT_TRUE(reader->read("mgmtd.verbose", &verbose).is_ok());
  ASSERT_TRUE(reader->read("mgmtd.endpoints", &endpoints).is_ok());
  ASSERT_TRUE(reader->read("mgmtd.absent", &absent).is_ok());
  EXPECT_EQ(listen, "127.0.0.1:9000");
  EXPECT_EQ(timeout_s, 3.0);
  EXPECT_EQ(ratio, 0.5);
  EXPECT_TRUE(verbose);
  EXPECT_EQ(endpoints, (std::vector<std::string>{"a:1", "b:2"}));
  EXPECT_EQ(absent, 7u);
  auto size = reader->array_size("targets");
  ASSERT_TRUE(size.is_ok());
  ASSERT_EQ(*size, 2u);
  for (size_t i = 0; i < *size; ++i) {
    uint32_t id = 0;
    std::string path;
    ASSERT_TRUE(reader->read_required("targets." + std::to_string(i) + ".id", &id).is_ok());
    ASSERT_TRUE(reader->read("targets." + std::to_string(i) + ".path", &path).is_ok());
    EXPECT_EQ(id, 101 + i);
  }
  EXPECT_TRUE(reader->finish().is_ok()) << reader->finish();
}

TEST(TomlReaderTest, ErrorsNameTheKeyTheValueAndWhatWasExpected) {
  auto reader = TomlReader::from_string("[storage]\nnode_id = \"seven\"\nport = 70000\nlisten = 5\n", "s.toml");
  ASSERT_TRUE(reader.is_ok());
  uint32_t node_id = 0;
  Status status = reader->read("storage.node_id", &node_id);
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("s.toml"), std::string::npos) << status;
  EXPECT_NE(status.message().find("storage.node_id"), std::string::npos) << status;
  EXPECT_NE(status.message().find("\"seven\""), std::string::npos) << status;
  EXPECT_NE(status.message().find("integer"), std::string::npos) << status;
  uint16_t port = 0;
  status = reader->read("storage.port", &port);
  EXPECT_NE(status.message().find("70000"), std::string::npos) << status;
  EXPECT_NE(status.message().find("65535"), std::string::npos) << status;
  std::string listen;
  status = reader->read("storage.listen", &listen);
  EXPECT_NE(status.message().find("expected a string"), std::string::npos) << status;
  uint32_t missing = 0;
  status = reader->read_required("storage.missing", &missing);
  EXPECT_NE(status.message().find("required key 'storage.missing'"), std::string::npos) << status;
}

TEST(TomlReaderTest, UnknownKeysAreErrors) {
  auto reader = TomlReader::from_string("[mgmtd]\nlisten = \"a:1\"\nlistne = \"b:2\"\n");
  ASSERT_TRUE(reader.is_ok());
  std::string listen;
  ASSERT_TRUE(reader->read("mgmtd.listen", &listen).is_ok());
  Status status = reader->finish();
  EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("mgmtd.listne"), std::string::npos) << status;
}

TEST(TomlReaderTest, SyntaxErrorsNameLineAndColumn) {
  auto reader = TomlReader::from_string("[mgmtd]\nlisten = \n", "bad.toml");
  ASSERT_FALSE(reader.is_ok());
  EXPECT_NE(reader.status().message().find("bad.toml:2:"), std::string::npos) << reader.status();
}

TEST(ParseHostPortTest, AcceptsHostPortAndRejectsJunk) {
  auto address = parse_host_port("127.0.0.1:9000");
  ASSERT_TRUE(address.is_ok());
  EXPECT_EQ(address->host, "127.0.0.1");
  EXPECT_EQ(address->port, 9000);
  EXPECT_FALSE(parse_host_port("127.0.0.1").is_ok());
  EXPECT_FALSE(parse_host_port("127.0.0.1:99999").is_ok());
  EXPECT_FALSE(parse_host_port("127.0.0.1:x").is_ok());
}

TEST(ParseHostPortTest, ListsNameTheBadElement) {
  EXPECT_TRUE(check_host_port_list("127.0.0.1:9000").is_ok());
  EXPECT_TRUE(check_host_port_list("127.0.0.1:9000, 127.0.0.1:9001").is_ok());
  for (const char* bad : {"127.0.0.1:9000,127.0.0.1", "127.0.0.1:9000,", "a:1,b:99999"}) {
    Status status = check_host_port_list(bad);
    ASSERT_FALSE(status.is_ok()) << bad;
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(status.message().find(bad), std::string::npos) << status;
  }
  EXPECT_NE(check_host_port_list("a:1,b:99999").message().find("'b:99999'"), std::string::npos);
}

}  // namespace
}  // namespace ff::fs::rpc
