// The ceiling a large all-reduce between two GPUs works under: how fast the link between GPU A
// and GPU B carries a plain copy, by stores of every multiprocessor into the peer (push, as the
// push kernels send), by loads from the peer (pull) and by the copy engines, one way and both ways
// at once. An all-reduce of S bytes over two GPUs moves S bytes each way, so S over the both-ways
// rate is its floor.
//
// usage: tpcomm-link-bandwidth [MIB [GPU_A GPU_B]]   (64 MiB, GPUs 0 and 1 by default)
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#include "check_cuda.h"

namespace {

constexpr int kThreads = 1024;
constexpr int kUnroll = 4;  // vectors in flight per thread
constexpr int kCopies = 20;

// dst[i] = src[i] for n vectors, every thread's kUnroll loads issued before its stores.
__global__ void __launch_bounds__(kThreads)
    copyVectors(const uint4* __restrict__ src, uint4* __restrict__ dst, size_t n) {
  const size_t step = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += step * kUnroll) {
    uint4 v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (i + u * step < n) v[u] = src[i + u * step];
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (i + u * step < n) dst[i + u * step] = v[u];
    }
  }
}

enum class Mode { kPush, kPull, kCopyEngine };

struct Side {
  int device;
  int blocks;
  uint4* src;
  uint4* dst;
  cudaStream_t stream;
  cudaEvent_t start;
  cudaEvent_t end;
};

// Microseconds per copy of `bytes` from each driving side to its peer (the slower side's), side 0
// alone or both sides at once.
float timeCopies(Side (&side)[2], Mode mode, bool both, size_t bytes) {
  const int sides = both ? 2 : 1;
  float worst = 0.0f;
  for (int pass = 0; pass < 2; ++pass) {  // the first pass warms up
    for (int s = 0; s < 2; ++s) {
      CHECK_CUDA(cudaSetDevice(side[s].device));
      CHECK_CUDA(cudaDeviceSynchronize());
    }
    for (int s = 0; s < sides; ++s) {
      Side& me = side[s];
      Side& peer = side[1 - s];
      CHECK_CUDA(cudaSetDevice(me.device));
      CHECK_CUDA(cudaEventRecord(me.start, me.stream));
      for (int c = 0; c < kCopies; ++c) {
        if (mode == Mode::kPush) {
          copyVectors<<<me.blocks, kThreads, 0, me.stream>>>(me.src, peer.dst, bytes / 16);
        } else if (mode == Mode::kPull) {
          copyVectors<<<me.blocks, kThreads, 0, me.stream>>>(peer.src, me.dst, bytes / 16);
        } else {
          CHECK_CUDA(
              cudaMemcpyPeerAsync(peer.dst, peer.device, me.src, me.device, bytes, me.stream));
        }
        CHECK_CUDA(cudaGetLastError());
      }
      CHECK_CUDA(cudaEventRecord(me.end, me.stream));
    }
    worst = 0.0f;
    for (int s = 0; s < sides; ++s) {
      CHECK_CUDA(cudaSetDevice(side[s].device));
      CHECK_CUDA(cudaEventSynchronize(side[s].end));
      float ms = 0.0f;
      CHECK_CUDA(cudaEventElapsedTime(&ms, side[s].start, side[s].end));
      if (ms > worst) worst = ms;
    }
  }
  return worst * 1000.0f / kCopies;
}

}  // namespace

int main(int argc, char** argv) {
  const size_t mib = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 64;
  const int a = argc > 3 ? std::atoi(argv[2]) : 0;
  const int b = argc > 3 ? std::atoi(argv[3]) : 1;
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess) devices = 0;
  if (mib == 0 || a == b || a < 0 || b < 0 || a >= devices || b >= devices) {
    std::fprintf(stderr, "usage: %s [MIB [GPU_A GPU_B]]: two distinct GPUs of the %d here\n",
                 argv[0], devices);
    return 2;
  }
  int canAccess = 0;
  CHECK_CUDA(cudaDeviceCanAccessPeer(&canAccess, a, b));
  if (!canAccess) {
    std::fprintf(stderr, "GPUs %d and %d cannot access each other's memory\n", a, b);
    return 1;
  }
  const size_t bytes = mib << 20;
  Side side[2] = {{a}, {b}};
  for (int s = 0; s < 2; ++s) {
    Side& me = side[s];
    CHECK_CUDA(cudaSetDevice(me.device));
    CHECK_CUDA(cudaDeviceEnablePeerAccess(side[1 - s].device, 0));
    CHECK_CUDA(cudaDeviceGetAttribute(&me.blocks, cudaDevAttrMultiProcessorCount, me.device));
    CHECK_CUDA(cudaMalloc(&me.src, bytes));
    CHECK_CUDA(cudaMalloc(&me.dst, bytes));
    CHECK_CUDA(cudaMemset(me.src, 1, bytes));
    CHECK_CUDA(cudaStreamCreateWithFlags(&me.stream, cudaStreamNonBlocking));
    CHECK_CUDA(cudaEventCreate(&me.start));
    CHECK_CUDA(cudaEventCreate(&me.end));
  }
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, a));
  std::printf("# GPUs %d and %d (%s), %zu MiB per copy, mean of %d back-to-back copies\n", a, b,
              prop.name, mib, kCopies);
  std::printf("# %-12s %-8s %10s %14s\n", "copy", "ways", "us", "GB/s each way");
  const struct {
    Mode mode;
    const char* name;
  } modes[] = {
      {Mode::kPush, "push (SMs)"}, {Mode::kPull, "pull (SMs)"}, {Mode::kCopyEngine, "copy engine"}};
  for (const auto& m : modes) {
    for (const bool both : {false, true}) {
      const float us = timeCopies(side, m.mode, both, bytes);
      std::printf("  %-12s %-8s %10.1f %14.1f\n", m.name, both ? "both" : "one", us,
                  bytes / (us * 1e-6) / 1e9);
    }
  }
  for (int s = 0; s < 2; ++s) {
    CHECK_CUDA(cudaSetDevice(side[s].device));
    CHECK_CUDA(cudaFree(side[s].src));
    CHECK_CUDA(cudaFree(side[s].dst));
    CHECK_CUDA(cudaStreamDestroy(side[s].stream));
    CHECK_CUDA(cudaEventDestroy(side[s].start));
    CHECK_CUDA(cudaEventDestroy(side[s].end));
  }
  return 0;
}
