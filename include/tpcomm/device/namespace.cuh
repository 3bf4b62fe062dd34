// Device code may be compiled into several shared libraries of one process (tpcomm itself, and an
// engine that includes these headers for its own fused kernels). A versioned inline namespace keeps
// their symbols apart, so two copies of different versions never clash at link or load time.
#pragma once

#define TPCOMM_DEVICE_NAMESPACE_BEGIN \
  namespace tpcomm {                  \
  namespace device {                  \
  inline namespace v0_1 {
#define TPCOMM_DEVICE_NAMESPACE_END \
  }                                 \
  }                                 \
  }
