#include "common/env.h"

#include <cerrno>
#include <cstdlib>
#include <mutex>

#include "common/log.h"

namespace tpcomm {
namespace {

// In the order of EnvVar.
constexpr const char* kNames[] = {
    "TPCOMM_DEBUG",       "TPCOMM_DEBUG_FILE", "TPCOMM_ALGO",         "TPCOMM_STAGING_BYTES",
    "TPCOMM_MAX_BLOCKS",  "TPCOMM_TIMEOUT_MS", "TPCOMM_NCCL_LIBRARY", "TPCOMM_DISABLE",
    "TPCOMM_P2P_CHECK",   "TPCOMM_MAX_BYTES",  "TPCOMM_NCCL",         "TPCOMM_ZERO_COPY_GRAPHS",
    "TPCOMM_GRAPH_SLOTS", "TPCOMM_PUSH_BYTES", "TPCOMM_PDL",
};
static_assert(sizeof(kNames) / sizeof(kNames[0]) == static_cast<size_t>(EnvVar::kCount),
              "every EnvVar needs a name");

struct Snapshot {
  const char* values[static_cast<size_t>(EnvVar::kCount)];
};

const Snapshot& snapshot() {
  static const Snapshot snap = [] {
    Snapshot s{};
    for (size_t i = 0; i < static_cast<size_t>(EnvVar::kCount); ++i) {
      const char* value = std::getenv(kNames[i]);
      s.values[i] = (value != nullptr && value[0] != '\0') ? value : nullptr;
    }
    return s;
  }();
  return snap;
}

}  // namespace

const char* envName(EnvVar var) { return kNames[static_cast<size_t>(var)]; }

const char* envValue(EnvVar var) {
  const char* value = snapshot().values[static_cast<size_t>(var)];
  // Logging reads TPCOMM_DEBUG through here too, so echo only after the snapshot exists and only
  // from the first caller that can log.
  static std::once_flag echoed;
  if (var != EnvVar::kDebug && var != EnvVar::kDebugFile) {
    std::call_once(echoed, [] {
      for (size_t i = 0; i < static_cast<size_t>(EnvVar::kCount); ++i) {
        if (snapshot().values[i] != nullptr) {
          TPC_INFO("%s set by environment to %s", kNames[i], snapshot().values[i]);
        }
      }
    });
  }
  return value;
}

bool parseByteSize(const std::string& text, size_t* bytes) {
  if (text.empty() || text[0] < '0' || text[0] > '9') return false;
  errno = 0;
  char* end = nullptr;
  const unsigned long long base = std::strtoull(text.c_str(), &end, 10);
  if (errno != 0) return false;
  unsigned shift = 0;
  const std::string suffix(end);
  if (suffix == "K" || suffix == "k" || suffix == "KB" || suffix == "KiB") {
    shift = 10;
  } else if (suffix == "M" || suffix == "m" || suffix == "MB" || suffix == "MiB") {
    shift = 20;
  } else if (suffix == "G" || suffix == "g" || suffix == "GB" || suffix == "GiB") {
    shift = 30;
  } else if (!suffix.empty()) {
    return false;
  }
  if (shift != 0 && base > (~0ull >> shift)) return false;
  *bytes = static_cast<size_t>(base << shift);
  return true;
}

}  // namespace tpcomm
