// Group calls of the calling thread (tpcGroupStart / tpcGroupEnd), and NCCL's group inside them:
// a call NCCL carries in a group opens NCCL's group once, and the outermost end closes it, which
// issues every rank's NCCL call at once.
#pragma once

#include "fallback/nccl_library.h"
#include "tpcomm/tpcomm.h"

namespace tpcomm {

tpcResult_t groupStart();
tpcResult_t groupEnd();
bool inGroup();

// Inside a group, before a call NCCL carries: opens `lib`'s group on this thread unless open.
tpcResult_t joinNcclGroup(const nccl::Library* lib);

}  // namespace tpcomm
