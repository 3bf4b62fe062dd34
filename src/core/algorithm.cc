#include "core/algorithm.h"

#include <algorithm>

namespace tpcomm {

device::Algorithm chooseAlgorithm(tpcAlgorithm_t forced, int nranks, size_t bytes) {
  if (forced == tpcAlgoOneShot) return device::kOneShot;
  if (forced == tpcAlgoTwoShot) return device::kTwoShot;
  for (const OneShotLimit& limit : kOneShotLimits) {
    if (nranks <= limit.maxRanks)
      return bytes <= limit.maxBytes ? device::kOneShot : device::kTwoShot;
  }
  return device::kTwoShot;
}

int gridBlocks(device::Algorithm algorithm, int nranks, size_t count, size_t elemBytes, int cap) {
  const size_t elemsPerVec = 16 / elemBytes;
  size_t vectors = (count + elemsPerVec - 1) / elemsPerVec;
  if (algorithm == device::kTwoShot) vectors = (vectors + nranks - 1) / nranks;
  const size_t blocks = (vectors + device::kBlockThreads - 1) / device::kBlockThreads;
  return static_cast<int>(std::clamp<size_t>(blocks, 1, static_cast<size_t>(std::max(cap, 1))));
}

int residentBlockShare(int blocksPerSm, int smCount, int ranksOnDevice) {
  const int share = blocksPerSm * smCount / std::max(ranksOnDevice, 1);
  return std::clamp(share, 1, device::kMaxBlocks);
}

}  // namespace tpcomm
