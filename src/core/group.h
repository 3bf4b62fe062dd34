// Group calls of the calling thread (tpcGroupStart / tpcGroupEnd), and NCCL's group inside them:
// a call NCCL carries in a group opens NCCL's group once, and the outermost end closes it, which
// issues every rank's NCCL call at once, then whatever had to wait for those calls.
#pragma once

#include <stdint.h>

#include <functional>

#include "fallback/nccl_library.h"
#include "tpcomm/tpcomm.h"

namespace tpcomm {

tpcResult_t groupStart();
tpcResult_t groupEnd();
bool inGroup();
// The outermost group this thread has open: a number no other group of the process had; 0
// outside a group.
uint64_t groupSerial();

// Inside a group, before a call NCCL carries: opens `lib`'s group on this thread unless open.
tpcResult_t joinNcclGroup(const nccl::Library* lib);

// Inside a group: runs `work` at the outermost tpcGroupEnd, after NCCL has issued the group's
// calls (a kernel that reads what NCCL writes), in the order the work was deferred.
tpcResult_t deferUntilGroupEnd(std::function<tpcResult_t()> work);

// Inside a group: runs `end` at the outermost tpcGroupEnd after all deferred work, also where
// NCCL's group end failed: the end of a communicator whose calls the group still holds, which
// must outlive them.
tpcResult_t deferEndUntilGroupEnd(std::function<tpcResult_t()> end);

}  // namespace tpcomm
