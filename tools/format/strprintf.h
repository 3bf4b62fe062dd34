// printf into a std::string, for the tools' tables and JSON.
#pragma once

#include <cstdarg>
#include <cstdio>
#include <string>

namespace tpcomm {

inline std::string strprintf(const char* format, ...) __attribute__((format(printf, 1, 2)));
inline std::string strprintf(const char* format, ...) {
  char buf[1024];
  va_list args;
  va_start(args, format);
  vsnprintf(buf, sizeof(buf), format, args);
  va_end(args);
  return buf;
}

}  // namespace tpcomm
