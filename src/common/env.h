// Every environment variable tpcomm reads, in one place. Each is read once, on first use, and
// echoed at INFO level when set. README.md documents the same list for users.
#pragma once

#include <string>

namespace tpcomm {

enum class EnvVar {
  // Log level: WARN (default), INFO or TRACE; NONE silences tpcomm. Logs go to stderr.
  kDebug,
  // Log file instead of stderr; %h expands to the host name and %p to the process id.
  kDebugFile,
  // Forces an all-reduce algorithm when the config leaves it at auto: auto, oneshot, twoshot,
  // push-oneshot, push-twoshot or nccl.
  kAlgo,
  // Per-rank staging buffer in bytes (suffixes K, M, G) when the config leaves it at 0.
  kStagingBytes,
  // Upper bound on thread blocks per all-reduce kernel when the config leaves it at 0.
  kMaxBlocks,
  // Bound in milliseconds on every wait for a peer when the config leaves it at 0.
  kTimeoutMs,
  // Path of the NCCL library to load instead of the process's own or libnccl.so.2.
  kNcclLibrary,
  // 1 turns tpcomm's kernels off: NCCL carries every call.
  kDisable,
  // 0 skips the functional check of peer mappings at init (a write read back by the owner).
  kP2pCheck,
  // Messages larger than this many bytes (K, M, G suffixes) go to NCCL when the config leaves
  // maxBytes at 0.
  kMaxBytes,
  // 0 keeps NCCL out entirely, like ncclFallback = TPC_NCCL_OFF.
  kNccl,
  // 1 makes captured all-reduces zero-copy when the config leaves zeroCopyGraphs at 0.
  kZeroCopyGraphs,
  // Zero-copy slots per communicator when the config leaves graphSlots at 0.
  kGraphSlots,
  // The largest message (K, M, G suffixes) a push kernel carries in one launch when the config
  // leaves pushBytes at 0; it sizes the push kernels' receive buffers.
  kPushBytes,
  // 1 launches the kernels as programmatic dependents of the kernel before them, 0 never, when
  // the config leaves pdl at 0.
  kPdl,
  kCount
};

const char* envName(EnvVar var);

// The variable's value, or nullptr when it is unset or empty. Stable for the process lifetime.
const char* envValue(EnvVar var);

// Parses sizes like "4096", "64K", "16M", "1G" (powers of 1024). False on anything else.
bool parseByteSize(const std::string& text, size_t* bytes);

}  // namespace tpcomm
