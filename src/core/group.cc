#include "core/group.h"

#include "common/error.h"

namespace tpcomm {
namespace {

struct GroupState {
  int depth = 0;
  const nccl::Library* openNccl = nullptr;  // NCCL whose group this thread has opened
};

GroupState& state() {
  thread_local GroupState s;
  return s;
}

}  // namespace

tpcResult_t groupStart() {
  ++state().depth;
  return tpcSuccess;
}

tpcResult_t groupEnd() {
  GroupState& s = state();
  if (s.depth == 0) return fail(tpcInvalidUsage, "tpcGroupEnd without a tpcGroupStart");
  if (--s.depth > 0 || s.openNccl == nullptr) return tpcSuccess;
  const nccl::Library* lib = s.openNccl;
  s.openNccl = nullptr;
  const nccl::Result res = lib->groupEnd();
  if (res != nccl::kSuccess) {
    return fail(tpcRemoteError, "tpcGroupEnd: ncclGroupEnd failed: %s", lib->getLastError(nullptr));
  }
  return tpcSuccess;
}

bool inGroup() { return state().depth > 0; }

tpcResult_t joinNcclGroup(const nccl::Library* lib) {
  GroupState& s = state();
  if (s.openNccl == lib) return tpcSuccess;
  if (lib->groupStart() != nccl::kSuccess) {
    return fail(tpcInternalError, "ncclGroupStart failed: %s", lib->getLastError(nullptr));
  }
  s.openNccl = lib;
  return tpcSuccess;
}

}  // namespace tpcomm
