// NVLink facts from NVML, loaded at run time (libnvidia-ml.so.1 ships with the driver, not with
// the toolkit). GPUs are named by PCI bus id, which means the same GPU to every process whatever
// CUDA_VISIBLE_DEVICES renumbers.
#pragma once

#include <string>

#include "topology/topology.h"

namespace tpcomm {
namespace nvml {

struct Nvml;

// NVML of this process, initialized once; null (with *whyNot) when it cannot be loaded.
const Nvml* get(std::string* whyNot);

// Whether the two GPUs can reach each other over NVLink; kUnknown when NVML does not know them.
Fact nvlinkBetween(const Nvml* nvml, const std::string& busA, const std::string& busB);

// The driver version ("580.159.04"), or empty.
std::string driverVersion(const Nvml* nvml);

}  // namespace nvml
}  // namespace tpcomm
