#include <gtest/gtest.h>

#include <filesystem>

#include "ff/common/file.h"
#include "ff/common/svg.h"

namespace ff {
namespace {

TEST(SvgTest, EscapesTextAndAttributes) {
  EXPECT_EQ(svg::escape(R"(a<b & "c" 'd'>)"), "a&lt;b &amp; &quot;c&quot; &apos;d&apos;&gt;");
}

TEST(SvgTest, HeatColorRampsWhiteYellowRed) {
  EXPECT_EQ(svg::heat_color(0), "#ffffff");
  EXPECT_EQ(svg::heat_color(0.5), "#ffff00");
  EXPECT_EQ(svg::heat_color(1), "#ff0000");
  EXPECT_EQ(svg::heat_color(7), "#ff0000");
  EXPECT_EQ(svg::heat_color(std::nan("")), "#ffffff");
}

TEST(SvgTest, DocumentContainsElementsAndTooltips) {
  svg::SvgWriter writer(100, 50);
  writer.rect(1, 2, 3, 4, "#123456", "expert <7>");
  writer.text(5, 6, "GPU 0", 10, "middle");
  writer.line(0, 0, 10, 10, "#000000");
  std::string document = writer.finish();
  EXPECT_NE(document.find(R"(<svg xmlns="http://www.w3.org/2000/svg" width="100" height="50")"), std::string::npos);
  EXPECT_NE(document.find(R"(fill="#123456"><title>expert &lt;7&gt;</title></rect>)"), std::string::npos);
  EXPECT_NE(document.find(">GPU 0</text>"), std::string::npos);
  EXPECT_NE(document.find("</svg>"), std::string::npos);
}

TEST(FileTest, WriteAtomicallyThenRead) {
  std::string path = (std::filesystem::temp_directory_path() / "ff_file_test.txt").string();
  ASSERT_TRUE(write_file_atomically(path, "hello\n").is_ok());
  Result<std::string> content = read_file(path);
  ASSERT_TRUE(content.is_ok());
  EXPECT_EQ(*content, "hello\n");
  std::filesystem::remove(path);
  Result<std::string> missing = read_file(path);
  ASSERT_FALSE(missing.is_ok());
  EXPECT_NE(missing.status().message().find(path), std::string::npos);
  Status bad_dir = write_file_atomically("/nonexistent-dir/x.txt", "x");
  EXPECT_EQ(bad_dir.code(), StatusCode::kIoError);
}

}  // namespace
}  // namespace ff
