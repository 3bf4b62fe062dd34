#include "fallback/nccl_library.h"

#include <dlfcn.h>

#include <mutex>

#include "common/env.h"
#include "common/log.h"

namespace tpcomm {
namespace nccl {
namespace {

struct Loaded {
  Library lib;
  bool ok = false;
  std::string whyNot;
};

template <typename Fn>
bool bind(void* handle, const char* name, Fn* fn, std::string* missing) {
  *fn = reinterpret_cast<Fn>(dlsym(handle, name));
  if (*fn == nullptr) *missing = name;
  return *fn != nullptr;
}

bool bindAll(void* handle, Library* lib, std::string* whyNot) {
  Result (*getVersion)(int*) = nullptr;
  std::string missing;
  const bool ok = bind(handle, "ncclGetVersion", &getVersion, &missing) &&
                  bind(handle, "ncclGetUniqueId", &lib->getUniqueId, &missing) &&
                  bind(handle, "ncclCommInitRank", &lib->commInitRank, &missing) &&
                  bind(handle, "ncclCommDestroy", &lib->commDestroy, &missing) &&
                  bind(handle, "ncclCommAbort", &lib->commAbort, &missing) &&
                  bind(handle, "ncclCommCount", &lib->commCount, &missing) &&
                  bind(handle, "ncclCommUserRank", &lib->commUserRank, &missing) &&
                  bind(handle, "ncclAllReduce", &lib->allReduce, &missing) &&
                  bind(handle, "ncclGroupStart", &lib->groupStart, &missing) &&
                  bind(handle, "ncclGroupEnd", &lib->groupEnd, &missing) &&
                  bind(handle, "ncclGetErrorString", &lib->getErrorString, &missing) &&
                  bind(handle, "ncclGetLastError", &lib->getLastError, &missing);
  if (!ok) {
    *whyNot = "symbol " + missing + " is missing";
    return false;
  }
  if (getVersion(&lib->version) != kSuccess) {
    *whyNot = "ncclGetVersion failed";
    return false;
  }
  // Symmetric memory windows (NCCL 2.27 and newer); absent from older versions.
  lib->memAlloc = reinterpret_cast<decltype(lib->memAlloc)>(dlsym(handle, "ncclMemAlloc"));
  lib->memFree = reinterpret_cast<decltype(lib->memFree)>(dlsym(handle, "ncclMemFree"));
  lib->windowRegister =
      reinterpret_cast<decltype(lib->windowRegister)>(dlsym(handle, "ncclCommWindowRegister"));
  lib->windowDeregister =
      reinterpret_cast<decltype(lib->windowDeregister)>(dlsym(handle, "ncclCommWindowDeregister"));
  return true;
}

Loaded load() {
  Loaded out;
  if (const char* path = envValue(EnvVar::kNcclLibrary)) {
    void* handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      out.whyNot = std::string("cannot load ") + envName(EnvVar::kNcclLibrary) + "=" + path + ": " +
                   dlerror();
      return out;
    }
    out.lib.origin = path;
    out.ok = bindAll(handle, &out.lib, &out.whyNot);
    return out;
  }
  // An NCCL the process already has (linked in, or loaded by a framework) is the one to use.
  if (dlsym(RTLD_DEFAULT, "ncclAllReduce") != nullptr) {
    out.lib.origin = "already loaded in the process";
    out.ok = bindAll(RTLD_DEFAULT, &out.lib, &out.whyNot);
    if (out.ok) return out;
  }
  void* handle = dlopen("libnccl.so.2", RTLD_NOLOAD | RTLD_NOW);
  const bool wasLoaded = handle != nullptr;
  if (handle == nullptr) handle = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    out.whyNot = std::string("libnccl.so.2 not found: ") + dlerror();
    return out;
  }
  out.lib.origin = wasLoaded ? "libnccl.so.2 already loaded in the process" : "libnccl.so.2";
  out.ok = bindAll(handle, &out.lib, &out.whyNot);
  return out;
}

}  // namespace

const Library* library(std::string* whyNot) {
  static const Loaded loaded = [] {
    Loaded l = load();
    if (l.ok) {
      TPC_INFO("NCCL %d loaded (%s)", l.lib.version, l.lib.origin.c_str());
    } else {
      TPC_INFO("NCCL unavailable: %s", l.whyNot.c_str());
    }
    return l;
  }();
  if (!loaded.ok) {
    if (whyNot != nullptr) *whyNot = loaded.whyNot;
    return nullptr;
  }
  return &loaded.lib;
}

}  // namespace nccl

tpcResult_t fromNccl(nccl::Result result) {
  return result >= 1 && result <= 6 ? static_cast<tpcResult_t>(result) : tpcInternalError;
}

}  // namespace tpcomm
