#include "core/group.h"

#include <atomic>
#include <string>
#include <utility>
#include <vector>

#include "common/error.h"

namespace tpcomm {
namespace {

struct GroupState {
  int depth = 0;
  uint64_t serial = 0;                      // of the outermost group opened last
  const nccl::Library* openNccl = nullptr;  // NCCL whose group this thread has opened
  std::vector<std::function<tpcResult_t()>> deferred;
  std::vector<std::function<tpcResult_t()>> ends;
};

GroupState& state() {
  thread_local GroupState s;
  return s;
}

// Serials are counted over the process: a communicator may be used by one thread after another,
// and what it keeps for a group must not carry over to another thread's group.
std::atomic<uint64_t> lastSerial{0};

}  // namespace

tpcResult_t groupStart() {
  GroupState& s = state();
  if (s.depth++ == 0) s.serial = lastSerial.fetch_add(1, std::memory_order_relaxed) + 1;
  return tpcSuccess;
}

tpcResult_t groupEnd() {
  GroupState& s = state();
  if (s.depth == 0) return fail(tpcInvalidUsage, "tpcGroupEnd without a tpcGroupStart");
  if (--s.depth > 0) return tpcSuccess;
  std::vector<std::function<tpcResult_t()>> deferred = std::move(s.deferred);
  std::vector<std::function<tpcResult_t()>> ends = std::move(s.ends);
  s.deferred.clear();
  s.ends.clear();
  tpcResult_t first = tpcSuccess;
  std::string why;  // the first failure's explanation, which later ones must not replace
  auto note = [&first, &why](tpcResult_t res) {
    if (res == tpcSuccess || first != tpcSuccess) return;
    first = res;
    why = threadLastError();
  };
  if (s.openNccl != nullptr) {
    const nccl::Library* lib = s.openNccl;
    s.openNccl = nullptr;
    if (const nccl::Result res = lib->groupEnd(); res != nccl::kSuccess) {
      note(fail(fromNccl(res), "tpcGroupEnd: ncclGroupEnd failed: %s", lib->getLastError(nullptr)));
      deferred.clear();  // it reads what NCCL did not write
    }
  }
  for (auto& work : deferred) note(work());
  for (auto& end : ends) note(end());
  return first == tpcSuccess ? tpcSuccess : repeatFailure(first, why);
}

bool inGroup() { return state().depth > 0; }

uint64_t groupSerial() { return inGroup() ? state().serial : 0; }

tpcResult_t joinNcclGroup(const nccl::Library* lib) {
  GroupState& s = state();
  if (s.openNccl == lib) return tpcSuccess;
  if (lib->groupStart() != nccl::kSuccess) {
    return fail(tpcInternalError, "ncclGroupStart failed: %s", lib->getLastError(nullptr));
  }
  s.openNccl = lib;
  return tpcSuccess;
}

namespace {

// Appends `fn` to one of the open group's lists; `what` names it where no group is open.
tpcResult_t appendInGroup(std::vector<std::function<tpcResult_t()>>& list,
                          std::function<tpcResult_t()> fn, const char* what) {
  if (state().depth == 0) {
    return fail(tpcInternalError, "%s deferred to the end of a group outside one", what);
  }
  list.push_back(std::move(fn));
  return tpcSuccess;
}

}  // namespace

tpcResult_t deferUntilGroupEnd(std::function<tpcResult_t()> work) {
  return appendInGroup(state().deferred, std::move(work), "work");
}

tpcResult_t deferEndUntilGroupEnd(std::function<tpcResult_t()> end) {
  return appendInGroup(state().ends, std::move(end), "an end");
}

}  // namespace tpcomm
