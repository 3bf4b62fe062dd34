"""tpcomm: the intra-node all-reduce for tensor-parallel inference, from Python.

Tensors are anything that speaks DLPack and lives in CUDA memory: PyTorch tensors, CuPy and JAX
arrays. Calls are asynchronous and ordered on a stream: PyTorch's current stream for PyTorch
tensors, CuPy's for CuPy arrays, ``stream=`` for anything else (an integer handle or an object
with ``cuda_stream``, ``ptr`` or ``__cuda_stream__``).

    import torch, torch.distributed as dist, tpcomm
    dist.init_process_group("gloo")                     # or any backend, one process per GPU
    torch.cuda.set_device(dist.get_rank())
    with tpcomm.Communicator.from_process_group() as comm:
        x = torch.randn(4096, device="cuda", dtype=torch.bfloat16)
        comm.all_reduce(x)                              # in place; works inside torch.cuda.graph

Failures raise :class:`Error`, carrying the library's result code and its sentence on what failed,
on which rank and why; so do arguments only the library checks (buffers that overlap or are
misaligned, sizes it does not take). Wrong Python types, shapes and devices raise ``TypeError`` or
``ValueError`` before anything reaches the GPU.

Where one process drives several ranks (a thread each) and a call goes to NCCL, each rank's
thread brackets its call with :func:`group`, as C brackets it with tpcGroupStart and tpcGroupEnd.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import socket
import sys
from typing import Any, Iterator, NamedTuple, Optional, Tuple

from . import _tpcomm

__all__ = [
    "Communicator",
    "DataType",
    "Error",
    "MAX_RANKS",
    "MemoryInfo",
    "PathInfo",
    "Result",
    "group",
    "unique_id",
]

_code = _tpcomm.version()
__version__ = f"{_code // 10000}.{_code // 100 % 100}.{_code % 100}"

UNIQUE_ID_BYTES: int = _tpcomm.UNIQUE_ID_BYTES
MAX_RANKS: int = _tpcomm.MAX_RANKS  # the most ranks a communicator joins


class Result(enum.IntEnum):
    """tpcResult_t: the library's result codes."""

    SUCCESS = 0
    UNHANDLED_CUDA_ERROR = 1
    SYSTEM_ERROR = 2
    INTERNAL_ERROR = 3
    INVALID_ARGUMENT = 4
    INVALID_USAGE = 5
    REMOTE_ERROR = 6
    TIMEOUT = 7
    NOT_SUPPORTED = 8


class DataType(enum.IntEnum):
    """tpcDataType_t, numbered as NCCL's types are."""

    INT8 = 0
    UINT8 = 1
    INT32 = 2
    UINT32 = 3
    INT64 = 4
    UINT64 = 5
    FLOAT16 = 6
    FLOAT32 = 7
    FLOAT64 = 8
    BFLOAT16 = 9
    FLOAT8_E4M3 = 10
    FLOAT8_E5M2 = 11


class Error(RuntimeError):
    """A call the library refused or that failed: ``code`` is a :class:`Result`, ``message`` the
    library's sentence (tpcCommGetLastError)."""

    def __init__(self, code: int, message: str) -> None:
        self.code = Result(code)
        self.message = message
        super().__init__(f"{_tpcomm.error_string(int(code))} ({self.code.name}): {message}")

    def __reduce__(self) -> Any:
        # Raised in a worker process, it crosses back pickled (multiprocessing, Ray).
        return (type(self), (int(self.code), self.message))


@dataclasses.dataclass(frozen=True)
class PathInfo:
    """How a communicator carries its calls (tpcCommGetPathInfo)."""

    custom_path: bool  # tpcomm's kernels take the sizes its algorithm table gives them
    nccl_available: bool  # NCCL takes the rest
    p2p_verified: bool  # writes through every peer mapping were verified
    reason: str
    nccl: str


@dataclasses.dataclass(frozen=True)
class MemoryInfo:
    """Memory a rank holds (tpcCommGetMemoryInfo)."""

    device_bytes: int
    host_bytes: int
    peer_bytes: int
    staging_bytes: int
    receive_bytes: int
    slots_used: int
    slots_staged: int
    slots: int


_REDUCE_OPS = {"sum": 0, "prod": 1, "max": 2, "min": 3, "avg": 4}
_ALGORITHMS = {
    0: "auto",
    1: "oneshot",
    2: "twoshot",
    3: "nccl",
    4: "push-oneshot",
    5: "push-twoshot",
}


@contextlib.contextmanager
def group() -> Iterator[None]:
    """tpcGroupStart and tpcGroupEnd around the block, on this thread: where one process drives
    several ranks, a call NCCL carries must be bracketed so on each rank's thread (NCCL issues
    the calls at the group's end, which releases the GIL). Groups nest. Where the block raised,
    the group still ends and the block's exception is the one that propagates."""
    code = _tpcomm.group_start()
    if code != 0:
        raise Error(code, _tpcomm.last_error(0))
    try:
        yield
    except BaseException:
        _tpcomm.group_end()
        raise
    code = _tpcomm.group_end()
    if code != 0:
        raise Error(code, _tpcomm.last_error(0))


def unique_id() -> bytes:
    """A new rendezvous for one communicator: create it once, hand the same bytes (they pickle) to
    every rank. Makes no CUDA call."""
    code, uid = _tpcomm.unique_id()
    if code != 0:
        raise Error(code, _tpcomm.last_error(0))
    return uid


class _Buffer(NamedTuple):
    ptr: int
    count: int
    last: int  # the size of the last dimension
    dtype: int
    device: int
    torch: bool


def _torch_types(torch: Any) -> dict:
    types = {
        torch.float32: DataType.FLOAT32,
        torch.float16: DataType.FLOAT16,
        torch.bfloat16: DataType.BFLOAT16,
        torch.float64: DataType.FLOAT64,
        torch.int8: DataType.INT8,
        torch.uint8: DataType.UINT8,
        torch.int32: DataType.INT32,
        torch.int64: DataType.INT64,
    }
    for name, dtype in (("float8_e4m3fn", DataType.FLOAT8_E4M3),
                        ("float8_e5m2", DataType.FLOAT8_E5M2)):
        if hasattr(torch, name):
            types[getattr(torch, name)] = dtype
    return types


_torch_type_table: Optional[dict] = None


def _describe(x: Any, what: str = "tensor") -> _Buffer:
    """Address, size, type and device of a CUDA tensor; TypeError or ValueError for anything
    else. PyTorch tensors are read directly (the common case, kept cheap); others via DLPack."""
    global _torch_type_table
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        if _torch_type_table is None:
            _torch_type_table = _torch_types(torch)
        dtype = _torch_type_table.get(x.dtype)
        if dtype is None:
            raise TypeError(f"tpcomm has no type for the {what}'s {x.dtype}")
        if not x.is_contiguous():
            raise ValueError(f"tpcomm needs a contiguous {what}")
        if not x.is_cuda:
            raise ValueError(f"tpcomm needs the {what} in CUDA device memory; it is on {x.device}")
        return _Buffer(x.data_ptr(), x.numel(), x.shape[-1] if x.dim() else 1, int(dtype),
                       x.get_device(), True)
    try:
        ptr, count, last, dtype, code, bits, device_type, device, dense = _tpcomm.describe(x)
    except TypeError:
        raise TypeError(f"tpcomm needs the {what} as a DLPack tensor or array (PyTorch, CuPy, "
                        f"JAX); got {type(x).__name__}") from None
    if dtype < 0:
        raise TypeError(f"tpcomm has no type for the {what}'s DLPack type (code {code}, "
                        f"{bits} bits)")
    if not dense:
        raise ValueError(f"tpcomm needs a contiguous {what}")
    if device_type not in (_tpcomm.DEVICE_CUDA, _tpcomm.DEVICE_CUDA_MANAGED):
        where = "host memory" if device_type == 1 else f"DLPack device type {device_type}"
        raise ValueError(f"tpcomm needs the {what} in CUDA device memory; it is in {where}")
    return _Buffer(ptr, count, last, dtype, device, False)


def _stream_handle(stream: Any, x: Any, buf: _Buffer) -> int:
    """The stream a call goes on: `stream` when given, else the framework's current stream."""
    if stream is not None:
        if isinstance(stream, int):
            return stream
        if hasattr(stream, "__cuda_stream__"):
            return int(stream.__cuda_stream__()[1])
        for attr in ("cuda_stream", "ptr", "handle"):
            if hasattr(stream, attr):
                return int(getattr(stream, attr))
        raise TypeError(f"stream= takes an integer handle or a CUDA stream object, not "
                        f"{type(stream).__name__}")
    if buf.torch:
        torch = sys.modules["torch"]
        raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
        if raw is not None:
            return int(raw(buf.device))
        return int(torch.cuda.current_stream(buf.device).cuda_stream)
    if type(x).__module__.startswith("cupy"):
        cupy = sys.modules["cupy"]
        with cupy.cuda.Device(buf.device):  # CuPy keeps a current stream per device
            return int(cupy.cuda.get_current_stream().ptr)
    return 0


class Communicator:
    """One rank of a tpcomm communicator, on one CUDA device.

    ``Communicator(uid, rank, size, device)`` joins the ranks that were handed the same
    :func:`unique_id`; it blocks until every rank has joined (collective). ``device`` defaults to
    PyTorch's current device when PyTorch is loaded, else ``rank % device count``.

    ``nccl``: let an NCCL communicator of tpcomm's own carry what its kernels should not (other
    types and operations, sizes the algorithm table gives NCCL). ``zero_copy_graphs``: captured
    calls read their peers' inputs in place, once :meth:`register_graph_buffers` (or
    :meth:`graph_capture`) has run after capture. ``timeout_ms`` bounds every wait on a peer
    (0: the library's default).

    Use it as a context manager, or call :meth:`close`: a communicator is not closed when garbage
    collected, since closing waits for its device.
    """

    def __init__(self, unique_id: bytes, rank: int, size: int, device: Optional[int] = None, *,
                 nccl: bool = True, zero_copy_graphs: bool = False, timeout_ms: int = 0) -> None:
        if not isinstance(unique_id, (bytes, bytearray)):
            raise TypeError(f"unique_id must be the bytes of tpcomm.unique_id(), not "
                            f"{type(unique_id).__name__}")
        if len(unique_id) != UNIQUE_ID_BYTES:
            raise ValueError(f"a unique id is {UNIQUE_ID_BYTES} bytes, not {len(unique_id)}")
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive number of ranks, not {size!r}")
        if size > MAX_RANKS:
            raise ValueError(f"size {size}: a communicator joins at most {MAX_RANKS} ranks")
        if not isinstance(rank, int) or not 0 <= rank < size:
            raise ValueError(f"rank must be in [0, {size}), not {rank!r}")
        if timeout_ms < 0:
            raise ValueError("timeout_ms must not be negative")
        if device is None:
            device = _default_device(rank)
        self._handle = 0
        # The thread's current device stays as it was.
        code, handle, why = _tpcomm.comm_init(size, bytes(unique_id), rank, int(device),
                                              int(timeout_ms), bool(nccl), bool(zero_copy_graphs))
        if code != 0:
            raise Error(code, why)
        self._handle = handle
        self._rank = rank
        self._size = size
        self._device = int(device)

    @classmethod
    def from_process_group(cls, group: Any = None, device: Optional[int] = None,
                           **config: Any) -> "Communicator":
        """A communicator of the ranks of a ``torch.distributed`` process group (the default group
        when None), which must all be on this host; its rank 0 makes the id and the group hands
        it to the others. Collective over the group. ``config`` as for the constructor."""
        import torch
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised: call "
                               "torch.distributed.init_process_group first")
        rank = dist.get_rank(group)
        size = dist.get_world_size(group)
        if size > MAX_RANKS:
            raise ValueError(f"the process group has {size} ranks; a tpcomm communicator joins at "
                             f"most {MAX_RANKS}: make a group of at most {MAX_RANKS} ranks of one "
                             f"host (one tensor-parallel group)")
        hosts: list = [None] * size
        dist.all_gather_object(hosts, socket.gethostname(), group=group)
        if len(set(hosts)) != 1:
            raise ValueError(f"the process group has {size} ranks on {len(set(hosts))} hosts "
                             f"({', '.join(sorted(set(hosts)))}); a tpcomm communicator joins "
                             f"ranks of one host: make a group of each host's ranks")
        uid = [unique_id() if rank == 0 else None]
        source = dist.get_global_rank(group, 0) if group is not None else 0
        dist.broadcast_object_list(uid, src=source, group=group)
        if device is None:
            device = torch.cuda.current_device()
        return cls(uid[0], rank, size, device, **config)

    def __reduce__(self) -> Any:
        # The handle is an address in this process: a copy elsewhere would crash there.
        raise TypeError("a tpcomm Communicator belongs to the process that made it and cannot be "
                        "pickled or copied: make one in each process (from_process_group)")

    # -- properties ----------------------------------------------------------------------------

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def size(self) -> int:
        return self._size

    @property
    def device(self) -> int:
        """The CUDA device index of this rank."""
        return self._device

    @property
    def closed(self) -> bool:
        return self._handle == 0

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"device {self._device}"
        return f"<tpcomm.Communicator rank {self._rank} of {self._size}, {state}>"

    # -- collectives ---------------------------------------------------------------------------

    def all_reduce(self, x: Any, out: Any = None, *, op: str = "sum", stream: Any = None) -> Any:
        """Reduces ``x`` over all ranks into ``out`` (into ``x`` when None) and returns it.
        float32, float16 and bfloat16 sums go through tpcomm's kernels; other types and operations
        go to NCCL where the communicator has it. Capturable in a CUDA graph."""
        handle = self._live()
        src = _describe(x, "input")
        dst = src if out is None or out is x else _describe(out, "output")
        if dst.count != src.count or dst.dtype != src.dtype:
            raise ValueError(f"out must have the input's size and type: {dst.count} elements of "
                             f"{DataType(dst.dtype).name} for {src.count} of "
                             f"{DataType(src.dtype).name}")
        self._check_device(src)
        self._check_device(dst)
        opcode = _REDUCE_OPS.get(op)
        if opcode is None:
            raise ValueError(f"op must be one of {', '.join(_REDUCE_OPS)}, not {op!r}")
        code = _tpcomm.all_reduce(handle, src.ptr, dst.ptr, src.count, src.dtype, opcode,
                                  _stream_handle(stream, x, src))
        if code != 0:
            raise self._error(code)
        return x if out is None else out

    def all_reduce_rmsnorm(self, x: Any, residual: Any, weight: Any, eps: float = 1e-6, *,
                           out: Any = None, residual_out: Any = None, scale: Any = None,
                           stream: Any = None) -> Tuple[Any, Any]:
        """The end of a transformer block in one kernel, on rows of the last dimension of ``x``:

            residual_out = residual + all_reduce(x)
            out = rmsnorm(residual_out) * weight  [/ scale, for an FP8 out]

        ``x``, ``residual`` and ``weight`` (one row) are float16 or bfloat16 alike. By default
        the new residual replaces ``residual`` and the normalised rows replace ``x``; pass ``out``
        (same type as x, or float8 e4m3/e5m2 with ``scale``, a one-element float32 CUDA tensor)
        and ``residual_out`` to keep them. Returns ``(out, residual_out)``."""
        handle = self._live()
        src = _describe(x, "input")
        res = _describe(residual, "residual")
        w = _describe(weight, "weight")
        res_out = res if residual_out is None else _describe(residual_out, "residual_out")
        dst = src if out is None else _describe(out, "output")
        for buf in (src, res, w, res_out, dst):
            self._check_device(buf)
        hidden = src.last
        if hidden == 0 or src.count % hidden != 0:
            raise ValueError("x must hold whole rows")
        if res.count != src.count or res_out.count != src.count or dst.count != src.count:
            raise ValueError(f"residual, residual_out and out must have x's {src.count} elements")
        if w.count != hidden:
            raise ValueError(f"weight must have one row of {hidden} elements, not {w.count}")
        if len({src.dtype, res.dtype, res_out.dtype, w.dtype}) != 1:
            raise TypeError("x, residual, residual_out and weight must share one type")
        if dst.dtype not in (src.dtype, DataType.FLOAT8_E4M3, DataType.FLOAT8_E5M2):
            raise TypeError(f"out must be x's type ({DataType(src.dtype).name}) or float8 "
                            f"e4m3/e5m2, not {DataType(dst.dtype).name}")
        scale_ptr = 0
        if dst.dtype in (DataType.FLOAT8_E4M3, DataType.FLOAT8_E5M2):
            if scale is None:
                raise ValueError("an FP8 out needs scale=, a float32 CUDA tensor of one element")
            sc = _describe(scale, "scale")
            if sc.dtype != DataType.FLOAT32 or sc.count != 1:
                raise ValueError("scale must be one float32 element")
            self._check_device(sc)
            scale_ptr = sc.ptr
        elif scale is not None:
            raise ValueError("scale= goes with an FP8 out only; this out is x's type")
        code = _tpcomm.all_reduce_add_rmsnorm(handle, src.ptr, res.ptr, res_out.ptr, w.ptr,
                                              dst.ptr, src.count // hidden, hidden, float(eps),
                                              src.dtype, dst.dtype, scale_ptr,
                                              _stream_handle(stream, x, src))
        if code != 0:
            raise self._error(code)
        return (x if out is None else out, residual if residual_out is None else residual_out)

    # -- CUDA graphs ---------------------------------------------------------------------------

    def register_graph_buffers(self) -> None:
        """After capturing graphs on a ``zero_copy_graphs`` communicator: exchanges the captured
        calls' inputs so that their kernels read peers' memory in place. Collective; a graph of
        such calls must not be replayed before it. Harmless (but still collective) otherwise."""
        code = _tpcomm.register_graph_buffers(self._live())
        if code != 0:
            raise self._error(code)

    @contextlib.contextmanager
    def graph_capture(self) -> Iterator["Communicator"]:
        """Wraps the capture of one or more graphs and registers their buffers on the way out
        (only when the block raised nothing)::

            with comm.graph_capture():
                with torch.cuda.graph(g):
                    comm.all_reduce(x)
            g.replay()
        """
        yield self
        self.register_graph_buffers()

    # -- queries -------------------------------------------------------------------------------

    def path_info(self) -> PathInfo:
        code, *fields = _tpcomm.path_info(self._live())
        if code != 0:
            raise self._error(code)
        return PathInfo(*fields)

    def memory_info(self) -> MemoryInfo:
        code, *fields = _tpcomm.memory_info(self._live())
        if code != 0:
            raise self._error(code)
        return MemoryInfo(*fields)

    def algorithm(self, x: Any) -> str:
        """The algorithm an eager all_reduce of ``x`` would take: push-oneshot, push-twoshot,
        oneshot, twoshot or nccl."""
        buf = _describe(x, "tensor")
        code, algo = _tpcomm.algorithm(self._live(), buf.count, buf.dtype)
        if code != 0:
            raise self._error(code)
        return _ALGORITHMS.get(algo, str(algo))

    def rmsnorm_algorithm(self, x: Any) -> str:
        """The algorithm all_reduce_rmsnorm on the rows of ``x`` (its last dimension) would take:
        push-oneshot or push-twoshot (the fused kernel), or nccl (NCCL, then the norm kernel)."""
        buf = _describe(x, "input")
        if buf.last == 0 or buf.count % buf.last != 0:
            raise ValueError("x must hold whole rows")
        code, algo = _tpcomm.rmsnorm_algorithm(self._live(), buf.count // buf.last, buf.last,
                                               buf.dtype)
        if code != 0:
            raise self._error(code)
        return _ALGORITHMS.get(algo, str(algo))

    def check(self) -> None:
        """Raises the error a kernel of this communicator hit since (a timed-out wait on a peer,
        a peer's failure, mismatched calls), without issuing any work."""
        code = _tpcomm.async_error(self._live())
        if code != 0:
            raise self._error(code)

    # -- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        """Waits for this rank's work on its device and frees the rank. Not collective; closing
        twice does nothing."""
        if self._handle:
            handle, self._handle = self._handle, 0
            code = _tpcomm.comm_destroy(handle)
            if code != 0:
                raise Error(code, _tpcomm.last_error(0))

    def abort(self) -> None:
        """Stops the rank at once: its kernels end, its peers fail naming it. Never waits for a
        peer, nor longer than the timeout for other work on the device (see tpcCommAbort)."""
        if self._handle:
            handle, self._handle = self._handle, 0
            _tpcomm.comm_abort(handle)

    def __enter__(self) -> "Communicator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- helpers -------------------------------------------------------------------------------

    def _live(self) -> int:
        if not self._handle:
            raise Error(Result.INVALID_USAGE, f"rank {self._rank}: the communicator is closed")
        return self._handle

    def _check_device(self, buf: _Buffer) -> None:
        if buf.device != self._device:
            raise ValueError(f"rank {self._rank} lives on cuda:{self._device}, the tensor on "
                             f"cuda:{buf.device}")

    def _error(self, code: int) -> Error:
        return Error(code, _tpcomm.last_error(self._handle))


def _default_device(rank: int) -> int:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return torch.cuda.current_device()
    count = _tpcomm.device_count()
    return rank % count if count > 0 else 0
