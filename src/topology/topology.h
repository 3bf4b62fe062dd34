// Whether tpcomm's own kernels may carry a communicator's all-reduces, decided from what is known
// about every pair of its devices, and the on-disk cache of those facts.
//
// The custom path is on when every pair of ranks shares a device or is joined by NVLink, or when
// exactly two GPUs take part and their peer access over PCIe works; anywhere else NCCL carries the
// calls. Peer access a driver claims is not trusted alone: at init every rank writes a pattern
// through each peer mapping and the owner reads it back.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tpcomm {

enum class Fact : int8_t { kUnknown = -1, kNo = 0, kYes = 1 };

// What is known about one pair of distinct devices.
struct LinkFacts {
  Fact peerAccess = Fact::kUnknown;  // the driver's claim (cudaDeviceCanAccessPeer)
  Fact nvlink = Fact::kUnknown;      // NVML's claim
  Fact works = Fact::kUnknown;       // a write through the peer mapping arrived, both ways
};

// Facts of a pair seen from both sides: a "no" from either side wins, then a "yes".
LinkFacts mergeFacts(const LinkFacts& a, const LinkFacts& b);

struct Topology {
  std::vector<std::string> busIds;  // per rank: its device's PCI bus id
  bool nvmlAvailable = false;
  // facts[i * n + j] for ranks i and j on different devices
  std::vector<LinkFacts> facts;

  int nranks() const { return static_cast<int>(busIds.size()); }
  bool sameDevice(int i, int j) const { return busIds[i] == busIds[j]; }
  LinkFacts& at(int i, int j) { return facts[static_cast<size_t>(i) * nranks() + j]; }
  const LinkFacts& at(int i, int j) const { return facts[static_cast<size_t>(i) * nranks() + j]; }
  // Distinct devices, in order of their first rank.
  std::vector<std::string> devices() const;
};

struct PathSwitches {
  bool disabled = false;  // TPCOMM_DISABLE=1
  bool p2pCheck = true;   // TPCOMM_P2P_CHECK=0 skips the functional check
};

struct PathDecision {
  bool custom = false;
  std::string reason;  // one sentence, naming the pair that decided it where one did
};

PathDecision decidePath(const Topology& topology, const PathSwitches& switches);

// The cache of link facts for one set of GPUs on one machine, so that NVML and the functional
// check cost nothing the second time. Only what the hardware says is kept: NVML's NVLink claim,
// the driver's peer-access claim, and a functional check that passed. A failed check is never
// stored (the next run checks again), and a hit is still combined with what this run saw.
struct TopologyCache {
  std::string machine;               // host, boot and driver: a reboot or a new driver misses
  std::vector<std::string> devices;  // sorted GPU UUIDs
  // facts of the pair (devices[i], devices[j]), i < j, in row order
  std::vector<LinkFacts> pairs;

  // The cache file for this machine and set of GPUs in `directory`.
  std::string path(const std::string& directory) const;
  std::string serialize() const;
  // False when `text` is not a cache of exactly this machine and set of GPUs. anyMachine: the
  // text's machine is taken for this one's (a cache rank 0 read, whose process may see another
  // driver string or host name than this rank's).
  bool parse(const std::string& text, bool anyMachine = false);
  LinkFacts& pair(size_t i, size_t j);
  // Stores what may be cached of `facts` for the pair.
  void record(size_t i, size_t j, const LinkFacts& facts);
  // Every pair's functional check has passed before.
  bool verified() const;
};

// $XDG_CACHE_HOME/tpcomm, else ~/.cache/tpcomm; empty when neither is known.
std::string defaultCacheDirectory();

// False when the file is missing, unreadable, corrupt or of another machine or GPU set.
bool loadTopologyCache(const std::string& directory, TopologyCache* cache);
// Writes atomically (temporary file, then rename); false on any failure.
bool storeTopologyCache(const std::string& directory, const TopologyCache& cache);

}  // namespace tpcomm
