// The tools' shared text helpers.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "text/text.h"

namespace tpcomm {
namespace {

std::string readAll(const std::string& path) {
  std::string out;
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return out;
  char buf[256];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
  std::fclose(f);
  return out;
}

TEST(ToolText, WriteFileReplacesTheWholeFile) {
  char dir[] = "/tmp/tpcomm-text-XXXXXX";
  ASSERT_NE(nullptr, mkdtemp(dir));
  const std::string path = std::string(dir) + "/out.json";
  std::string error;
  const std::string longer = "{\"rows\": [1, 2, 3]}\n";
  ASSERT_TRUE(writeFile(path, longer.data(), longer.size(), &error)) << error;
  const std::string shorter = std::string("a\0b", 3);
  ASSERT_TRUE(writeFile(path, shorter.data(), shorter.size(), &error)) << error;
  EXPECT_EQ(shorter, readAll(path));
  unlink(path.c_str());
  rmdir(dir);
}

TEST(ToolText, WriteFileSaysWhyItCannot) {
  std::string error;
  EXPECT_FALSE(writeFile("/nonexistent-dir/out.json", "x", 1, &error));
  EXPECT_EQ("cannot write /nonexistent-dir/out.json: No such file or directory", error);
}

}  // namespace
}  // namespace tpcomm
