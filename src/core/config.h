// The configuration a communicator runs with: the caller's tpcConfig_t, completed from the
// environment and the built-in defaults, and checked.
#pragma once

#include <cstddef>
#include <string>

#include "tpcomm/tpcomm.h"

namespace tpcomm {

// The pull kernels' staging buffer: they carry calls only where forced or for zero-copy graphs
// (the push kernels win at every size measured), so a few MB suffice; larger messages go in
// chunks.
constexpr size_t kDefaultStagingBytes = size_t{4} << 20;
// Below this, chunking overhead would dominate any message worth sending through tpcomm.
constexpr size_t kMinStagingBytes = size_t{64} << 10;
constexpr size_t kMaxStagingBytes = size_t{4} << 30;
// Long enough for ranks that start minutes apart (model loading, compilation), short enough that
// a dead peer is reported rather than hanging a job forever.
constexpr int kDefaultTimeoutMs = 300 * 1000;
// An engine captures every layer's two all-reduces for each of dozens of batch sizes: room for
// tens of thousands of captured calls (72 bytes each on the device).
constexpr int kDefaultGraphSlots = 65536;
// Slots for eager registrations when captured calls do not read in place.
constexpr int kRegistrationSlots = 256;
// Push two-shot takes messages up to this size in one launch: every launch boundary idles the link
// for a few microseconds (64 MB on 2 H100s: 254 us in 8 MB chunks, 226 in 16 MB ones), and on
// 2 H200s (graph, bf16, 64 / 256 MB) 32 MB launches carried 332 GB/s against 327 in 16 MB ones.
// Two ranks split the warps of launches of more than 32 MiB by role (device::kByRoleBytes), whose
// bandwidth grows with the launch, so they take 64 MiB a launch (64 / 256 MB: 341 GB/s, 334 in
// 32 MiB launches). More ranks keep 32 MiB: the kernel they run lost in 64 MB launches at two
// ranks (325 GB/s against 332), and their buffers grow with the ranks. Receive buffers take
// 6 x (nranks - 1) / nranks of it (3 x at two ranks: 192 MiB), push one-shot's
// 3 x min(it, kPushOneShotBytes) (memory/shared_buffer.h).
constexpr size_t defaultPushBytes(int nranks) {
  return nranks == 2 ? size_t{64} << 20 : size_t{32} << 20;
}
constexpr size_t kMinPushBytes = size_t{64} << 10;
constexpr size_t kMaxPushBytes = size_t{1} << 30;

struct ResolvedConfig {
  size_t stagingBytes = kDefaultStagingBytes;
  int maxBlocks = 0;  // 0: automatic
  tpcAlgorithm_t algorithm = tpcAlgoAuto;
  int timeoutMs = kDefaultTimeoutMs;
  void* ncclComm = nullptr;  // borrowed
  bool ncclOff = false;
  size_t maxBytes = 0;  // 0: the algorithm table alone decides
  bool disabled = false;
  bool p2pCheck = true;
  bool zeroCopyGraphs = false;
  int graphSlots = kDefaultGraphSlots;
  size_t pushBytes = 0;  // 0: defaultPushBytes(nranks), chosen when the communicator starts
  // Programmatic dependent launch: on 2 H100s it took 0.1-0.4 us off every size in graph mode
  // (8 B: 3.70 -> 3.43 us), and 64 MB push two-shot from 236 to 226 us.
  bool pdl = true;

  // A readable summary; ranks compare them at rendezvous and must agree.
  std::string digest() const;
};

// Fills *out from `config` (may be null), then the environment, then defaults.
tpcResult_t resolveConfig(const tpcConfig_t* config, ResolvedConfig* out);

const char* algorithmName(tpcAlgorithm_t algorithm);
// Parses "auto", "oneshot", "twoshot", "nccl", "push-oneshot", "push-twoshot" (case-insensitive).
// False on anything else.
bool parseAlgorithm(const char* text, tpcAlgorithm_t* out);

}  // namespace tpcomm
