// The struct behind tpcComm_t. Destroying a communicator frees the rank but keeps this small shell
// with a tombstone, so that a later call with the stale handle gets an error instead of touching
// freed memory.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "core/communicator.h"

struct tpcComm {
  uint64_t magic;
  std::unique_ptr<tpcomm::Communicator> impl;
  std::string lastError;
};

namespace tpcomm {

constexpr uint64_t kLiveMagic = 0x7470636f6d6d4c56ull;       // "tpcommLV"
constexpr uint64_t kDestroyedMagic = 0x7470636f6d6d4445ull;  // "tpcommDE"

}  // namespace tpcomm
