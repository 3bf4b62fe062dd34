#include "topology/discovery.h"

#include <cuda_runtime.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include "common/error.h"
#include "kernels/p2p_check.h"
#include "topology/nvml.h"
#include "tpcomm/device/params.cuh"

namespace tpcomm {
namespace {

std::string firstLine(const char* path) {
  FILE* f = std::fopen(path, "r");
  if (f == nullptr) return "";
  char buf[256] = "";
  const bool read = std::fgets(buf, sizeof(buf), f) != nullptr;
  std::fclose(f);
  std::string line = read ? buf : "";
  if (!line.empty() && line.back() == '\n') line.pop_back();
  return line;
}

// What the cached facts belong to: this host, since its last boot, under this driver. A home
// directory shared by several machines then never hands one machine's facts to another.
std::string machineKey(const nvml::Nvml* lib) {
  char host[256] = "";
  gethostname(host, sizeof(host) - 1);
  std::string driver = nvml::driverVersion(lib);
  if (driver.empty()) {
    int cudaDriver = 0;
    cudaDriverGetVersion(&cudaDriver);
    driver = "cuda-" + std::to_string(cudaDriver);
  }
  return std::string("host ") + host + " boot " + firstLine("/proc/sys/kernel/random/boot_id") +
         " driver " + driver;
}

TopologyCache cacheKey(const std::string& machine, const std::vector<std::string>& gpus) {
  TopologyCache cache;
  cache.machine = machine;
  cache.devices = gpus;
  std::sort(cache.devices.begin(), cache.devices.end());
  cache.devices.erase(std::unique(cache.devices.begin(), cache.devices.end()), cache.devices.end());
  cache.pairs.assign(cache.devices.size() * (cache.devices.size() - 1) / 2, LinkFacts{});
  return cache;
}

size_t indexOf(const TopologyCache& cache, const std::string& gpu) {
  return std::lower_bound(cache.devices.begin(), cache.devices.end(), gpu) - cache.devices.begin();
}

// Writes this rank's pattern into every peer it has mapped, then, once every rank has written,
// reads which peers' patterns arrived in its own memory. This rank's own failure, before the check
// (`*mine` on entry) or in it, goes into *mine, and every rank takes part in the exchange all the
// same (Bootstrap::agree), so that a failure reaches every rank at once; the result is the
// exchange's.
tpcResult_t runCheck(Bootstrap& bootstrap, const std::vector<PeerView>& peers,
                     const uint32_t* myCheckWords, tpcResult_t* mine, std::vector<LinkFacts>* row) {
  const int rank = bootstrap.rank(), n = bootstrap.nranks();
  if (*mine == tpcSuccess) {
    cudaStream_t stream;
    cudaError_t err = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
    if (err == cudaSuccess) {
      for (int p = 0; p < n && err == cudaSuccess; ++p) {
        if (p != rank && peers[p].checkWord != nullptr) {
          err = storeWordThroughMapping(peers[p].checkWord, checkPattern(rank, p), stream);
        }
      }
      if (err == cudaSuccess) err = cudaStreamSynchronize(stream);
      cudaStreamDestroy(stream);
    }
    if (err != cudaSuccess) {
      *mine = failCuda(err, "a store of the peer mapping check", __FILE__, __LINE__);
    }
  }
  TPC_CHECK(bootstrap.agree(*mine, "writing through the peer mappings"));
  uint32_t words[device::kMaxRanks] = {};
  const cudaError_t err = cudaMemcpy(words, myCheckWords, sizeof(words), cudaMemcpyDeviceToHost);
  if (err != cudaSuccess) {
    *mine = failCuda(err, "cudaMemcpy", __FILE__, __LINE__);
    return tpcSuccess;
  }
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
  std::vector<std::string> gpus;
  for (const PeerView& p : peers) {
    t.busIds.push_back(p.busId);
    gpus.push_back(p.uuid);
  }
  t.facts.assign(static_cast<size_t>(n) * n, LinkFacts{});
  const nvml::Nvml* lib = nvml::get(nullptr);

  // Rank 0 reads the cache and tells everyone what it found, so that every rank decides alike.
  const std::string directory = defaultCacheDirectory();
  TopologyCache cache = cacheKey(machineKey(lib), gpus);
  std::string cached;
  if (rank == 0 && cache.devices.size() > 1 && loadTopologyCache(directory, &cache) &&
      (!switches.p2pCheck || cache.verified())) {
    cached = cache.serialize();
  }
  TPC_CHECK(bootstrap.broadcast(0, &cached));
  const bool hit = !cached.empty();
  if (hit && !cache.parse(cached, /*anyMachine=*/true)) {
    return fail(tpcInternalError, "rank %d: rank 0's topology cache did not parse", rank);
  }

  // This rank's view of every peer, from this run's mappings and the driver's answers now, with
  // NVML's facts and the functional check from the cache where it has them; then everyone's
  // views merged.
  // A rank whose own step fails (`mine`) still takes part in every exchange.
  tpcResult_t mine = tpcSuccess;
  std::vector<LinkFacts> row(n);
  for (int p = 0; p < n && mine == tpcSuccess; ++p) {
    if (p == rank) continue;
    if (peers[p].checkWord == nullptr) row[p].works = Fact::kNo;  // its mapping failed now
    if (t.sameDevice(rank, p)) continue;
    if (peers[p].visibleDevice >= 0) {
      // Both of the runtime's answers must agree that the pair can access each other.
      int can = 0, supported = 0;
      cudaError_t err = cudaDeviceCanAccessPeer(&can, device, peers[p].visibleDevice);
      if (err == cudaSuccess) {
        err = cudaDeviceGetP2PAttribute(&supported, cudaDevP2PAttrAccessSupported, device,
                                        peers[p].visibleDevice);
      }
      if (err != cudaSuccess) {
        mine = failCuda(err, "cudaDeviceCanAccessPeer or cudaDeviceGetP2PAttribute", __FILE__,
                        __LINE__);
        break;
      }
      row[p].peerAccess = can && supported ? Fact::kYes : Fact::kNo;
    }
    if (hit) {
      const LinkFacts& known = cache.pair(indexOf(cache, gpus[rank]), indexOf(cache, gpus[p]));
      row[p].nvlink = known.nvlink;
      if (row[p].works != Fact::kNo) row[p].works = known.works;
    } else {
      row[p].nvlink = nvml::nvlinkBetween(lib, peers[rank].busId, peers[p].busId);
    }
  }
  if (!hit && switches.p2pCheck) TPC_CHECK(runCheck(bootstrap, peers, myCheckWords, &mine, &row));
  TPC_CHECK(bootstrap.agree(mine, "discovering the topology"));
  std::vector<std::string> rows;
  TPC_CHECK(bootstrap.allGather(encodeRow(hit || lib != nullptr, row), &rows));
  t.nvmlAvailable = true;
  for (int i = 0; i < n; ++i) {
    t.nvmlAvailable = t.nvmlAvailable && rows[i][0] == '1';
    for (int j = 0; j < n; ++j) {
      if (i != j) t.at(i, j) = mergeFacts(factsAt(rows[i], j), factsAt(rows[j], i));
    }
  }
  out->fromCache = hit;
  // Verified: the check ran (now, or in the run the cache holds) and every write arrived.
  bool anyLost = false;
  for (int i = 0; i < n; ++i) {
    for (int j = i + 1; j < n; ++j) anyLost = anyLost || t.at(i, j).works == Fact::kNo;
  }
  out->verified = switches.p2pCheck && !anyLost;
  out->decision = decidePath(t, switches);

  if (rank == 0 && !hit && cache.devices.size() > 1) {
    for (int i = 0; i < n; ++i) {
      for (int j = i + 1; j < n; ++j) {
        if (!t.sameDevice(i, j)) {
          cache.record(indexOf(cache, gpus[i]), indexOf(cache, gpus[j]), t.at(i, j));
        }
      }
    }
    if (!storeTopologyCache(directory, cache)) {
      TPC_INFO("rank 0: could not write the topology cache in %s", directory.c_str());
    }
  }
  return tpcSuccess;
}

}  // namespace tpcomm
