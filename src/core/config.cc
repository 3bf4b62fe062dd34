#include "core/config.h"

#include <strings.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "common/env.h"
#include "common/error.h"
#include "tpcomm/device/params.cuh"

namespace tpcomm {
namespace {

// True when the caller's struct, of config->size bytes, contains the field at `offset`.
bool hasField(const tpcConfig_t* config, size_t offset, size_t bytes) {
  return config != nullptr && config->size >= offset + bytes;
}
#define TPC_HAS_FIELD(config, field) \
  hasField(config, offsetof(tpcConfig_t, field), sizeof(((tpcConfig_t*)nullptr)->field))

bool parsePositiveInt(const char* text, int* out) {
  errno = 0;
  char* end = nullptr;
  const long value = std::strtol(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || value <= 0 || value > 0x7fffffff) return false;
  *out = static_cast<int>(value);
  return true;
}

}  // namespace

const char* algorithmName(tpcAlgorithm_t algorithm) {
  switch (algorithm) {
    case tpcAlgoAuto:
      return "auto";
    case tpcAlgoOneShot:
      return "oneshot";
    case tpcAlgoTwoShot:
      return "twoshot";
    case tpcAlgoNccl:
      return "nccl";
    case tpcAlgoPushOneShot:
      return "push-oneshot";
    case tpcAlgoPushTwoShot:
      return "push-twoshot";
    default:
      return "unknown";
  }
}

bool parseAlgorithm(const char* text, tpcAlgorithm_t* out) {
  for (int a = 0; a < tpcNumAlgos; ++a) {
    if (strcasecmp(text, algorithmName(static_cast<tpcAlgorithm_t>(a))) == 0) {
      *out = static_cast<tpcAlgorithm_t>(a);
      return true;
    }
  }
  return false;
}

std::string ResolvedConfig::digest() const {
  return "stagingBytes=" + std::to_string(stagingBytes) +
         " maxBlocks=" + std::to_string(maxBlocks) + " algorithm=" + algorithmName(algorithm) +
         " timeoutMs=" + std::to_string(timeoutMs) +
         " nccl=" + (ncclComm != nullptr ? "borrowed" : (ncclOff ? "off" : "auto")) +
         " maxBytes=" + std::to_string(maxBytes) + " disabled=" + (disabled ? "1" : "0") +
         " p2pCheck=" + (p2pCheck ? "1" : "0") + " zeroCopyGraphs=" + (zeroCopyGraphs ? "1" : "0") +
         " graphSlots=" + std::to_string(graphSlots) + " pushBytes=" + std::to_string(pushBytes) +
         " pdl=" + (pdl ? "1" : "0");
}

namespace {

// "0" or "1" from the environment; false when set to anything else.
bool envFlag(EnvVar var, bool fallback, bool* out) {
  const char* text = envValue(var);
  if (text == nullptr) {
    *out = fallback;
    return true;
  }
  if (std::strcmp(text, "0") != 0 && std::strcmp(text, "1") != 0) return false;
  *out = text[0] == '1';
  return true;
}

}  // namespace

tpcResult_t resolveConfig(const tpcConfig_t* config, ResolvedConfig* out) {
  ResolvedConfig r;
  if (config != nullptr) {
    if (config->size < offsetof(tpcConfig_t, version) + sizeof(config->version)) {
      return fail(tpcInvalidArgument,
                  "config->size is %zu; initialize the config with TPC_CONFIG_INITIALIZER",
                  config->size);
    }
    if (config->magic != TPC_CONFIG_MAGIC) {
      return fail(tpcInvalidArgument,
                  "config->magic is 0x%x, not TPC_CONFIG_MAGIC; initialize the config with "
                  "TPC_CONFIG_INITIALIZER",
                  config->magic);
    }
  }

  size_t staging = TPC_HAS_FIELD(config, stagingBytes) ? config->stagingBytes : 0;
  if (staging == 0) {
    if (const char* text = envValue(EnvVar::kStagingBytes)) {
      if (!parseByteSize(text, &staging) || staging == 0) {
        return fail(tpcInvalidArgument, "%s=%s is not a byte size", envName(EnvVar::kStagingBytes),
                    text);
      }
    }
  }
  if (staging != 0) {
    if (staging < kMinStagingBytes || staging > kMaxStagingBytes) {
      return fail(tpcInvalidArgument, "staging buffer of %zu bytes is outside [%zu, %zu]", staging,
                  kMinStagingBytes, kMaxStagingBytes);
    }
    // Whole 16-byte vectors keep every chunk of an aligned buffer aligned.
    r.stagingBytes = (staging + 15) / 16 * 16;
  }

  int maxBlocks = TPC_HAS_FIELD(config, maxBlocks) ? config->maxBlocks : 0;
  if (maxBlocks == 0) {
    if (const char* text = envValue(EnvVar::kMaxBlocks)) {
      if (!parsePositiveInt(text, &maxBlocks)) {
        return fail(tpcInvalidArgument, "%s=%s is not a positive number",
                    envName(EnvVar::kMaxBlocks), text);
      }
    }
  }
  if (maxBlocks < 0 || maxBlocks > device::kMaxBlocks) {
    return fail(tpcInvalidArgument, "maxBlocks %d is outside [1, %d] (0 for automatic)", maxBlocks,
                device::kMaxBlocks);
  }
  r.maxBlocks = maxBlocks;

  int algorithm = TPC_HAS_FIELD(config, algorithm) ? config->algorithm : tpcAlgoAuto;
  if (algorithm < 0 || algorithm >= tpcNumAlgos) {
    return fail(tpcInvalidArgument, "algorithm %d is not a tpcAlgorithm_t", algorithm);
  }
  if (algorithm == tpcAlgoAuto) {
    if (const char* text = envValue(EnvVar::kAlgo)) {
      tpcAlgorithm_t parsed;
      if (!parseAlgorithm(text, &parsed)) {
        return fail(tpcInvalidArgument,
                    "%s=%s: expected auto, oneshot, twoshot, push-oneshot, push-twoshot or nccl",
                    envName(EnvVar::kAlgo), text);
      }
      algorithm = parsed;
    }
  }
  r.algorithm = static_cast<tpcAlgorithm_t>(algorithm);

  int timeoutMs = TPC_HAS_FIELD(config, timeoutMs) ? config->timeoutMs : 0;
  if (timeoutMs < 0) return fail(tpcInvalidArgument, "timeoutMs %d is negative", timeoutMs);
  if (timeoutMs == 0) {
    if (const char* text = envValue(EnvVar::kTimeoutMs)) {
      if (!parsePositiveInt(text, &timeoutMs)) {
        return fail(tpcInvalidArgument, "%s=%s is not a positive number",
                    envName(EnvVar::kTimeoutMs), text);
      }
    }
  }
  if (timeoutMs != 0) r.timeoutMs = timeoutMs;

  r.ncclComm = TPC_HAS_FIELD(config, ncclComm) ? config->ncclComm : nullptr;
  const int fallback = TPC_HAS_FIELD(config, ncclFallback) ? config->ncclFallback : TPC_NCCL_AUTO;
  if (fallback != TPC_NCCL_AUTO && fallback != TPC_NCCL_OFF) {
    return fail(tpcInvalidArgument, "ncclFallback %d is neither TPC_NCCL_AUTO nor TPC_NCCL_OFF",
                fallback);
  }
  bool ncclOn = true;
  if (!envFlag(EnvVar::kNccl, true, &ncclOn)) {
    return fail(tpcInvalidArgument, "%s=%s: expected 0 or 1", envName(EnvVar::kNccl),
                envValue(EnvVar::kNccl));
  }
  r.ncclOff = fallback == TPC_NCCL_OFF || !ncclOn;
  if (r.ncclOff && r.ncclComm != nullptr) {
    return fail(tpcInvalidArgument, "an NCCL communicator was passed, but NCCL is turned off");
  }
  if (r.ncclOff && r.algorithm == tpcAlgoNccl) {
    return fail(tpcInvalidArgument, "the algorithm is nccl, but NCCL is turned off");
  }

  r.maxBytes = TPC_HAS_FIELD(config, maxBytes) ? config->maxBytes : 0;
  if (r.maxBytes == 0) {
    if (const char* text = envValue(EnvVar::kMaxBytes)) {
      if (!parseByteSize(text, &r.maxBytes) || r.maxBytes == 0) {
        return fail(tpcInvalidArgument, "%s=%s is not a byte size", envName(EnvVar::kMaxBytes),
                    text);
      }
    }
  }
  if (!envFlag(EnvVar::kDisable, false, &r.disabled)) {
    return fail(tpcInvalidArgument, "%s=%s: expected 0 or 1", envName(EnvVar::kDisable),
                envValue(EnvVar::kDisable));
  }
  if (!envFlag(EnvVar::kP2pCheck, true, &r.p2pCheck)) {
    return fail(tpcInvalidArgument, "%s=%s: expected 0 or 1", envName(EnvVar::kP2pCheck),
                envValue(EnvVar::kP2pCheck));
  }

  const int zeroCopy = TPC_HAS_FIELD(config, zeroCopyGraphs) ? config->zeroCopyGraphs : 0;
  if (zeroCopy != 0 && zeroCopy != 1) {
    return fail(tpcInvalidArgument, "zeroCopyGraphs %d is neither 0 nor 1", zeroCopy);
  }
  if (zeroCopy == 1) {
    r.zeroCopyGraphs = true;
  } else if (!envFlag(EnvVar::kZeroCopyGraphs, false, &r.zeroCopyGraphs)) {
    return fail(tpcInvalidArgument, "%s=%s: expected 0 or 1", envName(EnvVar::kZeroCopyGraphs),
                envValue(EnvVar::kZeroCopyGraphs));
  }
  int slots = TPC_HAS_FIELD(config, graphSlots) ? config->graphSlots : 0;
  if (slots < 0 || slots > (1 << 24)) {
    return fail(tpcInvalidArgument, "graphSlots %d is outside [1, %d] (0 for the default)", slots,
                1 << 24);
  }
  if (slots == 0) {
    if (const char* text = envValue(EnvVar::kGraphSlots)) {
      if (!parsePositiveInt(text, &slots) || slots > (1 << 24)) {
        return fail(tpcInvalidArgument, "%s=%s is not a slot count", envName(EnvVar::kGraphSlots),
                    text);
      }
    }
  }
  if (slots != 0) r.graphSlots = slots;

  size_t push = TPC_HAS_FIELD(config, pushBytes) ? config->pushBytes : 0;
  if (push == 0) {
    if (const char* text = envValue(EnvVar::kPushBytes)) {
      if (!parseByteSize(text, &push) || push == 0) {
        return fail(tpcInvalidArgument, "%s=%s is not a byte size", envName(EnvVar::kPushBytes),
                    text);
      }
    }
  }
  if (push != 0) {
    if (push < kMinPushBytes || push > kMaxPushBytes) {
      return fail(tpcInvalidArgument, "pushBytes %zu is outside [%zu, %zu]", push, kMinPushBytes,
                  kMaxPushBytes);
    }
    r.pushBytes = (push + 15) / 16 * 16;
  }

  const int pdl = TPC_HAS_FIELD(config, pdl) ? config->pdl : 0;
  if (pdl < -1 || pdl > 1) return fail(tpcInvalidArgument, "pdl %d is not -1, 0 or 1", pdl);
  if (pdl != 0) {
    r.pdl = pdl == 1;
  } else if (!envFlag(EnvVar::kPdl, r.pdl, &r.pdl)) {
    return fail(tpcInvalidArgument, "%s=%s: expected 0 or 1", envName(EnvVar::kPdl),
                envValue(EnvVar::kPdl));
  }

  *out = r;
  return tpcSuccess;
}

}  // namespace tpcomm
