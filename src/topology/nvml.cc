#include "topology/nvml.h"

#include <dlfcn.h>

#include "common/log.h"

namespace tpcomm {
namespace nvml {
namespace {

// The few NVML declarations tpcomm needs, from NVML's stable C ABI.
typedef struct nvmlDevice_st* Device;
constexpr int kSuccess = 0;
constexpr int kP2PCapsIndexNvlink = 2;
constexpr int kP2PStatusOk = 0;

}  // namespace

struct Nvml {
  int (*init)() = nullptr;
  int (*handleByBusId)(const char*, Device*) = nullptr;
  int (*p2pStatus)(Device, Device, int, int*) = nullptr;
  int (*driverVersion)(char*, unsigned) = nullptr;
};

namespace {

template <typename Fn>
bool bind(void* lib, const char* name, Fn* fn) {
  *fn = reinterpret_cast<Fn>(dlsym(lib, name));
  return *fn != nullptr;
}

struct Loaded {
  Nvml nvml;
  bool ok = false;
  std::string whyNot;
};

Loaded load() {
  Loaded out;
  void* lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    out.whyNot = std::string("libnvidia-ml.so.1 not found: ") + dlerror();
    return out;
  }
  Nvml& n = out.nvml;
  if (!bind(lib, "nvmlInit_v2", &n.init) ||
      !bind(lib, "nvmlDeviceGetHandleByPciBusId_v2", &n.handleByBusId) ||
      !bind(lib, "nvmlDeviceGetP2PStatus", &n.p2pStatus) ||
      !bind(lib, "nvmlSystemGetDriverVersion", &n.driverVersion)) {
    out.whyNot = "libnvidia-ml.so.1 lacks an NVML entry point tpcomm needs";
    return out;
  }
  const int rc = n.init();
  if (rc != kSuccess) {
    out.whyNot = "nvmlInit failed with NVML error " + std::to_string(rc);
    return out;
  }
  out.ok = true;
  return out;
}

}  // namespace

const Nvml* get(std::string* whyNot) {
  static const Loaded loaded = [] {
    Loaded l = load();
    if (!l.ok) TPC_INFO("NVML unavailable: %s", l.whyNot.c_str());
    return l;
  }();
  if (!loaded.ok) {
    if (whyNot != nullptr) *whyNot = loaded.whyNot;
    return nullptr;
  }
  return &loaded.nvml;
}

Fact nvlinkBetween(const Nvml* nvml, const std::string& busA, const std::string& busB) {
  if (nvml == nullptr) return Fact::kUnknown;
  Device a = nullptr, b = nullptr;
  if (nvml->handleByBusId(busA.c_str(), &a) != kSuccess ||
      nvml->handleByBusId(busB.c_str(), &b) != kSuccess) {
    return Fact::kUnknown;
  }
  int status = -1;
  if (nvml->p2pStatus(a, b, kP2PCapsIndexNvlink, &status) != kSuccess) return Fact::kUnknown;
  return status == kP2PStatusOk ? Fact::kYes : Fact::kNo;
}

std::string driverVersion(const Nvml* nvml) {
  if (nvml == nullptr) return "";
  char version[96] = "";
  if (nvml->driverVersion(version, sizeof(version)) != kSuccess) return "";
  return version;
}

}  // namespace nvml
}  // namespace tpcomm
