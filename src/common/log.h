// Logging in NCCL's style: TPCOMM_DEBUG picks the level, TPCOMM_DEBUG_FILE the destination. The
// library never writes to stdout.
#pragma once

namespace tpcomm {

enum class LogLevel { kNone = 0, kWarn = 1, kInfo = 2, kTrace = 3 };

LogLevel logLevel();
void logMessage(LogLevel level, const char* file, int line, const char* fmt, ...)
    __attribute__((format(printf, 4, 5)));

}  // namespace tpcomm

#define TPC_LOG(level, ...)                                           \
  do {                                                                \
    if (::tpcomm::logLevel() >= (level)) {                            \
      ::tpcomm::logMessage((level), __FILE__, __LINE__, __VA_ARGS__); \
    }                                                                 \
  } while (0)
#define TPC_WARN(...) TPC_LOG(::tpcomm::LogLevel::kWarn, __VA_ARGS__)
#define TPC_INFO(...) TPC_LOG(::tpcomm::LogLevel::kInfo, __VA_ARGS__)
#define TPC_TRACE(...) TPC_LOG(::tpcomm::LogLevel::kTrace, __VA_ARGS__)
