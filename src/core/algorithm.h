// Which kernel an all-reduce runs and with how many blocks.
#pragma once

#include <cstddef>

#include "tpcomm/device/params.cuh"
#include "tpcomm/tpcomm.h"

namespace tpcomm {

// Largest message (bytes) one-shot takes when the algorithm is automatic, by world size.
struct OneShotLimit {
  int maxRanks;
  size_t maxBytes;
};

// From the crossovers published for peer-to-peer all-reduce on H100/H200 NVLink (vLLM's custom
// all-reduce, MSCCL++): with two ranks two-shot moves as much data as one-shot and waits at one
// more barrier, so one-shot always wins; up to four ranks one-shot wins to about 512 KB, up to
// eight to about 256 KB. Retune from tpcomm-perf measurements on real NVLink machines.
constexpr OneShotLimit kOneShotLimits[] = {
    {2, ~size_t{0}},
    {4, size_t{512} << 10},
    {8, size_t{256} << 10},
};

// Published NVLink all-reduce kernels launch at most 24-36 blocks of 512 threads: more blocks
// contend on the links without gain. Used when every rank has a device to itself.
constexpr int kNvlinkMaxBlocks = 36;

device::Algorithm chooseAlgorithm(tpcAlgorithm_t forced, int nranks, size_t bytes);

// Blocks for one kernel over `count` elements of `elemBytes` each: enough for one 16-byte vector
// per thread of the largest phase, at least 1, at most `cap`.
int gridBlocks(device::Algorithm algorithm, int nranks, size_t count, size_t elemBytes, int cap);

// Per-rank block cap from residency: blocksPerSm * smCount shared by the ranks on that device,
// clamped to [1, kMaxBlocks].
int residentBlockShare(int blocksPerSm, int smCount, int ranksOnDevice);

}  // namespace tpcomm
