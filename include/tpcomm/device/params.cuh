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
// Two resident blocks per multiprocessor (at most 64 registers a thread) let ranks that share a
// device keep more blocks in flight; the kernels need no more registers than that.
constexpr int kMinBlocksPerSm = 2;

// One barrier set on one rank: peers write inbox[block * kMaxRanks + peer].
constexpr int kInboxWords = kMaxBlocks * kMaxRanks;

enum Algorithm : int { kOneShot = 0, kTwoShot = 1, kNumAlgorithms = 2 };

// Where in an all-reduce a block waits for its peers.
enum BarrierPhase : int {
  kPhaseInputsReady = 0,    // every rank's input is in its staging buffer
  kPhaseSlicesReduced = 1,  // every rank has reduced its slice (two-shot)
  kPhasePeersDone = 2,      // no peer reads this rank's buffers any more
};

enum FailureKind : int {
  kFailureNone = 0,
  kFailureTimeout = 1,       // a wait on a peer ran out
  kFailureUnregistered = 2,  // a zero-copy call ran before its buffers were registered
};

// Where a zero-copy call finds every rank's input. The host fills a slot when the buffers of a
// captured call (or of an eager registration) are registered; until then the slot says so and
// the kernel refuses to run.
enum SlotState : int {
  kSlotUnregistered = 0,
  kSlotPeerInputs = 1,  // read every rank's input where it lies
  kSlotStaging = 2,     // some rank's buffer cannot be shared: copy through staging instead
};

struct SourceSlot {
  int state;
  int reserved;
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

struct FailureContext {
  unsigned int* claim;    // device word of this rank, nonzero once any of its kernels failed
  FailureRecord* record;  // host-mapped
  unsigned long long timeoutNs;
};

// Per-block monotonic barrier counters of one barrier set. Every rank advances epochs[block] by one
// per barrier inside the kernel, so a replayed graph continues where the last launch stopped.
struct BarrierParams {
  uint32_t* inbox[kMaxRanks];  // rank p's inbox words for this set, mapped into this rank
  uint32_t* epochs;            // this rank's counters, kMaxBlocks words
};

struct AllReduceParams {
  const void* input;         // this rank's input (chunk)
  void* output;              // this rank's output (chunk)
  size_t count;              // elements in the chunk
  void* staging[kMaxRanks];  // every rank's staging buffer, mapped into this rank
  void* scratch[kMaxRanks];  // every rank's reduced slice (two-shot)
  BarrierParams barrier;
  FailureContext failure;
  int rank;
  int nranks;
  int inputAligned;        // input is 16-byte aligned
  int outputAligned;       // output is 16-byte aligned
  const SourceSlot* slot;  // null: inputs go through staging
  size_t sourceOffset;     // bytes from each slot input to this chunk
};

TPCOMM_DEVICE_NAMESPACE_END
