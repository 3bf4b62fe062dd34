#include "memory/registry.h"

#include <unistd.h>

#include <cstring>
#include <utility>

#include "common/error.h"

namespace tpcomm {
namespace {

template <typename T>
void append(std::string* blob, const T& value) {
  blob->append(reinterpret_cast<const char*>(&value), sizeof(value));
}

template <typename T>
bool take(const std::string& blob, size_t* at, T* value) {
  if (*at + sizeof(T) > blob.size()) return false;
  std::memcpy(value, blob.data() + *at, sizeof(T));
  *at += sizeof(T);
  return true;
}

}  // namespace

void ExportPlan::add(const SlotRequest& request, const ExportedBuffer& exported,
                     std::vector<int> segmentFds, const std::string& whyNot) {
  const uint64_t input = reinterpret_cast<uint64_t>(request.input);
  ExportedRequest r{-1, input % 16 == 0, 0};
  if (exported.kind == MemoryKind::kUnshareable) {
    if (firstProblem.empty()) firstProblem = whyNot;
    requests.push_back(r);
    return;
  }
  for (size_t e = 0; e < exports.size(); ++e) {
    const ExportedBuffer& x = exports[e];
    if (x.kind == exported.kind && x.base == exported.base && x.spanBytes == exported.spanBytes) {
      for (int fd : segmentFds) close(fd);  // already on their way with the first export
      r.exportIndex = static_cast<int32_t>(e);
      r.offset = input - x.base;
      requests.push_back(r);
      return;
    }
  }
  ExportedBuffer x = exported;
  x.address = x.base;  // peers map the whole allocation; requests add their offsets
  r.exportIndex = static_cast<int32_t>(exports.size());
  r.offset = input - x.base;
  exports.push_back(x);
  fds.insert(fds.end(), segmentFds.begin(), segmentFds.end());
  requests.push_back(r);
}

std::string ExportPlan::serialize() const {
  std::string blob;
  append(&blob, static_cast<uint32_t>(exports.size()));
  for (const ExportedBuffer& e : exports) append(&blob, e);
  append(&blob, static_cast<uint32_t>(requests.size()));
  for (const ExportedRequest& r : requests) append(&blob, r);
  return blob;
}

bool ExportPlan::parse(const std::string& blob) {
  size_t at = 0;
  uint32_t n = 0;
  if (!take(blob, &at, &n)) return false;
  exports.resize(n);
  for (ExportedBuffer& e : exports) {
    if (!take(blob, &at, &e) || e.segments > kMaxVmmSegments) return false;
  }
  if (!take(blob, &at, &n)) return false;
  requests.resize(n);
  for (ExportedRequest& r : requests) {
    if (!take(blob, &at, &r) || r.exportIndex >= static_cast<int32_t>(exports.size())) {
      return false;
    }
  }
  return at == blob.size();
}

size_t ExportPlan::fdOffset(size_t e) const {
  size_t offset = 0;
  for (size_t i = 0; i < e; ++i) {
    if (exports[i].kind == MemoryKind::kVmm) offset += exports[i].segments;
  }
  return offset;
}

tpcResult_t Registry::init(int rank, int nranks, int capacity, const std::vector<bool>& sameProcess,
                           const std::vector<bool>& sameDevice) {
  rank_ = rank;
  nranks_ = nranks;
  capacity_ = capacity;
  sameProcess_ = sameProcess;
  sameDevice_ = sameDevice;
  void* p = nullptr;
  TPC_CUDA_CHECK(cudaMalloc(&p, tableBytes()));
  slots_ = static_cast<device::SourceSlot*>(p);
  TPC_CUDA_CHECK(cudaMemset(slots_, 0, tableBytes()));  // every slot unregistered
  TPC_CUDA_CHECK(cudaDeviceSynchronize());
  free_.clear();
  for (int s = capacity - 1; s >= 0; --s) free_.push_back(s);
  stagedSlot_.assign(capacity, false);
  generations_.assign(capacity, 0);
  staged_ = 0;
  return tpcSuccess;
}

int Registry::takeSlot() {
  if (free_.empty()) return -1;
  const int slot = free_.back();
  free_.pop_back();
  ++generations_[slot];
  return slot;
}

int Registry::reserveGraphSlot(const void* input, size_t bytes) {
  const int slot = takeSlot();
  if (slot >= 0) pending_.push_back(SlotRequest{static_cast<uint32_t>(slot), input, bytes});
  return slot;
}

namespace {

// Descriptors received from peers that no mapping has taken yet; closed when the registration
// ends, however it ends.
class ReceivedFds {
 public:
  ReceivedFds() = default;
  ReceivedFds(const ReceivedFds&) = delete;
  ReceivedFds& operator=(const ReceivedFds&) = delete;
  ~ReceivedFds() {
    for (std::vector<int>& rank : fds_) {
      for (int fd : rank) {
        if (fd >= 0) close(fd);
      }
    }
  }
  std::vector<std::vector<int>>* all() { return &fds_; }
  // The `count` descriptors of rank r from `offset`, now the caller's to close.
  std::vector<int> take(int r, size_t offset, size_t count) {
    std::vector<int> out;
    for (size_t i = offset; i < offset + count && i < fds_[r].size(); ++i) {
      out.push_back(std::exchange(fds_[r][i], -1));
    }
    return out;
  }

 private:
  std::vector<std::vector<int>> fds_;
};

}  // namespace

tpcResult_t Registry::fill(Bootstrap& bootstrap, const std::vector<SlotRequest>& requests,
                           std::vector<uint64_t>* refs) {
  ExportPlan mine;
  tpcResult_t exported = tpcSuccess;
  for (const SlotRequest& request : requests) {
    ExportedBuffer e;
    std::vector<int> fds;
    std::string whyNot;
    exported = exportBuffer(request.input, request.bytes, &e, &fds, &whyNot);
    if (exported != tpcSuccess) break;
    mine.add(request, e, std::move(fds), whyNot);
  }
  const tpcResult_t agreed = bootstrap.agree(exported, "exporting its buffers");
  if (agreed != tpcSuccess) {
    for (int fd : mine.fds) close(fd);
    return agreed;
  }
  std::vector<std::string> blobs;
  const tpcResult_t gathered = bootstrap.allGather(mine.serialize(), &blobs);
  ReceivedFds fds;
  const tpcResult_t passed =
      gathered == tpcSuccess ? bootstrap.allGatherFds(mine.fds, fds.all()) : gathered;
  for (int fd : mine.fds) close(fd);  // the peers hold their own copies now
  TPC_CHECK(passed);

  // Map every peer's exports; one that cannot be mapped leaves its calls on staging. A peer in
  // this process on this device is read through its own pointers, and so is cudaMalloc memory of
  // one on another device (peer access is on between them); its cuMem memory needs a mapping
  // that gives this device access, as another process's does.
  std::vector<ExportPlan> plans(nranks_);
  std::vector<std::vector<const char*>> mapped(nranks_);
  for (int r = 0; r < nranks_; ++r) {
    if (!plans[r].parse(blobs[r])) {
      return fail(tpcInternalError, "rank %d: rank %d's export plan did not parse", rank_, r);
    }
    mapped[r].assign(plans[r].exports.size(), nullptr);
    for (size_t e = 0; e < plans[r].exports.size(); ++e) {
      const ExportedBuffer& x = plans[r].exports[e];
      const bool direct =
          r == rank_ || sameDevice_[r] || (sameProcess_[r] && x.kind == MemoryKind::kLegacyIpc);
      std::vector<int> segmentFds = x.kind == MemoryKind::kVmm
                                        ? fds.take(r, plans[r].fdOffset(e), x.segments)
                                        : std::vector<int>();
      if (direct) {
        for (int fd : segmentFds) {
          if (fd >= 0) close(fd);
        }
        mapped[r][e] = reinterpret_cast<const char*>(x.address);
        continue;
      }
      uint64_t ref = 0;
      if (segmentFds.size() == x.segments &&
          peers_.open(r, x, segmentFds.data(), &mapped[r][e], &ref) == tpcSuccess) {
        refs->push_back(ref);
      } else {
        mapped[r][e] = nullptr;
        TPC_INFO("rank %d: a buffer of rank %d stays unmapped; its calls copy through staging",
                 rank_, r);
      }
    }
  }

  // A slot reads in place only if every rank can: agree on it call by call.
  std::string usable(requests.size(), '1');
  for (size_t k = 0; k < requests.size(); ++k) {
    for (int r = 0; r < nranks_; ++r) {
      const ExportedRequest& q = plans[r].requests[k];
      if (q.exportIndex < 0 || !q.aligned || mapped[r][q.exportIndex] == nullptr) usable[k] = '0';
    }
  }
  std::vector<std::string> verdicts;
  TPC_CHECK(bootstrap.allGather(usable, &verdicts));
  size_t staged = 0;
  for (size_t k = 0; k < requests.size(); ++k) {
    device::SourceSlot slot{};
    slot.state = device::kSlotPeerInputs;
    slot.generation = generations_[requests[k].slot];
    for (int r = 0; r < nranks_; ++r) {
      if (verdicts[r][k] != '1') slot.state = device::kSlotStaging;
    }
    if (slot.state == device::kSlotPeerInputs) {
      for (int r = 0; r < nranks_; ++r) {
        const ExportedRequest& q = plans[r].requests[k];
        slot.input[r] = r == rank_ ? requests[k].input : mapped[r][q.exportIndex] + q.offset;
      }
    } else if (!stagedSlot_[requests[k].slot]) {
      ++staged;
      stagedSlot_[requests[k].slot] = true;
      ++staged_;
    }
    TPC_CUDA_CHECK(cudaMemcpyAsync(slots_ + requests[k].slot, &slot, sizeof(slot),
                                   cudaMemcpyHostToDevice, cudaStreamLegacy));
  }
  // The slots are in place when this returns: a graph launched next on a non-blocking stream
  // would not wait for the copies (nor would it for cudaMemcpy's, which may still be on their way
  // from pageable memory when it returns).
  TPC_CUDA_CHECK(cudaStreamSynchronize(cudaStreamLegacy));
  if (staged > 0) {
    TPC_INFO("rank %d: %zu of %zu registered calls copy through staging%s%s", rank_, staged,
             requests.size(), mine.firstProblem.empty() ? "" : ": ", mine.firstProblem.c_str());
  }
  return tpcSuccess;
}

tpcResult_t Registry::registerGraphBuffers(Bootstrap& bootstrap) {
  // Ranks match captured calls by their order, so every rank must bring as many. Where they do
  // not, a capture that never became a graph may hold a slot on some rank (invalidated after its
  // call, or ended and dropped): no later attempt could pair the calls, so every rank drops them
  // all, and their graphs fail as unregistered if launched.
  std::vector<std::string> counts;
  TPC_CHECK(bootstrap.allGather(std::to_string(pending_.size()), &counts));
  for (int r = 0; r < nranks_; ++r) {
    if (counts[r] == counts[rank_]) continue;
    for (const SlotRequest& request : pending_) free_.push_back(static_cast<int>(request.slot));
    pending_.clear();
    return fail(tpcInvalidUsage,
                "rank %d: ranks disagree on the calls to register: rank %d captured %s, rank %d "
                "%s since the last registration (every rank must capture the same calls in the "
                "same order); these calls are dropped on every rank: capture them again",
                rank_, rank_, counts[rank_].c_str(), r, counts[r].c_str());
  }
  std::vector<uint64_t> refs;
  const tpcResult_t res = fill(bootstrap, pending_, &refs);
  if (res != tpcSuccess) {
    // The captured calls keep their slots and stay pending for another attempt.
    for (uint64_t ref : refs) peers_.release(ref);
    return res;
  }
  graphRefs_.insert(graphRefs_.end(), refs.begin(), refs.end());
  pending_.clear();
  return tpcSuccess;
}

tpcResult_t Registry::registerBuffer(Bootstrap& bootstrap, void* ptr, size_t bytes,
                                     uint64_t* handle) {
  // A call finds the registration that holds its input, the first if several did: ranks whose
  // registrations overlap differently would read their peers' buffers through different ones.
  const char* begin = static_cast<const char*>(ptr);
  bool overlaps = false;
  for (const Registration& reg : registrations_) {
    overlaps = overlaps || (begin < reg.base + reg.bytes && reg.base < begin + bytes);
  }
  const int slot = overlaps ? -1 : takeSlot();
  // Every rank must take part in the exchange, even one that refuses the buffer.
  std::vector<std::string> offers;
  TPC_CHECK(bootstrap.allGather(overlaps    ? std::string("overlap")
                                : slot >= 0 ? std::to_string(bytes)
                                            : std::string("-"),
                                &offers));
  for (int r = 0; r < nranks_; ++r) {
    tpcResult_t res = tpcSuccess;
    if (offers[r] == "overlap") {
      res = fail(tpcInvalidUsage,
                 "rank %d: rank %d registers a buffer that overlaps one it registered before; "
                 "deregister that one first",
                 rank_, r);
    } else if (offers[r] == "-") {
      res = fail(tpcInvalidUsage, "rank %d: rank %d has no free slot for another registration",
                 rank_, r);
    } else if (offers[r] != std::to_string(bytes)) {
      res = fail(tpcInvalidUsage,
                 "rank %d: ranks register buffers of different sizes (%zu bytes here, %s on rank "
                 "%d); calls read every rank's buffer at the same offsets",
                 rank_, bytes, offers[r].c_str(), r);
    }
    if (res != tpcSuccess) {
      if (slot >= 0) free_.push_back(slot);
      return res;
    }
  }
  Registration reg{nextId_++, static_cast<const char*>(ptr), bytes, slot, {}};
  const tpcResult_t res =
      fill(bootstrap, {SlotRequest{static_cast<uint32_t>(slot), ptr, bytes}}, &reg.refs);
  if (res != tpcSuccess) {
    for (uint64_t ref : reg.refs) peers_.release(ref);
    free_.push_back(slot);
    return res;
  }
  *handle = reg.id;
  registrations_.push_back(std::move(reg));
  return tpcSuccess;
}

tpcResult_t Registry::deregister(Bootstrap& bootstrap, uint64_t handle) {
  size_t i = 0;
  while (i < registrations_.size() && registrations_[i].id != handle) ++i;
  const tpcResult_t known =
      i < registrations_.size()
          ? tpcSuccess
          : fail(tpcInvalidArgument, "rank %d: %llu is not a registration of this communicator",
                 rank_, static_cast<unsigned long long>(handle));
  // No kernel of this rank may still read through the slot, and no peer may still read this
  // rank's buffer through its mapping: wait for the device, then for every rank.
  TPC_CHECK(bootstrap.agree(known, "deregistering"));
  const cudaError_t idle = cudaDeviceSynchronize();
  TPC_CHECK(bootstrap.agree(idle == cudaSuccess
                                ? tpcSuccess
                                : failCuda(idle, "cudaDeviceSynchronize", __FILE__, __LINE__),
                            "waiting for its device before deregistering"));
  // The slot is empty before the peers' buffers are unmapped: a kernel launched from now on (a
  // graph that still holds the slot) finds it deregistered instead of reading an unmapped address.
  Registration& reg = registrations_[i];
  TPC_CUDA_CHECK(
      cudaMemsetAsync(slots_ + reg.slot, 0, sizeof(device::SourceSlot), cudaStreamLegacy));
  TPC_CUDA_CHECK(cudaStreamSynchronize(cudaStreamLegacy));
  for (uint64_t ref : reg.refs) peers_.release(ref);
  if (stagedSlot_[reg.slot]) {
    stagedSlot_[reg.slot] = false;
    --staged_;
  }
  free_.push_back(reg.slot);
  registrations_.erase(registrations_.begin() + static_cast<long>(i));
  return tpcSuccess;
}

bool Registry::findRegistered(const void* input, size_t bytes, int* slot, size_t* offset) const {
  const char* p = static_cast<const char*>(input);
  for (const Registration& reg : registrations_) {
    if (p >= reg.base && p + bytes <= reg.base + reg.bytes) {
      *slot = reg.slot;
      *offset = static_cast<size_t>(p - reg.base);
      return true;
    }
  }
  return false;
}

void Registry::release() {
  peers_.releaseAll();
  graphRefs_.clear();
  registrations_.clear();
  pending_.clear();
  if (slots_ != nullptr) {
    cudaFree(slots_);
    slots_ = nullptr;
  }
}

}  // namespace tpcomm
