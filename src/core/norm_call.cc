#include "core/norm_call.h"

#include <cmath>
#include <cstdint>

#include "common/cuda_util.h"
#include "common/error.h"

namespace tpcomm {
namespace {

bool isFp8(tpcDataType_t type) { return type == tpcFloat8e4m3 || type == tpcFloat8e5m2; }

struct Range {
  const char* name;
  uintptr_t begin;
  size_t bytes;
};

bool overlaps(const Range& a, const Range& b) {
  return a.begin < b.begin + b.bytes && b.begin < a.begin + a.bytes;
}

enum Buffer { kInput, kResidualIn, kWeight, kResidualOut, kOut, kBuffers };

// In place is allowed where a thread reads an element before it writes the same element: the
// new residual over the old one, and the output over the input when they have the same type (the
// one-shot kernel then runs only in grids where the thread that sends an element normalises it:
// fusedOneShotShape). Names are the C API's parameters.
bool allowedAlias(int written, int other, const Range* ranges, const NormCall& call) {
  if (ranges[written].begin != ranges[other].begin) return false;
  return (written == kResidualOut && other == kResidualIn) ||
         (written == kOut && other == kInput && call.outType == call.type);
}

}  // namespace

size_t NormCall::rowBytes() const { return hidden * typeSize(type); }
size_t NormCall::outRowBytes() const { return hidden * typeSize(outType); }

tpcResult_t checkNormRows(tpcDataType_t type, size_t rows, size_t hidden, int rank,
                          const char* what) {
  if (type < 0 || type >= tpcNumTypes) {
    return fail(tpcInvalidArgument, "rank %d: %s: datatype %d is not a tpcDataType_t", rank, what,
                static_cast<int>(type));
  }
  if (type != tpcFloat16 && type != tpcBfloat16) {
    return fail(tpcNotSupported, "rank %d: %s takes float16 and bfloat16 rows, not %s", rank, what,
                typeName(type));
  }
  if (hidden == 0 || hidden % 8 != 0 || hidden > kMaxNormHidden) {
    return fail(tpcNotSupported,
                "rank %d: %s: a hidden size of %zu is not supported (a multiple of 8 from 8 to "
                "%zu)",
                rank, what, hidden, kMaxNormHidden);
  }
  if (rows > SIZE_MAX / 4 / (hidden * typeSize(type))) {
    return fail(tpcInvalidArgument, "rank %d: %s: %zu rows of %zu elements overflow", rank, what,
                rows, hidden);
  }
  return tpcSuccess;
}

tpcResult_t checkNormCall(const NormCall& call, int rank) {
  const char* const kCall = "tpcAllReduceAddRmsNorm";
  TPC_CHECK(checkNormRows(call.type, call.rows, call.hidden, rank, kCall));
  if (call.outType != call.type && !isFp8(call.outType)) {
    return fail(tpcInvalidArgument,
                "rank %d: %s: the output type %s is neither the input's (%s) nor an FP8 type", rank,
                kCall, typeName(call.outType), typeName(call.type));
  }
  if (isFp8(call.outType) && call.scale == nullptr) {
    return fail(tpcInvalidArgument, "rank %d: %s: an FP8 output (%s) needs normScale", rank, kCall,
                typeName(call.outType));
  }
  if (!(call.eps >= 0.0f) || std::isinf(call.eps)) {
    return fail(tpcInvalidArgument, "rank %d: %s: eps %g is not a finite value >= 0", rank, kCall,
                static_cast<double>(call.eps));
  }
  if (call.rows == 0) return tpcSuccess;
  const Range ranges[kBuffers] = {
      {"sendbuff", reinterpret_cast<uintptr_t>(call.input), call.rows * call.rowBytes()},
      {"residualIn", reinterpret_cast<uintptr_t>(call.residualIn), call.rows * call.rowBytes()},
      {"weight", reinterpret_cast<uintptr_t>(call.weight), call.rowBytes()},
      {"residualOut", reinterpret_cast<uintptr_t>(call.residualOut), call.rows * call.rowBytes()},
      {"normOut", reinterpret_cast<uintptr_t>(call.out), call.rows * call.outRowBytes()},
  };
  for (const Range& r : ranges) {
    if (r.begin == 0) {
      return fail(tpcInvalidArgument, "rank %d: %s: %s is NULL for %zu rows", rank, kCall, r.name,
                  call.rows);
    }
    if (r.begin % 16 != 0) {
      return fail(tpcInvalidArgument, "rank %d: %s: %s (%p) is not 16-byte aligned", rank, kCall,
                  r.name, reinterpret_cast<const void*>(r.begin));
    }
  }
  for (int w : {kResidualOut, kOut}) {
    for (int other = 0; other < kBuffers; ++other) {
      if (other == w || !overlaps(ranges[w], ranges[other]) ||
          allowedAlias(w, other, ranges, call)) {
        continue;
      }
      return fail(tpcInvalidArgument,
                  "rank %d: %s: %s overlaps %s (in place, residualOut may be residualIn and "
                  "normOut may be sendbuff when both have the input's type)",
                  rank, kCall, ranges[w].name, ranges[other].name);
    }
  }
  if (!isFp8(call.outType)) return tpcSuccess;
  // Every block reads the scale as it starts, some after others have stored rows: it must be a
  // float of its own.
  const Range scale{"normScale", reinterpret_cast<uintptr_t>(call.scale), sizeof(float)};
  if (scale.begin % alignof(float) != 0) {
    return fail(tpcInvalidArgument, "rank %d: %s: normScale (%p) is not 4-byte aligned", rank,
                kCall, static_cast<const void*>(call.scale));
  }
  for (int w : {kResidualOut, kOut}) {
    if (overlaps(scale, ranges[w])) {
      return fail(tpcInvalidArgument,
                  "rank %d: %s: normScale lies inside %s, which the call writes", rank, kCall,
                  ranges[w].name);
    }
  }
  return tpcSuccess;
}

device::NormParams normParams(const NormCall& call, size_t first, size_t rows) {
  device::NormParams n{};
  n.residualIn = static_cast<const char*>(call.residualIn) + first * call.rowBytes();
  n.residualOut = static_cast<char*>(call.residualOut) + first * call.rowBytes();
  n.weight = call.weight;
  n.out = static_cast<char*>(call.out) + first * call.outRowBytes();
  n.scale = call.scale;
  n.eps = call.eps;
  n.outType = call.outType == tpcFloat8e4m3   ? device::kNormOutE4M3
              : call.outType == tpcFloat8e5m2 ? device::kNormOutE5M2
                                              : device::kNormOutInput;
  n.hidden = static_cast<uint32_t>(call.hidden);
  n.hiddenVectors = static_cast<uint32_t>(call.hidden * typeSize(call.type) / 16);
  n.rows = rows;
  return n;
}

}  // namespace tpcomm
