// Runs one of tpcomm's tools from a test: its exit status, and stdout and stderr together.
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <string>

namespace tpcomm {
namespace tooltest {

inline int runTool(const std::string& tool, const std::string& args, std::string* out) {
  const std::string command = tool + " " + args + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return -1;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) out->append(buf, n);
  const int status = pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace tooltest
}  // namespace tpcomm
