// The tools' text: printf into a string, JSON strings, integers from the command line, and files
// written whole.
#pragma once

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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

// `s` quoted for JSON, control characters escaped.
inline std::string jsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += strprintf("\\u%04x", c);
    } else {
      out += c;
    }
  }
  return out + "\"";
}

// A whole decimal integer in [minimum, maximum], nothing else.
inline bool parseInt(const std::string& text, int minimum, int maximum, int* out) {
  errno = 0;
  char* end = nullptr;
  const long value = std::strtol(text.c_str(), &end, 10);
  if (errno != 0 || end == text.c_str() || *end != '\0' || value < minimum || value > maximum) {
    return false;
  }
  *out = static_cast<int>(value);
  return true;
}

// Replaces the file at `path` with `bytes` bytes of `data`; false, with *error saying why, when
// it cannot be opened or written in full.
inline bool writeFile(const std::string& path, const void* data, size_t bytes, std::string* error) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) {
    *error = "cannot write " + path + ": " + std::strerror(errno);
    return false;
  }
  const bool written = std::fwrite(data, 1, bytes, f) == bytes;
  if (std::fclose(f) != 0 || !written) {
    *error = "cannot write " + path + ": " + std::strerror(errno);
    return false;
  }
  return true;
}

}  // namespace tpcomm
