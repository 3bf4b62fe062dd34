#include "common/log.h"

#include <strings.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>

#include "common/env.h"

namespace tpcomm {
namespace {

struct Sink {
  LogLevel level = LogLevel::kWarn;
  FILE* file = stderr;
  char host[64] = "?";
  std::mutex mutex;
};

// Expands %h (host name) and %p (process id) in a TPCOMM_DEBUG_FILE pattern.
std::string expandPath(const char* pattern, const char* host) {
  std::string path;
  for (const char* c = pattern; *c != '\0'; ++c) {
    if (c[0] == '%' && c[1] == 'h') {
      path += host;
      ++c;
    } else if (c[0] == '%' && c[1] == 'p') {
      path += std::to_string(getpid());
      ++c;
    } else {
      path += *c;
    }
  }
  return path;
}

Sink& sink() {
  static Sink* s = [] {
    Sink* out = new Sink;  // never destroyed: logging may run during static destruction
    gethostname(out->host, sizeof(out->host) - 1);
    if (char* dot = std::strchr(out->host, '.')) *dot = '\0';
    // Bad values cannot fail a call, as other switches do (no call has begun): they are said
    // once, on stderr, and logging goes on as without them.
    if (const char* level = envValue(EnvVar::kDebug)) {
      if (strcasecmp(level, "NONE") == 0) {
        out->level = LogLevel::kNone;
      } else if (strcasecmp(level, "WARN") == 0) {
        out->level = LogLevel::kWarn;
      } else if (strcasecmp(level, "INFO") == 0) {
        out->level = LogLevel::kInfo;
      } else if (strcasecmp(level, "TRACE") == 0) {
        out->level = LogLevel::kTrace;
      } else {
        std::fprintf(stderr,
                     "tpcomm: TPCOMM_DEBUG=%s is none of NONE, WARN, INFO and TRACE; logging "
                     "stays at WARN\n",
                     level);
      }
    }
    if (const char* pattern = envValue(EnvVar::kDebugFile)) {
      const std::string path = expandPath(pattern, out->host);
      if (FILE* f = std::fopen(path.c_str(), "a")) {
        setvbuf(f, nullptr, _IOLBF, 0);
        out->file = f;
      } else {
        std::fprintf(stderr, "tpcomm: cannot open TPCOMM_DEBUG_FILE %s (%s); logging to stderr\n",
                     path.c_str(), std::strerror(errno));
      }
    }
    return out;
  }();
  return *s;
}

const char* levelName(LogLevel level) {
  switch (level) {
    case LogLevel::kWarn:
      return "WARN";
    case LogLevel::kInfo:
      return "INFO";
    case LogLevel::kTrace:
      return "TRACE";
    default:
      return "";
  }
}

}  // namespace

LogLevel logLevel() { return sink().level; }

void logMessage(LogLevel level, const char* file, int line, const char* fmt, ...) {
  Sink& s = sink();
  char text[1024];
  va_list args;
  va_start(args, fmt);
  vsnprintf(text, sizeof(text), fmt, args);
  va_end(args);
  const char* base = std::strrchr(file, '/');
  base = base != nullptr ? base + 1 : file;
  const long tid = syscall(SYS_gettid);
  std::lock_guard<std::mutex> lock(s.mutex);
  if (level == LogLevel::kTrace) {
    std::fprintf(s.file, "%s:%d:%ld TPCOMM %s %s:%d %s\n", s.host, getpid(), tid, levelName(level),
                 base, line, text);
  } else {
    std::fprintf(s.file, "%s:%d:%ld TPCOMM %s %s\n", s.host, getpid(), tid, levelName(level), text);
  }
}

}  // namespace tpcomm
