// The pieces the push kernels share: data that is its own flag, and the rotation of the three
// receive buffers.
//
// A receive buffer starts out "empty": every 32-bit word holds kEmpty, the bits of -0.0f (for
// 16-bit types, +0 in the low half and -0 in the high half). A sender stores 16-byte vectors into
// its slot of a peer's buffer after scrubbing them (-0 becomes +0, which changes no sum but one of
// zeros that are all -0: +0 where IEEE gives -0, as tpcomm.h says), so no word it stores is ever
// kEmpty; the receiver polls its own memory until no word of a vector is
// kEmpty, and then has the data. Words are compared as bits, never as floating-point values
// (under flush-to-zero a negative subnormal compares equal to -0).
//
// Three buffers rotate: launch e receives into buffer e % 3 and resets the buffer of launch e - 1.
// No peer can write into that buffer again before launch e + 2, which it reaches only after this
// rank's launch e + 1 has sent it data, that is, after launch e (and its reset) has finished here.
// Nor can a peer overwrite buffer e % 3 while this rank reads it: it would have to be at launch
// e + 3.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "tpcomm/device/io.cuh"
#include "tpcomm/device/namespace.cuh"
#include "tpcomm/device/params.cuh"
#include "tpcomm/device/sync.cuh"
#include "tpcomm/device/vec.cuh"

TPCOMM_DEVICE_NAMESPACE_BEGIN

constexpr uint32_t kEmpty = 0x80000000u;

__device__ __forceinline__ uint4 emptyVector() {
  return make_uint4(kEmpty, kEmpty, kEmpty, kEmpty);
}

__device__ __forceinline__ bool isEmpty(const uint4& v) {
  return v.x == kEmpty || v.y == kEmpty || v.z == kEmpty || v.w == kEmpty;
}

__device__ __forceinline__ uint32_t scrubWord(uint32_t w, bool halves) {
  if (!halves) return w == kEmpty ? 0u : w;
  if ((w & 0xffffu) == 0x8000u) w &= 0xffff0000u;
  if ((w >> 16) == 0x8000u) w &= 0x0000ffffu;
  return w;
}

// The vector with every -0 element replaced by +0, so that no word of it is kEmpty.
template <typename T>
__device__ __forceinline__ uint4 scrub(uint4 v) {
  constexpr bool kHalves = sizeof(T) == 2;
  return make_uint4(scrubWord(v.x, kHalves), scrubWord(v.y, kHalves), scrubWord(v.z, kHalves),
                    scrubWord(v.w, kHalves));
}

// A poll of memory a peer writes: never served from L1.
__device__ __forceinline__ uint4 loadPolled(const uint4* at) {
  uint4 v;
  asm volatile("ld.volatile.global.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(at)
               : "memory");
  return v;
}

// Polls vectors v[k] at address(k) (k < kN; a null address is not wanted), which peer peerOf(k)
// sends, until none is empty. Each round loads again every vector that still is, all at once: a
// thread waits one round trip after the last vector arrives, not one round trip per vector it
// waits for.
template <int kN, typename Address, typename PeerOf>
__device__ __forceinline__ bool awaitAllFullFrom(uint4 (&v)[kN], Address address, PeerOf peerOf,
                                                 Patience* patience) {
  for (;;) {
    int waitingFor = -1;
#pragma unroll
    for (int k = 0; k < kN; ++k) {
      const uint4* at = address(k);
      if (at != nullptr && isEmpty(v[k])) {
        v[k] = loadPolled(at);
        waitingFor = peerOf(k);
      }
    }
    if (waitingFor < 0) return true;
    if (!patience->ok(waitingFor)) return false;
  }
}

// awaitAllFull for vectors that one peer sends.
template <int kN, typename Address>
__device__ __forceinline__ bool awaitAllFull(uint4 (&v)[kN], Address address, int peer,
                                             Patience* patience) {
  return awaitAllFullFrom(
      v, address, [peer](int) { return peer; }, patience);
}

// The rank k places after this one in the ring of ranks (0 < k < nranks).
__device__ __forceinline__ int rankAfter(const PushParams& p, int k) {
  return p.rank + k < p.nranks ? p.rank + k : p.rank + k - p.nranks;
}

// The slot sender `sender` owns in receiver `receiver`'s buffer: a receiver has no slot of its own.
__device__ __forceinline__ int peerSlot(int sender, int receiver) {
  return sender < receiver ? sender : sender - 1;
}

// What one launch of a push kernel works with: this rank's buffers of this launch and of the last
// one, where this launch's buffer lies in every rank's region, and the tag vector of the call.
struct PushRound {
  uint32_t buffer;
  uint32_t calls;
  size_t offset;          // of this launch's buffer in every rank's receive region
  uint4* stale;           // this rank's buffer of the last launch, to reset
  uint32_t staleVectors;  // vectors of each of its slots to reset
  uint4 tag;              // the call's tag and this launch's number: no word is ever kEmpty
};

// Called before the wait for the previous kernel, while that kernel still runs: thread 0 of the
// block prefetches the lines the launch reads first (its rotation entry, the rank's failure word,
// its receive region) into L2, and so loads the parameters that form their addresses before the
// wait as well. Push one-shot, bf16, graph, 2 H200s: 8 B 2.98 -> 2.86 us, 8 KB 3.04 -> 2.97, 1 MB
// 6.62 -> 6.54; push two-shot 32 MB 101.3 -> 100.8. Lane 0 of every warp prefetching instead made
// 2 MB 10.1 -> 11.8 us, presumably as thousands of requests for the same three lines. The fused
// one-shot kernel, 1 to 64 rows of 8192 and of 5120: 0.06-0.1 us faster with it, three runs each
// (an earlier A/B had up to 16 rows 0.04-0.1 us slower, 32 and 64 faster).
__device__ __forceinline__ void prefetchLaunch(const PushParams& p) {
  if (threadIdx.x != 0) return;
  prefetchL2(p.state + blockIdx.x);
  prefetchL2(p.failure.claims[p.rank]);
  prefetchL2(p.receive[p.rank]);
}

__device__ __forceinline__ PushRound beginRound(const PushParams& p) {
  const uint4 entry = __ldcg(reinterpret_cast<const uint4*>(p.state + blockIdx.x));
  PushRound round;
  round.buffer = entry.x;
  round.staleVectors = entry.y;
  round.calls = entry.z;
  round.offset = round.buffer * p.bufferBytes;
  round.stale =
      reinterpret_cast<uint4*>(p.receive[p.rank] + ((round.buffer + 2) % 3) * p.bufferBytes);
  round.tag = make_uint4(p.tag & 0x7fffffffu, round.calls & 0x7fffffffu, (p.tag * 2654435761u) >> 1,
                         static_cast<uint32_t>(p.count) & 0x7fffffffu);
  return round;
}

// Vector v of slot `slot` of rank r's buffer of this launch.
__device__ __forceinline__ uint4* slotVector(const PushParams& p, const PushRound& round, int r,
                                             int slot, size_t v) {
  return reinterpret_cast<uint4*>(p.receive[r] + round.offset) +
         static_cast<size_t>(slot) * p.slotVectors + v;
}

// Data vector i of slot `slot` of rank r's buffer of this launch.
__device__ __forceinline__ uint4* slotData(const PushParams& p, const PushRound& round, int r,
                                           int slot, size_t i) {
  return slotVector(p, round, r, slot, kSlotDataVector + i);
}

// Data vector i of the slot this rank fills in rank `peer`'s buffer of this launch: push
// one-shot's data, a two-shot launch's reduce-scatter share.
__device__ __forceinline__ uint4* sentSlotData(const PushParams& p, const PushRound& round,
                                               int peer, size_t i) {
  return slotData(p, round, peer, peerSlot(p.rank, peer), i);
}

// Data vector i of the slot rank `sender` fills in this rank's buffer of this launch.
__device__ __forceinline__ uint4* receivedSlotData(const PushParams& p, const PushRound& round,
                                                   int sender, size_t i) {
  return slotData(p, round, p.rank, peerSlot(sender, p.rank), i);
}

// Data vector i of the all-gather slot that `owner` fills in rank r's buffer of a two-shot launch:
// the reduce-scatter's nranks - 1 slots come first.
__device__ __forceinline__ uint4* gatherSlotData(const PushParams& p, const PushRound& round, int r,
                                                 int owner, size_t i) {
  return slotData(p, round, r, p.nranks - 1 + peerSlot(owner, r), i);
}

// Where rank `sender` leaves the call's tag in rank r's buffer of this launch: vector 0 of the
// (first) slot it fills there, whose data starts at kSlotDataVector.
__device__ __forceinline__ uint4* tagVector(const PushParams& p, const PushRound& round, int r,
                                            int sender) {
  return slotVector(p, round, r, peerSlot(sender, r), 0);
}

// Block 0 leaves the call's tag in every peer's buffer.
__device__ __forceinline__ void sendTags(const PushParams& p, const PushRound& round) {
  const int peer = static_cast<int>(threadIdx.x);
  if (blockIdx.x == 0 && peer < p.nranks && peer != p.rank) {
    *tagVector(p, round, peer, p.rank) = round.tag;
  }
}

// Where sender `sender` left its tag in this rank's buffer of this launch.
__device__ __forceinline__ const uint4* tagFrom(const PushParams& p, const PushRound& round,
                                                int sender) {
  return tagVector(p, round, p.rank, sender);
}

__device__ __forceinline__ bool sameTag(const uint4& a, const uint4& b) {
  return a.x == b.x && a.y == b.y && a.z == b.z && a.w == b.w;
}

// The peers' tags of a launch, polled all at once: one peer's at a time would cost a round trip to
// memory per peer after the first (4 H200s, push one-shot, 8 B: 4.16 us at four ranks, 3.32 with
// every tag at once; 3.40 and 3.15 at three).
template <int kRanks>
struct PeerTags {
  uint4 seen[kRanks - 1];  // seen[j]: the tag of peer(j), the j-th rank after this one
  bool waiting = false;

  // rankAfter(p, j + 1), written out: as that call it changed the code ptxas emitted (push
  // one-shot at eight ranks, bf16: 104 -> 118 registers; push two-shot split by role spilled).
  __device__ __forceinline__ static int peer(const PushParams& p, int j) {
    return p.rank + 1 + j < p.nranks ? p.rank + 1 + j : p.rank + 1 + j - p.nranks;
  }
  // Issues the first load of every peer's tag.
  __device__ __forceinline__ void start(const PushParams& p, const PushRound& round) {
    waiting = true;
#pragma unroll
    for (int j = 0; j < kRanks - 1; ++j) {
      if (j < p.nranks - 1) seen[j] = loadPolled(tagFrom(p, round, peer(p, j)));
    }
  }
  // One round of polling: loads again every tag still empty (*waitingFor: one of their peers) and
  // compares those that arrived with this rank's. False, with the mismatch recorded, once a peer
  // made another call at this point: a thread that checks before it sums never mixes that peer's
  // data into this call.
  __device__ __forceinline__ bool poll(const PushParams& p, const PushRound& round, int algorithm,
                                       int* waitingFor) {
    if (!waiting) return true;
    waiting = false;
#pragma unroll
    for (int j = 0; j < kRanks - 1; ++j) {
      if (j >= p.nranks - 1) continue;
      if (isEmpty(seen[j])) {
        seen[j] = loadPolled(tagFrom(p, round, peer(p, j)));
        *waitingFor = peer(p, j);
        waiting = true;
      } else if (!sameTag(seen[j], round.tag)) {
        recordFailure(p.failure, kFailureMismatch,
                      WaitSite{p.rank, peer(p, j), kPhasePushData, algorithm}, 0);
        return false;
      }
    }
    return true;
  }
};

// Waits for every peer's tag in this rank's buffer, once `tags` started loading them, and compares
// each with this rank's. False once a wait or a comparison fails.
template <int kRanks>
__device__ __forceinline__ bool awaitTags(const PushParams& p, const PushRound& round,
                                          PeerTags<kRanks>& tags, Patience* patience,
                                          int algorithm) {
  for (;;) {
    int waitingFor = -1;
    if (!tags.poll(p, round, algorithm, &waitingFor)) return false;
    if (waitingFor < 0) return true;
    if (!patience->ok(waitingFor)) return false;
  }
}

// The most cycles a staggered poll (pollStaggered, gatherTwoRanksStaggered) waits between its two
// loads of a vector.
constexpr long long kMaxStaggerCycles = 2048;

// Until the vector at `at`, which rank `peer` stores, is no longer empty (*seen), polled as
// gatherTwoRanksStaggered polls its vector: two loads in flight, the second about half a round
// trip behind the first. False once the wait fails. gatherTwoRanksStaggered keeps its own copy of
// this loop: calling this one instead (the same logic) changed the code ptxas emitted around it,
// and push one-shot then took 512 B to 1 MB 0.02-0.14 us longer than before any tag was polled
// staggered, the fused one-shot kernel 8 to 64 rows of 8192 0.07-0.15 us (2 H200s, graph, bf16,
// medians of three A/B runs).
__device__ __forceinline__ bool pollStaggered(const uint4* at, int peer, Patience* patience,
                                              uint4* seen) {
  const long long issued = clock64();
  uint4 early = loadPolled(at);
  if (!isEmpty(early)) {
    *seen = early;
    return true;
  }
  long long half = (clock64() - issued) / 2;
  if (half > kMaxStaggerCycles) half = kMaxStaggerCycles;
  early = loadPolled(at);
  const long long reissued = clock64();
  while (clock64() - reissued < half) {
  }
  uint4 late = loadPolled(at);
  for (;;) {
    if (!isEmpty(early)) {
      *seen = early;
      return true;
    }
    early = loadPolled(at);
    if (!isEmpty(late)) {
      *seen = late;
      return true;
    }
    late = loadPolled(at);
    if (!patience->ok(peer)) return false;
  }
}

// awaitTags from the first load on.
template <int kRanks>
__device__ __forceinline__ bool checkTags(const PushParams& p, const PushRound& round,
                                          Patience* patience, int algorithm) {
  PeerTags<kRanks> tags;
  tags.start(p, round);
  return awaitTags(p, round, tags, patience, algorithm);
}

// checkTags for the one thread that checks the tags apart (checksTags): at two ranks the peer's
// tag is polled staggered, as the data is. 2 H200s, graph, bf16, medians of three A/B runs
// against checkTags (us): push one-shot 8 B 2.24 -> 2.22, 4 KB 2.34 -> 2.30, 32 KB 2.72 -> 2.64,
// 64 KB 2.94 -> 2.85, 256 KB 3.58 -> 3.52, 1 MB 5.97 -> 5.94; the fused one-shot kernel, 4 rows
// of 8192 3.32 -> 3.28, 8 rows of 5120 3.44 -> 3.38, 1 and 2 rows the same. Where many threads
// check (fused two-shot) staggered polls made 128 to 512 rows 0.03-0.1 us slower.
template <int kRanks>
__device__ __forceinline__ bool checkTagsApart(const PushParams& p, const PushRound& round,
                                               Patience* patience, int algorithm) {
  if (kRanks != 2 || p.nranks != 2) return checkTags<kRanks>(p, round, patience, algorithm);
  const int peer = 1 - p.rank;
  uint4 tag;
  if (!pollStaggered(tagFrom(p, round, peer), peer, patience, &tag)) return false;
  if (sameTag(tag, round.tag)) return true;
  recordFailure(p.failure, kFailureMismatch, WaitSite{p.rank, peer, kPhasePushData, algorithm}, 0);
  return false;
}

// The thread that checks the peers' tags of a push one-shot launch whose tags are checked apart
// (at two ranks, one that gives no thread more than one vector; beyond, one of at most
// kTagsApartVectors vectors): the grid's last, which holds none of the vectors of a small launch
// on kPushMinBlocks blocks or more (else it checks them with its first batch, at two ranks after
// it). The threads that gather the data poll no tag line beside their vectors and store their
// sums without waiting for the check. A peer that made another call still fails the call and the
// communicator, as the tag check of every other launch does; what the call wrote is then as
// unusable as after a timeout. In other launches every gathering thread checks the tags with its
// first batch.
__device__ __forceinline__ bool checksTags() {
  return blockIdx.x == gridDim.x - 1 && threadIdx.x == blockDim.x - 1;
}

// Push one-shot, graph, bf16, us, every gathering thread checking the tags / one thread apart:
// 2 H200s 8 B 2.87 / 2.74, 1 KB 2.86 / 2.68, 4 KB 2.92 / 2.77, 8 KB 2.93 / 2.81, 16 KB 2.97 /
// 2.93; 4 H200s 8 B 3.33 / 2.99, 1 KB 3.29 / 2.84, 16 KB 3.52 / 3.18. With one thread apart at
// every size, two ranks took 32 KB from 3.02 to 3.08 us and 64 KB from 3.19 to 3.23, and the fused
// one-shot kernel 0.15 us longer at 1 to 32 rows of 8192; why more threads gathering without a tag
// poll take longer is not known, so larger launches keep the check in every thread. At two ranks
// the staggered polls turned that around (gatherTwoRanksStaggered).
constexpr size_t kTagsApartVectors = 1024;

// Empties the first `round.staleVectors` vectors of each of `slots` slots of the last launch's
// buffer, walking them as `s` says (by default the whole grid).
__device__ __forceinline__ void resetStale(const PushParams& p, const PushRound& round, int slots,
                                           const Stride& s = Stride()) {
  for (int slot = 0; slot < slots; ++slot) {
    uint4* base = round.stale + static_cast<size_t>(slot) * p.slotVectors;
    for (size_t v = s.first; v < round.staleVectors; v += s.step) base[v] = emptyVector();
  }
}

// Ends a block's part of the launch: the rotation moves on for the next launch, which uses this
// launch's vectors per slot to reset its buffer. A block in which a wait failed does not: the rank
// has failed, and its later launches do nothing.
__device__ __forceinline__ void endRound(const PushParams& p, const PushRound& round,
                                         uint32_t usedVectors, bool ok) {
  if (__syncthreads_or(!ok)) return;
  const uint4 next = make_uint4((round.buffer + 1) % 3, usedVectors, round.calls + 1, 0);
  for (unsigned e = blockIdx.x + threadIdx.x * gridDim.x; e < kMaxPushBlocks;
       e += blockDim.x * gridDim.x) {
    reinterpret_cast<uint4*>(p.state)[e] = next;
  }
}

// Gathers, for each slot position from + u * step (u < kBatch) below `length`, every rank's
// contribution: the peers' vectors from this rank's buffer of this launch, waiting for those that
// have not arrived, and this rank's own scrubbed input at element vector `input` + position.
//
// The first batch a thread gathers also checks every peer's tag (PeerTags), polled with the
// vectors. False once a wait or the tag check fails.
template <typename T, int kRanks, int kBatch>
__device__ __forceinline__ bool gatherRanks(const PushParams& p, const PushRound& round,
                                            size_t from, size_t step, size_t length, size_t input,
                                            int algorithm, Patience* patience, bool* tagsChecked,
                                            uint4 (&in)[kBatch][kRanks]) {
  auto polled = [&](int u, int r) {
    return from + u * step < length && r < p.nranks && r != p.rank;
  };
  auto slot = [&](int u, int r) { return receivedSlotData(p, round, r, from + u * step); };
  PeerTags<kRanks> tags;
  if (!*tagsChecked && from < length) {
    *tagsChecked = true;
    tags.start(p, round);
  }
#pragma unroll
  for (int u = 0; u < kBatch; ++u) {
    const size_t i = from + u * step;
#pragma unroll
    for (int r = 0; r < kRanks; ++r) {
      if (i >= length || r >= p.nranks) continue;
      in[u][r] = r == p.rank
                     ? scrub<T>(asRaw(loadInput<T>(p.input, input + i, p.count, p.inputAligned)))
                     : loadPolled(slot(u, r));
    }
  }
  for (;;) {
    int waitingFor = -1;
    if (!tags.poll(p, round, algorithm, &waitingFor)) return false;
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
#pragma unroll
      for (int r = 0; r < kRanks; ++r) {
        if (polled(u, r) && isEmpty(in[u][r])) {
          in[u][r] = loadPolled(slot(u, r));
          waitingFor = r;
        }
      }
    }
    if (waitingFor < 0) return true;
    if (!patience->ok(waitingFor)) return false;
  }
}

// gatherRanks at two ranks for one vector i (< the launch's vectors) of a push one-shot launch
// whose tags one thread checks: in[r] is rank r's contribution, this rank's own from its input.
// While the peer's vector is empty, two loads of it are in flight, the second about half a round
// trip behind the first (the first load's own round trip, measured), so that the vector is seen a
// quarter of a round trip sooner on average after it lands. What arrived is taken from the load
// that saw it, never from a register another load is still in flight to.
//
// 2 H200s, graph, bf16, medians of three A/B runs (us, one load in flight / two): 8 B 2.79 / 2.18,
// 1 KB 2.72 / 2.23, 4 KB 2.85 / 2.29, 16 KB 2.96 / 2.45. That is more than a quarter of any round
// trip to L2: a single load in flight presumably sees the arriving line late for a reason of the
// memory system's own, not looked into. With the tags checked apart as well, launches of up to
// 1 MB (one vector a thread) gain 0.26-0.51 us (launchPush) and the fused one-shot kernel's rows
// over clusters 0.26-0.85 us (gatherRowVector). Not measured in the kernels that gather several
// vectors a thread. The same wait for every peer at three and four ranks was 0.3-1.0 us slower
// (4 H200s), and as general code for any number of ranks 0.05-0.27 us slower at two.
template <typename T>
__device__ __forceinline__ bool gatherTwoRanksStaggered(const PushParams& p, const PushRound& round,
                                                        size_t i, Patience* patience,
                                                        uint4 (&in)[2]) {
  const int peer = 1 - p.rank;
  const uint4* at = receivedSlotData(p, round, peer, i);
  const long long issued = clock64();
  const uint4 own = scrub<T>(asRaw(loadInput<T>(p.input, i, p.count, p.inputAligned)));
  uint4 early = loadPolled(at);
  uint4 theirs = early;
  if (isEmpty(early)) {
    long long half = (clock64() - issued) / 2;
    if (half > kMaxStaggerCycles) half = kMaxStaggerCycles;
    early = loadPolled(at);
    const long long reissued = clock64();
    while (clock64() - reissued < half) {
    }
    uint4 late = loadPolled(at);
    for (;;) {
      if (!isEmpty(early)) {
        theirs = early;
        break;
      }
      early = loadPolled(at);
      if (!isEmpty(late)) {
        theirs = late;
        break;
      }
      late = loadPolled(at);
      if (!patience->ok(peer)) return false;
    }
  }
  in[0] = p.rank == 0 ? own : theirs;
  in[1] = p.rank == 0 ? theirs : own;
  return true;
}

// Vectors of one thread a push kernel handles at a time: enough loads and stores in flight to
// cover the latency of memory and of the link, in registers that do not spill.
template <int kRanks>
__host__ __device__ constexpr int pushBatch() {
  return kRanks <= 2 ? 4 : (kRanks <= 4 ? 2 : 1);
}

TPCOMM_DEVICE_NAMESPACE_END
