// Gathering the link facts of a communicator's devices at init, collectively: NVML's and the
// driver's claims, the functional check through every peer mapping, and the on-disk cache.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "bootstrap/bootstrap.h"
#include "topology/topology.h"
#include "tpcomm/tpcomm.h"

namespace tpcomm {

// How this rank sees rank p.
struct PeerView {
  std::string busId;
  std::string uuid;               // the GPU's UUID, in hex
  int visibleDevice = -1;         // p's device as a CUDA ordinal of this process; -1 if not visible
  uint32_t* checkWord = nullptr;  // where this rank writes its check pattern in p's memory;
                                  // null where p's buffer could not be mapped
};

struct DiscoveryResult {
  Topology topology;
  PathDecision decision;
  bool verified = false;  // writes through every peer mapping arrived, checked now or before
  bool fromCache = false;
};

// Collective. `peers` is indexed by rank (this rank's own entry included); `myCheckWords` are
// the kMaxRanks words of this rank's memory its peers write their patterns into, zeroed.
tpcResult_t discoverTopology(Bootstrap& bootstrap, int device, const std::vector<PeerView>& peers,
                             const uint32_t* myCheckWords, const PathSwitches& switches,
                             DiscoveryResult* out);

// The pattern rank `writer` stores into rank `owner`'s check word.
inline uint32_t checkPattern(int writer, int owner) {
  return 0xA5A50000u | (static_cast<uint32_t>(writer) << 8) | static_cast<uint32_t>(owner);
}

}  // namespace tpcomm
