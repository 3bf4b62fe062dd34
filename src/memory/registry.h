// The buffers zero-copy all-reduces read in place, and the device slots that tell the kernels
// where every rank's buffer lies.
//
// A call captured into a CUDA graph takes the next slot, in call order, and its kernel reads the
// ranks' inputs through that slot. tpcCommRegisterGraphBuffers then fills every slot taken since
// the last registration: each rank exports the allocations of its recorded inputs, peers map each
// allocation once, and every slot gets the ranks' inputs as this rank sees them. Ranks match
// calls by their order, never by address, so they may allocate differently. An eagerly registered
// buffer (tpcCommRegister) holds a slot of its own; a call whose input lies in it reads every
// rank's registered buffer at the same offset.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "bootstrap/bootstrap.h"
#include "memory/peer_memory.h"
#include "tpcomm/device/params.cuh"
#include "tpcomm/tpcomm.h"

namespace tpcomm {

// One buffer whose slot is being filled.
struct SlotRequest {
  uint32_t slot;
  const void* input;
  size_t bytes;
};

// What rank r says about its request k, once exported: which export holds it, at what offset.
struct ExportedRequest {
  int32_t exportIndex;  // -1: this rank's buffer cannot be shared
  uint32_t aligned;     // 16-byte aligned: the kernels read in place only aligned buffers
  uint64_t offset;      // from the export's address
};

// The exports of a list of requests, one per allocation: many captured calls share an allocation
// (a caching allocator's block), and each allocation is exported and mapped once. Pure
// bookkeeping, so that it can be tested without a GPU.
struct ExportPlan {
  std::vector<ExportedBuffer> exports;
  std::vector<ExportedRequest> requests;
  std::vector<int> fds;  // VMM segment descriptors of every export, in order
  std::string firstProblem;

  // Adds `request`, reusing an export whose allocation already contains it.
  void add(const SlotRequest& request, const ExportedBuffer& exported, std::vector<int> segmentFds,
           const std::string& whyNot);
  std::string serialize() const;
  // False when `blob` is not a serialized plan.
  bool parse(const std::string& blob);
  // Descriptors of export e within `fds`: where they start.
  size_t fdOffset(size_t e) const;
};

class Registry {
 public:
  Registry() = default;
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;
  ~Registry() { release(); }

  // Allocates the slot table on the current device, every slot unregistered. Peers in this
  // process on this rank's device are read through their own pointers; peers in this process on
  // other devices too, except cuMem memory, which is mapped for this device like another
  // process's.
  tpcResult_t init(int rank, int nranks, int capacity, const std::vector<bool>& sameProcess,
                   const std::vector<bool>& sameDevice);

  // During capture: the slot of the next captured call, recorded for the next registration;
  // -1 when every slot is taken.
  int reserveGraphSlot(const void* input, size_t bytes);
  const device::SourceSlot* deviceSlot(int slot) const { return slots_ + slot; }
  // Changes each time the slot is taken: a call records it, and its kernel fails if the slot has
  // since been given to another registration.
  uint32_t generation(int slot) const { return generations_[slot]; }
  size_t pendingGraphCalls() const { return pending_.size(); }

  // Collective: fills the slots of every call captured since the last registration. Where ranks
  // captured different numbers of calls, every rank drops them; on other failures they stay
  // pending, for another attempt.
  tpcResult_t registerGraphBuffers(Bootstrap& bootstrap);
  // Collective: registers `bytes` at `ptr` for eager zero-copy calls. Every rank must register
  // as many bytes (calls read every rank's buffer at the same offsets).
  tpcResult_t registerBuffer(Bootstrap& bootstrap, void* ptr, size_t bytes, uint64_t* handle);
  // Collective: forgets a registration and releases its peer mappings.
  tpcResult_t deregister(Bootstrap& bootstrap, uint64_t handle);
  // The slot of a registered buffer holding the `bytes` at `input`, and the offset of `input`
  // in it; false when no registered buffer holds them.
  bool findRegistered(const void* input, size_t bytes, int* slot, size_t* offset) const;

  size_t tableBytes() const { return static_cast<size_t>(capacity_) * sizeof(device::SourceSlot); }
  size_t mappedBytes() const { return peers_.mappedBytes(); }
  int slotsUsed() const { return capacity_ - static_cast<int>(free_.size()); }
  // Registered slots whose calls copy through staging.
  int slotsStaged() const { return staged_; }
  int capacity() const { return capacity_; }
  void release();

 private:
  struct Registration {
    uint64_t id;
    const char* base;
    size_t bytes;
    int slot;
    std::vector<uint64_t> refs;
  };

  int takeSlot();
  // Exports, exchanges and maps the requests' buffers (as many on every rank, matched by their
  // order) and writes their slots; the peer mappings it opened go to *refs.
  tpcResult_t fill(Bootstrap& bootstrap, const std::vector<SlotRequest>& requests,
                   std::vector<uint64_t>* refs);

  int rank_ = 0;
  int nranks_ = 0;
  int capacity_ = 0;
  std::vector<bool> sameProcess_;
  std::vector<bool> sameDevice_;
  std::vector<uint32_t> generations_;    // by slot
  device::SourceSlot* slots_ = nullptr;  // device memory
  std::vector<int> free_;                // free slots, the lowest last
  std::vector<bool> stagedSlot_;         // by slot: registered, but copying through staging
  int staged_ = 0;
  std::vector<SlotRequest> pending_;  // captured calls awaiting registration
  std::vector<uint64_t> graphRefs_;   // peer mappings of registered graph calls
  std::vector<Registration> registrations_;
  uint64_t nextId_ = 1;
  PeerMemory peers_;
};

}  // namespace tpcomm
