// Plain data shared by the kernels and whoever launches them. Valid C++ for host compilers too: the
// host runtime fills these structs and never needs to see a kernel.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "tpcomm/device/namespace.cuh"

TPCOMM_DEVICE_NAMESPACE_BEGIN

constexpr int kMaxRanks = 8;
// Signal words are indexed by block, independently of the grid size, so any grid up to this many
// blocks can follow any other on the same words.
constexpr int kMaxBlocks = 256;
constexpr int kBlockThreads = 512;
// The push kernels spread a small message over many multiprocessors, about this many 16-byte
// vectors a block, because one multiprocessor alone cannot keep the link busy. Push one-shot, bf16,
// graph mode, on 2 H200s: 8 KB took 4.75 us in one block of 512 threads and 3.50 us in four of 128;
// 64 KB 4.86 and 3.69 us; 256 KB 5.06 and 4.16 us. Blocks of 64 or 32 were no faster, and up to
// 2 KB (one block either way) the shape made no difference.
constexpr int kPushVectorsPerBlock = 128;
// Two resident blocks per multiprocessor (at most 64 registers a thread) let ranks that share a
// device keep more blocks in flight; the kernels need no more registers than that.
constexpr int kMinBlocksPerSm = 2;

// One barrier set on one rank: peers write inbox[block * kMaxRanks + peer].
constexpr int kInboxWords = kMaxBlocks * kMaxRanks;

// The protocols. The pull kernels (one-shot, two-shot) read peers' buffers after per-block
// barriers; the push kernels store into peers' receive buffers with the data as its own flag.
enum Algorithm : int {
  kOneShot = 0,
  kTwoShot = 1,
  kPushOneShot = 2,
  kPushTwoShot = 3,
  kPushOneShotNorm = 4,  // push one-shot fused with the residual add and RMSNorm
  kPushTwoShotNorm = 5,  // push two-shot fused with the residual add and RMSNorm
  kNumAlgorithms = 6
};
constexpr int kNumPullAlgorithms = 2;  // the first ones, each with a barrier set of its own
constexpr int kNumPushAlgorithms = 2;  // then these, each with receive buffers of its own

// Where in an all-reduce a block waits for its peers.
enum WaitPhase : int {
  kPhaseInputsReady = 0,    // pull: every rank's input is in its staging buffer
  kPhaseSlicesReduced = 1,  // pull two-shot: every rank has reduced its slice
  kPhasePeersDone = 2,      // pull: no peer reads this rank's buffers any more
  kPhasePushData = 3,       // push: a peer's data has arrived in this rank's receive buffer
  kPhasePushReduced = 4,    // push two-shot: a peer's reduced slice has arrived
  kNumPhases = 5
};

enum FailureKind : int {
  kFailureNone = 0,
  kFailureTimeout = 1,       // a wait on a peer ran out
  kFailureUnregistered = 2,  // a zero-copy call ran before its buffers were registered
  kFailurePeerFailed = 3,    // a peer failed (or was aborted): this rank stops too
  kFailureMismatch = 4,      // a peer made a different call (size, type, mode) at the same point
  kFailureStaleSlot = 5,     // a zero-copy call ran after its registration was replaced
};

// Where a zero-copy call finds every rank's input. The host fills a slot when the buffers of a
// captured call (or of an eager registration) are registered; until then the slot says so and
// the kernel refuses to run. `generation` changes whenever the slot is given to another call, so
// that a graph still pointing at a reused slot fails instead of reading someone else's buffers.
enum SlotState : int {
  kSlotUnregistered = 0,
  kSlotPeerInputs = 1,  // read every rank's input where it lies
  kSlotStaging = 2,     // some rank's buffer cannot be shared: copy through staging instead
};

struct SourceSlot {
  int state;
  uint32_t generation;
  const void* input[kMaxRanks];  // every rank's input, mapped into this rank
};

// Why a rank's kernel gave up. Lives in host-mapped memory so the host reads it without
// synchronizing; the first failing thread of the rank fills it and sets `ready` last.
struct FailureRecord {
  int kind;
  int rank;
  int peer;
  int block;
  int phase;
  int algorithm;
  unsigned long long waitedNs;
  volatile int ready;
};

// A rank's failure word is nonzero once any of its kernels failed (or the host aborted it). It
// lives in the rank's shared buffer: the rank's own kernels stop at once when it is set, and its
// peers read it while they wait, so that one rank's failure stops every rank.
struct FailureContext {
  unsigned int* claims[kMaxRanks];  // every rank's failure word, mapped into this rank
  FailureRecord* record;            // host-mapped
  unsigned long long timeoutNs;
};

// Per-block monotonic barrier counters of one barrier set. Every rank advances epochs[block] by one
// per barrier inside the kernel, so a replayed graph continues where the last launch stopped.
// With the first barrier of a call each rank also leaves its call's tag in its peers' tag words,
// so that ranks making different calls at the same point fail instead of mixing them.
struct BarrierParams {
  uint32_t* inbox[kMaxRanks];  // rank p's inbox words for this set, mapped into this rank
  uint32_t* tags[kMaxRanks];   // rank p's tag words for this set, laid out like the inbox
  uint32_t* epochs;            // this rank's counters, kMaxBlocks words
};

// What every all-reduce launch knows about its call.
struct CallParams {
  const void* input;  // this rank's input (chunk)
  void* output;       // this rank's output (chunk)
  size_t count;       // elements in the chunk
  FailureContext failure;
  int rank;
  int nranks;
  int inputAligned;   // input is 16-byte aligned
  int outputAligned;  // output is 16-byte aligned
  uint32_t tag;       // the same on every rank making the same call (count, type, algorithm)
};

// The pull kernels: every rank's staging buffer (or input, zero-copy) is read by every rank.
struct PullParams : CallParams {
  void* staging[kMaxRanks];  // every rank's staging buffer, mapped into this rank
  void* scratch[kMaxRanks];  // every rank's reduced slice (two-shot)
  BarrierParams barrier;
  const SourceSlot* slot;   // null: inputs go through staging
  uint32_t slotGeneration;  // the generation the slot had when this call took it
  size_t sourceOffset;      // bytes from each slot input to this chunk
};

// The rotation of one push protocol on one rank, in the rank's own device memory, as the last
// launch left it: block b of a launch reads entry b when it starts, and at its end writes the next
// rotation into entry b and into every entry no block of its launch has (b + k * grid). So every
// launch, whatever its grid, finds the rotation the one before left, without an atomic or a wait,
// and a replayed graph goes on from there.
constexpr int kMaxPushBlocks = 256;
struct PushState {
  uint32_t buffer;        // 0, 1, 2: the receive buffer of the next launch
  uint32_t staleVectors;  // vectors of every slot the last launch used, in (buffer + 2) % 3
  uint32_t calls;         // launches so far; rides in the tag vector
  uint32_t reserved;
};

// A receive slot's first vector carries the sender's call tag, and its data starts at this vector:
// with slots a multiple of it long, data and slots begin on 128-byte lines, and a warp's stores
// into a peer fill whole 32-byte sectors. Data one vector off the line cost push two-shot 7% of
// its bandwidth on 2 H200s (64 MB: 330 GB/s aligned, 308 one off).
constexpr uint32_t kSlotDataVector = 8;

// The push kernels: every rank stores its data into its slot of every peer's receive buffer.
// A rank's receive region holds three buffers of `bufferBytes`; a buffer holds nranks - 1 slots
// (one per peer; two-shot: a reduce-scatter slot and an all-gather slot per peer) of `slotVectors`
// 16-byte vectors, a multiple of kSlotDataVector.
struct PushParams : CallParams {
  char* receive[kMaxRanks];  // every rank's receive region for this protocol, mapped into this rank
  size_t bufferBytes;
  uint32_t slotVectors;
  PushState* state;  // this rank's kMaxPushBlocks entries
};

// The rows of an all-reduce fused with a residual add and RMSNorm (tpcAllReduceAddRmsNorm), or of
// the norm alone: for each row of `hidden` elements,
//   residualOut = T(sum + residualIn),   out = Out(residualOut * rsqrt(mean(residualOut^2) + eps)
//                                                  * weight [/ scale])
// where sum is the all-reduced input, as T. Every buffer is 16-byte aligned and rows are packed.
enum NormOutput : int {
  kNormOutInput = 0,  // the input's type
  kNormOutE4M3 = 1,   // FP8 e4m3, saturated to +-448
  kNormOutE5M2 = 2,   // FP8 e5m2, saturated to +-57344
};

// A block normalises a row at a time; each of its threads holds up to this many 16-byte vectors
// of the row in registers.
constexpr int kMaxRowVectors = 4;

#ifdef __CUDACC__
#define TPCOMM_PARAMS_HOST_DEVICE __host__ __device__
#else
#define TPCOMM_PARAMS_HOST_DEVICE
#endif

// Threads of a block for rows of `hiddenVectors` vectors: as few vectors per thread as the block
// size allows, over as few warps as that needs. The largest row is kMaxRowVectors x kBlockThreads.
TPCOMM_PARAMS_HOST_DEVICE constexpr int rowThreads(uint32_t hiddenVectors) {
  return hiddenVectors == 0
             ? 32
             : static_cast<int>(
                   ((hiddenVectors + (hiddenVectors + kBlockThreads - 1) / kBlockThreads - 1) /
                        ((hiddenVectors + kBlockThreads - 1) / kBlockThreads) +
                    31) /
                   32 * 32);
}
static_assert(rowThreads(1024) == 512 && rowThreads(640) == 320 && rowThreads(2048) == 512 &&
                  rowThreads(1) == 32 && rowThreads(896) == 448,
              "rows spread over as few warps as kMaxRowVectors allows");

// A row's sum of squares is the same bits however its threads hold it, as long as every warp holds
// 32 consecutive vectors: each vector's squares are summed in element order, each warp's 32 in a
// butterfly, and the row's (at most this many) warp sums two to a lane, then in a butterfly.
constexpr int kMaxRowWarps = kMaxRowVectors * kBlockThreads / 32;
static_assert(kMaxRowWarps <= 64, "two warp sums to a lane");

// The largest thread block cluster every Hopper GPU launches.
constexpr int kMaxRowBlocks = 8;

// The most blocks of a cluster over which the fused one-shot kernel spreads a row of
// `hiddenVectors` vectors for few rows: about kPushVectorsPerBlock vectors each (as push one-shot
// spreads a message of that size), one to a thread. More rows take smaller clusters, so that every
// row still has one.
TPCOMM_PARAMS_HOST_DEVICE constexpr int rowBlocks(uint32_t hiddenVectors) {
  return hiddenVectors <= kPushVectorsPerBlock
             ? 1
             : static_cast<int>(
                   (hiddenVectors + kPushVectorsPerBlock - 1) / kPushVectorsPerBlock < kMaxRowBlocks
                       ? (hiddenVectors + kPushVectorsPerBlock - 1) / kPushVectorsPerBlock
                       : kMaxRowBlocks);
}

// Threads of each block of a cluster of `blocks` blocks that holds a row: rowThreads of the
// block's share of it.
TPCOMM_PARAMS_HOST_DEVICE constexpr int rowClusterThreads(uint32_t hiddenVectors, int blocks) {
  return rowThreads((hiddenVectors + static_cast<uint32_t>(blocks) - 1) /
                    static_cast<uint32_t>(blocks));
}

// The most threads a block of a cluster of `blocks` blocks takes for any row spread over it
// (rowBlocks(hiddenVectors) >= blocks). Not always the largest row's: over 3 blocks, a row of 2048
// vectors takes blocks of 352 threads (two vectors a thread), one of 1536 blocks of 512.
TPCOMM_PARAMS_HOST_DEVICE constexpr int largestRowClusterThreads(int blocks) {
  int most = 0;
  for (uint32_t hv = 1; hv <= static_cast<uint32_t>(kMaxRowVectors * kBlockThreads); ++hv) {
    const int threads = rowClusterThreads(hv, blocks);
    if (rowBlocks(hv) >= blocks && threads > most) most = threads;
  }
  return most;
}

static_assert(largestRowClusterThreads(2) == 512 && largestRowClusterThreads(3) == 512 &&
                  largestRowClusterThreads(8) == 256,
              "over 2 to 4 blocks some row takes blocks of kBlockThreads");

static_assert(rowBlocks(1024) == 8 && rowClusterThreads(1024, 8) == 128 && rowBlocks(640) == 5 &&
                  rowClusterThreads(640, 5) == 128 && rowBlocks(896) == 7 && rowBlocks(2048) == 8 &&
                  rowClusterThreads(2048, 8) == 256 && rowBlocks(1000) == 8 &&
                  rowClusterThreads(1000, 8) == 128 && rowBlocks(100) == 1 &&
                  rowClusterThreads(100, 1) == 128 && rowBlocks(1) == 1 &&
                  rowClusterThreads(1, 1) == 32 && rowClusterThreads(1024, 4) == 256 &&
                  rowClusterThreads(1024, 2) == 512 && rowClusterThreads(2048, 2) == 512 &&
                  rowClusterThreads(640, 3) == 224,
              "rows over clusters of about kPushVectorsPerBlock vectors a block at most");

// The vectors a row takes in each slot of a fused push two-shot launch: its own, then one for its
// inverse RMS (after the slice's rows).
TPCOMM_PARAMS_HOST_DEVICE constexpr size_t twoShotNormRowVectors(size_t hiddenVectors) {
  return hiddenVectors + 1;
}

// The vectors of each slot a fused push two-shot launch of `rows` rows of `hiddenVectors` vectors
// uses (after kSlotDataVector): a slice's rows, each as twoShotNormRowVectors says.
TPCOMM_PARAMS_HOST_DEVICE constexpr size_t twoShotNormSlotVectors(size_t rows, int nranks,
                                                                  size_t hiddenVectors) {
  return (rows + static_cast<size_t>(nranks) - 1) / static_cast<size_t>(nranks) *
         twoShotNormRowVectors(hiddenVectors);
}

struct NormParams {
  const void* residualIn;
  void* residualOut;
  const void* weight;
  void* out;
  const float* scale;  // FP8 output: out = fp8(normalised * weight * (1 / *scale))
  float eps;
  int outType;             // a NormOutput
  uint32_t hidden;         // elements per row, a multiple of the elements of a vector
  uint32_t hiddenVectors;  // 16-byte vectors per row
  size_t rows;
};

// The push kernels fused with the norm: the all-reduce's input is CallParams::input (rows x hidden
// elements, count == rows * hidden); its receive buffers and rotation are those of the push
// protocol of the same shape, so fused and plain calls may follow each other in any order.
struct FusedParams : PushParams {
  NormParams norm;
};

// The norm alone, after an all-reduce made elsewhere: `sum` holds the all-reduced rows.
struct AddNormParams {
  const void* sum;
  NormParams norm;
};

TPCOMM_DEVICE_NAMESPACE_END
