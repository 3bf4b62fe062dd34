#include "topology/discovery.h"

#include <cuda_runtime.h>

#include <algorithm>

#include "common/error.h"
#include "kernels/p2p_check.h"
#include "topology/nvml.h"
#include "tpcomm/device/params.cuh"

namespace tpcomm {
namespace {

std::string driverKey(const nvml::Nvml* lib) {
  std::string version = nvml::driverVersion(lib);
  if (!version.empty()) return version;
  int cudaDriver = 0;
  cudaDriverGetVersion(&cudaDriver);
  return "cuda-" + std::to_string(cudaDriver);
}

TopologyCache cacheKey(const std::string& driver, const std::vector<std::string>& busIds) {
  TopologyCache cache;
  cache.driver = driver;
  cache.devices = busIds;
  std::sort(cache.devices.begin(), cache.devices.end());
  cache.devices.erase(std::unique(cache.devices.begin(), cache.devices.end()), cache.devices.end());
  cache.pairs.assign(cache.devices.size() * (cache.devices.size() - 1) / 2, LinkFacts{});
  return cache;
}

size_t indexOf(const TopologyCache& cache, const std::string& bus) {
  return std::lower_bound(cache.devices.begin(), cache.devices.end(), bus) - cache.devices.begin();
}

bool checkComplete(const TopologyCache& cache) {
  return std::none_of(cache.pairs.begin(), cache.pairs.end(),
                      [](const LinkFacts& f) { return f.works == Fact::kUnknown; });
}

// Writes this rank's pattern into every peer it has mapped, then, once every rank has written,
// reads which peers' patterns arrived in its own memory.
tpcResult_t runCheck(Bootstrap& bootstrap, const std::vector<PeerView>& peers,
                     const uint32_t* myCheckWords, std::vector<LinkFacts>* row) {
  const int rank = bootstrap.rank(), n = bootstrap.nranks();
  cudaStream_t stream;
  TPC_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaError_t err = cudaSuccess;
  for (int p = 0; p < n && err == cudaSuccess; ++p) {
    if (p != rank && peers[p].checkWord != nullptr) {
      err = storeWordThroughMapping(peers[p].checkWord, checkPattern(rank, p), stream);
    }
  }
  if (err == cudaSuccess) err = cudaStreamSynchronize(stream);
  cudaStreamDestroy(stream);
  if (err != cudaSuccess) return failCuda(err, "the peer mapping check", __FILE__, __LINE__);
  TPC_CHECK(bootstrap.barrier());
  uint32_t words[device::kMaxRanks] = {};
  TPC_CUDA_CHECK(cudaMemcpy(words, myCheckWords, sizeof(words), cudaMemcpyDeviceToHost));
  for (int q = 0; q < n; ++q) {
    if (q == rank) continue;
    const bool arrived = words[q] == checkPattern(q, rank);
    (*row)[q].works = arrived ? Fact::kYes : Fact::kNo;
    if (!arrived) {
      TPC_INFO("rank %d: the check pattern of rank %d did not arrive (read 0x%08x)", rank, q,
               words[q]);
    }
  }
  return tpcSuccess;
}

std::string encodeRow(bool haveNvml, const std::vector<LinkFacts>& row) {
  std::string blob(1, haveNvml ? '1' : '0');
  for (const LinkFacts& f : row) {
    blob += static_cast<char>(f.peerAccess);
    blob += static_cast<char>(f.nvlink);
    blob += static_cast<char>(f.works);
  }
  return blob;
}

LinkFacts factsAt(const std::string& blob, int peer) {
  const size_t at = 1 + 3 * static_cast<size_t>(peer);
  return LinkFacts{static_cast<Fact>(blob[at]), static_cast<Fact>(blob[at + 1]),
                   static_cast<Fact>(blob[at + 2])};
}

}  // namespace

tpcResult_t discoverTopology(Bootstrap& bootstrap, int device, const std::vector<PeerView>& peers,
                             const uint32_t* myCheckWords, const PathSwitches& switches,
                             DiscoveryResult* out) {
  const int rank = bootstrap.rank(), n = bootstrap.nranks();
  Topology& t = out->topology;
  t.busIds.clear();
  for (const PeerView& p : peers) t.busIds.push_back(p.busId);
  t.facts.assign(static_cast<size_t>(n) * n, LinkFacts{});
  const nvml::Nvml* lib = nvml::get(nullptr);

  // Rank 0 reads the cache and tells everyone what it found, so that every rank decides alike.
  const std::string directory = defaultCacheDirectory();
  std::string cached;
  if (rank == 0) {
    TopologyCache cache = cacheKey(driverKey(lib), t.busIds);
    if (cache.devices.size() > 1 && loadTopologyCache(directory, &cache) &&
        (!switches.p2pCheck || checkComplete(cache))) {
      cached = cache.driver + "\n" + cache.serialize();
    }
  }
  TPC_CHECK(bootstrap.broadcast(0, &cached));
  if (!cached.empty()) {
    const size_t newline = cached.find('\n');
    TopologyCache cache = cacheKey(cached.substr(0, newline), t.busIds);
    if (!cache.parse(cached.substr(newline + 1))) {
      return fail(tpcInternalError, "rank %d: rank 0's topology cache did not parse", rank);
    }
    t.nvmlAvailable = true;  // the cached facts stand in for NVML's
    for (int i = 0; i < n; ++i) {
      for (int j = 0; j < n; ++j) {
        if (i == j || t.sameDevice(i, j)) continue;
        t.at(i, j) = cache.pair(indexOf(cache, t.busIds[i]), indexOf(cache, t.busIds[j]));
      }
    }
    out->fromCache = true;
    out->verified = switches.p2pCheck;
    out->decision = decidePath(t, switches);
    return tpcSuccess;
  }

  // This rank's view of every peer, then everyone's views merged.
  std::vector<LinkFacts> row(n);
  for (int p = 0; p < n; ++p) {
    if (p == rank) continue;
    if (peers[p].checkWord == nullptr) row[p].works = Fact::kNo;
    if (t.sameDevice(rank, p)) continue;
    row[p].nvlink = nvml::nvlinkBetween(lib, peers[rank].busId, peers[p].busId);
    if (peers[p].visibleDevice >= 0) {
      // Both of the runtime's answers must agree that the pair can access each other.
      int can = 0, supported = 0;
      TPC_CUDA_CHECK(cudaDeviceCanAccessPeer(&can, device, peers[p].visibleDevice));
      TPC_CUDA_CHECK(cudaDeviceGetP2PAttribute(&supported, cudaDevP2PAttrAccessSupported, device,
                                               peers[p].visibleDevice));
      row[p].peerAccess = can && supported ? Fact::kYes : Fact::kNo;
    }
  }
  if (switches.p2pCheck) TPC_CHECK(runCheck(bootstrap, peers, myCheckWords, &row));
  std::vector<std::string> rows;
  TPC_CHECK(bootstrap.allGather(encodeRow(lib != nullptr, row), &rows));
  t.nvmlAvailable = true;
  for (int i = 0; i < n; ++i) {
    t.nvmlAvailable = t.nvmlAvailable && rows[i][0] == '1';
    for (int j = 0; j < n; ++j) {
      if (i != j) t.at(i, j) = mergeFacts(factsAt(rows[i], j), factsAt(rows[j], i));
    }
  }
  out->verified = switches.p2pCheck;
  out->decision = decidePath(t, switches);

  if (rank == 0) {
    TopologyCache cache = cacheKey(driverKey(lib), t.busIds);
    if (cache.devices.size() > 1) {
      for (int i = 0; i < n; ++i) {
        for (int j = i + 1; j < n; ++j) {
          if (t.sameDevice(i, j)) continue;
          LinkFacts& f = cache.pair(indexOf(cache, t.busIds[i]), indexOf(cache, t.busIds[j]));
          f = mergeFacts(f, t.at(i, j));
        }
      }
      if (!storeTopologyCache(directory, cache)) {
        TPC_INFO("rank 0: could not write the topology cache in %s", directory.c_str());
      }
    }
  }
  return tpcSuccess;
}

}  // namespace tpcomm
