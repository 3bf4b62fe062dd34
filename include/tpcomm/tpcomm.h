/*
 * tpcomm: intra-node all-reduce for tensor-parallel inference.
 *
 * This header is the specification of the C API. It is shaped like NCCL's so that code written
 * against one reads naturally against the other: an opaque communicator, explicitly numbered result
 * codes, a rendezvous id, and stream-ordered, graph-capturable collectives.
 *
 * Thread safety: different communicators may be used from different threads at once. A single
 * communicator must not be used by two threads at the same time, and its calls must be issued in
 * the same order on every rank (as with NCCL). Calls a rank makes on different streams are
 * ordered: a call waits for the rank's previous eager call on another stream.
 */
#ifndef TPCOMM_TPCOMM_H_
#define TPCOMM_TPCOMM_H_

#include <cuda_runtime.h>
#include <stddef.h>

#define TPCOMM_MAJOR 0
#define TPCOMM_MINOR 3
#define TPCOMM_PATCH 0
#define TPCOMM_VERSION_CODE (TPCOMM_MAJOR * 10000 + TPCOMM_MINOR * 100 + TPCOMM_PATCH)

#ifdef __cplusplus
extern "C" {
#endif

/* Opaque handle to one rank of a communicator. */
typedef struct tpcComm* tpcComm_t;

/* Names a rendezvous for the ranks of one communicator on one host: a Unix domain socket name and
 * a random secret. Produce it once with tpcGetUniqueId and hand the same bytes to every rank. */
#define TPC_UNIQUE_ID_BYTES 128
typedef struct {
  char internal[TPC_UNIQUE_ID_BYTES];
} tpcUniqueId;

/* Result codes. The numbers are part of the ABI and never change. */
typedef enum {
  tpcSuccess = 0,
  tpcUnhandledCudaError = 1, /* a CUDA call failed */
  tpcSystemError = 2,        /* a system call failed (socket, memory) */
  tpcInternalError = 3,      /* a bug in tpcomm */
  tpcInvalidArgument = 4,    /* a bad pointer, value or handle */
  tpcInvalidUsage = 5,       /* a call that cannot be made in this state or setup */
  tpcRemoteError = 6,        /* another rank failed or disagreed */
  tpcTimeout = 7,            /* a bounded wait on a peer ran out; the communicator is unusable */
  tpcNotSupported = 8,       /* a valid request tpcomm does not implement */
  tpcNumResults = 9
} tpcResult_t;

/* Data types. Values match NCCL's ncclDataType_t so callers can map one onto the other. */
typedef enum {
  tpcInt8 = 0,
  tpcUint8 = 1,
  tpcInt32 = 2,
  tpcUint32 = 3,
  tpcInt64 = 4,
  tpcUint64 = 5,
  tpcFloat16 = 6,
  tpcFloat32 = 7,
  tpcFloat64 = 8,
  tpcBfloat16 = 9,
  tpcFloat8e4m3 = 10, /* FP8 (NCCL 2.24 and newer on sm_90): NCCL carries all-reduces of them */
  tpcFloat8e5m2 = 11,
  tpcNumTypes = 12
} tpcDataType_t;

/* Reduction operations. Values match NCCL's ncclRedOp_t. */
typedef enum {
  tpcSum = 0,
  tpcProd = 1,
  tpcMax = 2,
  tpcMin = 3,
  tpcAvg = 4,
  tpcNumOps = 5
} tpcRedOp_t;

/* All-reduce algorithms. tpcAlgoAuto lets tpcomm choose by world size and message size. The pull
 * kernels read peers' buffers after a barrier; the push kernels store into peers' receive buffers
 * with the data as its own flag and wait at no barrier. */
typedef enum {
  tpcAlgoAuto = 0,
  tpcAlgoOneShot = 1, /* pull: every rank reads every peer's input and reduces the whole message */
  tpcAlgoTwoShot = 2, /* pull: reduce-scatter then all-gather: each rank reduces one slice */
  tpcAlgoNccl = 3,    /* NCCL's all-reduce */
  tpcAlgoPushOneShot = 4, /* push: every rank stores its input into every peer, each sums it all */
  tpcAlgoPushTwoShot = 5, /* push: reduce-scatter and all-gather, both by stores into peers */
  tpcNumAlgos = 6
} tpcAlgorithm_t;

/* NCCL fallback, tpcConfig_t.ncclFallback. NCCL carries the calls tpcomm's kernels should not
 * take: all of them where the custom path is off (no NVLink between more than two GPUs, broken
 * peer access, TPCOMM_DISABLE), types and operations the kernels lack, and sizes where the
 * algorithm table or TPCOMM_MAX_BYTES say NCCL is faster. */
#define TPC_NCCL_AUTO 0 /* config.ncclComm if given, else one tpcomm creates where NCCL can run */
#define TPC_NCCL_OFF 1  /* never NCCL: the kernels take every size they can */

/* Communicator configuration. Always start from TPC_CONFIG_INITIALIZER: fields left at zero take
 * the environment's value (see README) or the built-in default, and fields added in later
 * versions go after the existing ones, so old callers keep working. Every rank must pass the
 * same values; ranks that disagree fail tpcCommInitRank with tpcInvalidUsage. */
typedef struct {
  size_t size;          /* sizeof(tpcConfig_t) as the caller compiled it */
  unsigned int magic;   /* TPC_CONFIG_MAGIC */
  unsigned int version; /* TPCOMM_VERSION_CODE as the caller compiled it */
  size_t stagingBytes;  /* per-rank staging buffer; larger messages go in chunks of this size */
  int maxBlocks;        /* upper bound on thread blocks per all-reduce kernel; 0: automatic */
  int algorithm;        /* a tpcAlgorithm_t; tpcAlgoAuto: chosen per call */
  int timeoutMs;        /* bound on every wait for a peer, at init and inside kernels */
  void* ncclComm;       /* an ncclComm_t of the same ranks for the fallback, borrowed: tpcomm
                           never destroys it; NULL: see ncclFallback */
  int ncclFallback;     /* TPC_NCCL_AUTO or TPC_NCCL_OFF */
  size_t maxBytes;      /* larger messages go to NCCL when it is there, unless `algorithm`
                           forces one of tpcomm's kernels; 0: table only */
  int zeroCopyGraphs;   /* 1: captured all-reduces of the pull kernels read their peers' inputs
                           in place; the graph may run only after tpcCommRegisterGraphBuffers */
  int graphSlots;       /* captured zero-copy calls a communicator can hold; 0: 65536 */
  size_t pushBytes;     /* the largest message push two-shot carries in one launch (push one-shot:
                           min(pushBytes, 4 MiB) / (nranks - 1)); larger ones go in chunks. Each
                           rank's receive buffers take about 3 x min(pushBytes, 4 MiB) for push
                           one-shot plus 6 x pushBytes x (nranks - 1) / nranks for push two-shot;
                           0: 64 MiB at two ranks, 32 MiB at more */
  int pdl;              /* 1: launch the kernels as programmatic dependents of the kernel before
                           them in the stream (they start while it finishes); -1: never; 0: the
                           environment's choice, else the default (see README) */
} tpcConfig_t;

#define TPC_CONFIG_MAGIC 0x74706331u /* "tpc1" */
#define TPC_CONFIG_INITIALIZER \
  { sizeof(tpcConfig_t), TPC_CONFIG_MAGIC, TPCOMM_VERSION_CODE, 0, 0, tpcAlgoAuto, 0 }

/* Writes TPCOMM_VERSION_CODE of the library that is loaded (which may differ from the header). */
tpcResult_t tpcGetVersion(int* version);

/* Creates a new rendezvous name and secret. Call once, then pass the id to every rank. Each
 * communicator needs its own id. Makes no CUDA calls. */
tpcResult_t tpcGetUniqueId(tpcUniqueId* uniqueId);

/* Creates rank `rank` of a communicator of `nranks` ranks on the calling thread's current CUDA
 * device. Collective: blocks until every rank has joined, or fails with tpcTimeout after the
 * configured timeout. `config` may be NULL for defaults. Several ranks may use the same device. */
tpcResult_t tpcCommInitRank(tpcComm_t* comm, int nranks, tpcUniqueId commId, int rank,
                            const tpcConfig_t* config);

/* Creates all `nranks` ranks of a communicator in this process: comms[i] is rank i on device
 * devices[i] (devices may repeat; NULL means devices 0..nranks-1). The caller may then drive the
 * ranks from one thread or one thread per rank. */
tpcResult_t tpcCommInitAll(tpcComm_t* comms, int nranks, const int* devices,
                           const tpcConfig_t* config);

/* Group calls, as in NCCL. When one process holds several ranks of a communicator (created
 * together by tpcCommInitAll, or by tpcCommInitRank on several threads of it), a call NCCL carries
 * must not be issued for one rank at a time: the first rank would wait for the others. Bracket
 * one call of every rank with tpcGroupStart and tpcGroupEnd (on each rank's own thread, a group
 * around its one call); tpcGroupEnd issues what NCCL carries for all of them at once. tpcomm's own
 * kernels are launched at the call, as always. Groups nest (only the outermost end issues) and
 * belong to the calling thread. Outside a group, a call NCCL would carry on such a communicator
 * fails with tpcInvalidUsage instead of hanging. The collective host calls (tpcCommRegister,
 * tpcCommDeregister, tpcCommRegisterGraphBuffers) are not grouped: ranks in one process make
 * them from a thread each. */
tpcResult_t tpcGroupStart(void);
tpcResult_t tpcGroupEnd(void);

/* Waits for the outstanding work on the rank's device (all of it, not only this rank's), then
 * frees every resource of the rank. Where the communicator has failed, the NCCL communicator
 * tpcomm created is aborted first, as its kernels may wait for a peer that is gone. Not
 * collective: ranks may be destroyed one after another from one thread. The handle must not be
 * used afterwards; tpcomm recognises a destroyed handle and rejects it with an error. Inside a
 * group of the calling thread that holds calls of the rank for NCCL to issue, the rank ends at
 * tpcGroupEnd, after those calls are issued, and tpcGroupEnd reports how that went; the handle is
 * done with at once. */
tpcResult_t tpcCommDestroy(tpcComm_t comm);

/* Stops this rank at once, for engines that tear down on error: the rank's queued and running
 * kernels (graph replays too) end without doing anything more, its peers' waits fail naming it
 * (tpcRemoteError) within their timeout, the NCCL communicator tpcomm created is aborted (one
 * passed in the config stays the caller's to abort), and every resource of the rank is freed.
 * Not collective; never waits for a peer: where the device still runs other work after the
 * timeout (a borrowed NCCL communicator's kernels waiting for a dead peer), it returns then and
 * leaves the rank's device memory allocated, since freeing it would wait for that work. The
 * handle must not be used afterwards. Inside a group of the calling thread that holds calls of
 * the rank for NCCL to issue, the rank stops at tpcGroupEnd instead, after those calls are issued
 * (as tpcCommDestroy). A group of another thread that holds such calls uses the rank until its
 * tpcGroupEnd: no other thread may abort or destroy the rank before then. */
tpcResult_t tpcCommAbort(tpcComm_t comm);

/* Number of ranks, this rank's index, and this rank's CUDA device. */
tpcResult_t tpcCommCount(const tpcComm_t comm, int* count);
tpcResult_t tpcCommUserRank(const tpcComm_t comm, int* rank);
tpcResult_t tpcCommCuDevice(const tpcComm_t comm, int* device);

/* Reports an error raised asynchronously by a kernel without issuing any work: tpcTimeout for a
 * wait on a peer that ran out, tpcRemoteError when a peer failed or was aborted, tpcInvalidUsage
 * for ranks that made different calls or a zero-copy call whose registration is missing or was
 * replaced. Sets *asyncError to tpcSuccess while the communicator is healthy. Once failed, a
 * communicator does nothing more: its queued kernels and graph replays end at once. */
tpcResult_t tpcCommGetAsyncError(tpcComm_t comm, tpcResult_t* asyncError);

/* How a communicator carries its calls, for engines to log: whether tpcomm's kernels are on and
 * why (the pair of devices that decided it, if any), and whether NCCL is there for the rest. */
typedef struct {
  int customPath;    /* 1: tpcomm's kernels take the sizes the algorithm table gives them */
  int ncclAvailable; /* 1: NCCL takes the rest */
  int p2pVerified;   /* 1: writes through every peer mapping were verified (now or cached) */
  char reason[256];  /* one sentence on the custom path */
  char nccl[128];    /* which NCCL, or why there is none */
} tpcPathInfo_t;

tpcResult_t tpcCommGetPathInfo(tpcComm_t comm, tpcPathInfo_t* info);

/* The algorithm an eager tpcAllReduce would use for `count` elements of `datatype` on this
 * communicator (never tpcAlgoAuto), so that an engine or a benchmark can log the choice. */
tpcResult_t tpcCommGetAlgorithm(tpcComm_t comm, size_t count, tpcDataType_t datatype,
                                tpcAlgorithm_t* algorithm);

/* The algorithm tpcAllReduceAddRmsNorm would use, eager or captured, for `rows` rows of `hidden`
 * elements of `datatype` on this communicator: tpcAlgoPushOneShot or tpcAlgoPushTwoShot (the fused
 * kernel), or tpcAlgoNccl (NCCL, then the norm kernel), in place (normOut == sendbuff) or not.
 * Its one-shot kernel may take larger messages than tpcAllReduce's. Rows the call refuses get the
 * call's error (tpcNotSupported for a type or hidden size it lacks, tpcInvalidUsage where no
 * kernel's receive buffers hold a row and no NCCL carries the call). */
tpcResult_t tpcCommGetAddRmsNormAlgorithm(tpcComm_t comm, size_t rows, size_t hidden,
                                          tpcDataType_t datatype, tpcAlgorithm_t* algorithm);

/* Sums `count` elements of `sendbuff` over all ranks into `recvbuff` on every rank. In place when
 * sendbuff == recvbuff; buffers that overlap otherwise are refused (tpcInvalidArgument).
 * Asynchronous and ordered on `stream`, which must belong to the
 * communicator's device; may be captured into a CUDA graph. Every rank gets bitwise identical
 * results: ranks are summed in rank order and 16-bit types are accumulated in float32.
 * tpcomm's kernels sum tpcFloat32, tpcFloat16 and tpcBfloat16 of any count (0 does nothing) and
 * any alignment, in chunks when a message is larger than a kernel's buffers; other types and
 * operations, and whatever the topology or the algorithm table give to NCCL, go to NCCL when the
 * communicator has one (tpcNotSupported otherwise). NCCL sums in its own order and, at three or
 * more ranks, rounds 16-bit partial sums, so the default table gives it no call the kernels can
 * take; tpcConfig_t's maxBytes hands it larger messages. The push kernels turn -0.0 into +0.0
 * before they send it (their receive buffers use -0.0 to mean "not arrived"): an element that is
 * -0.0 on every rank sums to +0.0 there, and to -0.0 with the pull kernels; every other sum is the
 * same. */
tpcResult_t tpcAllReduce(const void* sendbuff, void* recvbuff, size_t count, tpcDataType_t datatype,
                         tpcRedOp_t op, tpcComm_t comm, cudaStream_t stream);

/* The end of a tensor-parallel transformer block in one call: for `rows` rows of `hidden`
 * elements,
 *     residualOut = T(allreduce(sendbuff) + residualIn)
 *     normOut     = O(residualOut * rsqrt(mean(residualOut^2) + eps) * weight [* (1 / *normScale)])
 * where allreduce(sendbuff) is tpcAllReduce's sum rounded to the input type T (tpcFloat16 or
 * tpcBfloat16), the residual add, squares, mean (their sum times 1 / hidden) and products are
 * float32, and O is T or, for a quantised output, tpcFloat8e4m3 or tpcFloat8e5m2 (round to
 * nearest, saturated to the largest finite value; NaN stays NaN), in which case `normScale` points
 * to one float32 in device memory (read by the kernel, so a graph sees its current value; 4-byte
 * aligned and outside residualOut and normOut, tpcInvalidArgument otherwise; it must be finite
 * and at least 2^-126 in magnitude (a normal float32), which the kernel does not check: a zero
 * scale, or one so small that its reciprocal overflows, saturates every nonzero output and turns
 * zeros into NaN). `weight` has `hidden` elements of T; residualIn, residualOut
 * and sendbuff have rows x hidden of T, normOut rows x hidden of O. In place: residualOut may be
 * residualIn, and normOut may be sendbuff when O is T; no other buffers may overlap
 * (tpcInvalidArgument otherwise). Every other pointer must be 16-byte aligned (tpcInvalidArgument
 * otherwise) and `hidden` a multiple of 8 up to 16384 (tpcNotSupported otherwise, for instance
 * the 18432 of the largest models).
 *
 * Where tpcomm's kernels take the message, one kernel does it all (push one-shot for few rows,
 * push two-shot for many); elsewhere NCCL all-reduces and a norm kernel follows. Every rank gets
 * bitwise identical results, given what tensor parallelism gives every rank alike: the same
 * residualIn, weight, eps and scale (the two-shot kernel uses the values of the rank that sums a
 * row for every rank's copy of it; nothing checks them). The two ways differ only as their
 * all-reduces do (the sign of a zero sum; NCCL's summation order for more than two ranks). Ordered
 * on `stream` and capturable, like tpcAllReduce; with an FP8 output on a rank driven with others
 * from one thread, NCCL's path needs the rows of all such calls in one group to fit the staging
 * buffer together (tpcInvalidUsage otherwise, and the call issues nothing: a rank of another
 * process, alone there, chunks the same call through its staging buffer and waits in NCCL for
 * this one without end, so size stagingBytes for such groups where processes hold different
 * numbers of ranks). Where a small pushBytes leaves a kernel's receive buffers no room for a row,
 * NCCL carries the call, or else the other push kernel if its buffers hold a row (tpcInvalidUsage
 * if neither does). rows == 0 does nothing. */
tpcResult_t tpcAllReduceAddRmsNorm(const void* sendbuff, const void* residualIn, void* residualOut,
                                   const void* weight, void* normOut, size_t rows, size_t hidden,
                                   float eps, tpcDataType_t datatype, tpcDataType_t normType,
                                   const float* normScale, tpcComm_t comm, cudaStream_t stream);

/* Zero-copy all-reduces: the pull kernels (tpcAlgoOneShot, tpcAlgoTwoShot) read every rank's
 * input where it lies instead of copying it into a staging buffer first (out-of-place calls only;
 * an in-place call always stages). The push kernels, which the default algorithm table chooses,
 * read only the rank's own input and need no registration.
 *
 * With config.zeroCopyGraphs set, every all-reduce a pull kernel carries that is captured into a
 * CUDA graph records its input and reads its peers' inputs through a slot of its own (one whose
 * input lies in a buffer registered with tpcCommRegister reads through that registration, at the
 * same offsets on every rank, as an eager call does). After capturing (one or several graphs, on
 * one or several streams), every rank calls tpcCommRegisterGraphBuffers, which exchanges the
 * recorded inputs in call order (ranks may allocate differently) and maps each peer allocation.
 * Where ranks captured different numbers of such calls since the last registration (a capture
 * invalidated after a call, one ended and never instantiated on some rank), it fails on every rank
 * and drops them all: capture again. A graph launched before that fails: its kernels stop at once
 * and the communicator reports tpcInvalidUsage, as do calls whose ranks read their peers
 * differently (through registrations at different offsets, or a registration on one rank and a
 * slot of its own on another). Inputs in cudaMalloc memory and in cuMem memory exported as POSIX
 * file descriptors (PyTorch's expandable segments) are read in place; other memory is copied
 * through staging for that call, with an INFO line. The slots and the peer mappings are kept
 * until tpcCommDestroy, also after the graphs are destroyed: the peers keep a captured input's
 * memory mapped until then. Collective. */
tpcResult_t tpcCommRegisterGraphBuffers(tpcComm_t comm);

/* Registers `size` bytes at `buff` for eager zero-copy calls: an out-of-place all-reduce whose
 * input lies inside a registered buffer reads every rank's registered buffer at the same offset,
 * so every rank must register its own buffer and call with the same offsets into it (a call
 * whose ranks' offsets differ fails, and the communicator reports tpcInvalidUsage). A buffer
 * that overlaps one the rank registered before is refused (tpcInvalidUsage) on every rank.
 * Collective; *handle names the registration until tpcCommDeregister. */
tpcResult_t tpcCommRegister(tpcComm_t comm, void* buff, size_t size, void** handle);

/* Waits for this rank's work on its device, then, with every rank, forgets a registration and
 * unmaps its peers' buffers. Collective. */
tpcResult_t tpcCommDeregister(tpcComm_t comm, void* handle);

/* Device memory a rank holds, for comparisons with NCCL's footprint. */
typedef struct {
  size_t deviceBytes;  /* this rank's own: signals, staging, scratch, receive buffers, slots */
  size_t hostBytes;    /* pinned host memory */
  size_t peerBytes;    /* peers' memory mapped into this process (shared buffers, registered
                          buffers), summed over mappings: an allocation mapped for several
                          registrations counts each time; peers in the same process count only
                          with cuMem memory on another device, which is mapped as another
                          process's */
  int slotsUsed;       /* zero-copy slots taken by captured calls and registrations */
  int slotsStaged;     /* ... of which copy through staging (memory that cannot be shared) */
  int slots;           /* all zero-copy slots */
  size_t stagingBytes; /* of deviceBytes: the pull kernels' staging and scratch buffers */
  size_t receiveBytes; /* of deviceBytes: the push kernels' receive buffers */
} tpcMemoryInfo_t;

tpcResult_t tpcCommGetMemoryInfo(tpcComm_t comm, tpcMemoryInfo_t* info);

/* A short description of a result code. Never NULL. */
const char* tpcGetErrorString(tpcResult_t result);

/* A sentence on the most recent failure of `comm`: what failed, on which rank, and why. With
 * comm == NULL, the most recent failure on the calling thread (for example of an init call).
 * The text stays valid until the next call on the same communicator or thread. Never NULL. */
const char* tpcCommGetLastError(tpcComm_t comm);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* TPCOMM_TPCOMM_H_ */
