"""Rank processes of the GPU tests (test_gpu.py). Each runs a scenario on its rank and reports
the checks that failed (an empty list when all passed) through a queue. Ranks take GPU
rank % device count, so two ranks share one GPU on a one-GPU machine."""

import socket
import traceback


def _inputs(torch, rank, n, dtype, seed=0):
    g = torch.Generator().manual_seed(1000003 * seed + 7919 * rank + n)
    return (torch.randn(n, generator=g) * 3).to(dtype)


def _expected(torch, size, n, dtype, seed=0):
    # Rank order, accumulated in float32 and rounded once: what tpcomm gives, and NCCL's sum of
    # two ranks, bit for bit.
    total = _inputs(torch, 0, n, dtype, seed).float()
    for r in range(1, size):
        total = total + _inputs(torch, r, n, dtype, seed).float()
    return total.to(dtype)


class _Checks:
    def __init__(self, rank):
        self.rank = rank
        self.failures = []

    def equal(self, what, got, want):
        import torch

        if got.dtype != want.dtype or got.shape != want.shape:
            self.failures.append(f"rank {self.rank}: {what}: {got.dtype}{list(got.shape)} vs "
                                 f"{want.dtype}{list(want.shape)}")
            return
        a, b = got.detach().cpu().contiguous(), want.detach().cpu().contiguous()
        if not torch.equal(a.view(_int_of(torch, a)), b.view(_int_of(torch, b))):
            diff = (got.cpu().float() - want.cpu().float()).abs().max().item()
            self.failures.append(f"rank {self.rank}: {what}: not bitwise equal (max |diff| {diff})")

    def raises(self, what, kind, words, fn):
        try:
            fn()
        except kind as e:
            if words not in str(e):
                self.failures.append(f"rank {self.rank}: {what}: {kind.__name__} without "
                                     f"'{words}': {e}")
            return e
        except Exception as e:  # noqa: BLE001
            self.failures.append(f"rank {self.rank}: {what}: {type(e).__name__} instead of "
                                 f"{kind.__name__}: {e}")
            return None
        self.failures.append(f"rank {self.rank}: {what}: nothing raised")
        return None

    def true(self, what, condition):
        if not condition:
            self.failures.append(f"rank {self.rank}: {what}")


def _int_of(torch, t):
    return {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}[t.element_size()]


def _tensors(torch, tpcomm, comm, check, size, device, gpus):
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for n in (1, 1000, 3 * 2**20 + 5):
            want = _expected(torch, size, n, dtype).to(device)
            x = _inputs(torch, comm.rank, n, dtype).to(device)
            out = torch.empty_like(x)
            check.true("out of place returns out", comm.all_reduce(x, out) is out)
            check.equal(f"{dtype} x {n} out of place", out, want)
            check.equal(f"{dtype} x {n} input untouched", x,
                        _inputs(torch, comm.rank, n, dtype).to(device))
            check.true("in place returns x", comm.all_reduce(x) is x)
            check.equal(f"{dtype} x {n} in place", x, want)
    # Shapes are only sizes: a matrix reduces as its elements.
    m = _inputs(torch, comm.rank, 4096, torch.bfloat16).to(device).view(64, 64)
    comm.all_reduce(m)
    check.equal("64 x 64 matrix", m.view(-1), _expected(torch, size, 4096, torch.bfloat16).to(device))

    # Types tpcomm's kernels lack go to NCCL, which cannot run two ranks on one GPU.
    ints = torch.full((1000,), comm.rank + 1, dtype=torch.int32, device=device)
    if gpus >= size:
        comm.all_reduce(ints)
        check.equal("int32 through NCCL", ints,
                    torch.full((1000,), size * (size + 1) // 2, dtype=torch.int32, device=device))
    else:
        e = check.raises("int32 without NCCL", tpcomm.Error, "", lambda: comm.all_reduce(ints))
        check.true(f"int32 without NCCL is NOT_SUPPORTED ({e})",
                   e is not None and e.code is tpcomm.Result.NOT_SUPPORTED)
    x = torch.ones(8, device=device)
    check.raises("a host tensor", ValueError, "it is on cpu", lambda: comm.all_reduce(x.cpu()))
    check.raises("a strided tensor", ValueError, "contiguous",
                 lambda: comm.all_reduce(torch.ones(8, 8, device=device)[:, ::2]))
    check.raises("complex", TypeError, "no type", lambda: comm.all_reduce(x.to(torch.complex64)))
    check.raises("out too small", ValueError, "out must have the input's size",
                 lambda: comm.all_reduce(x, torch.empty(4, device=device)))
    check.raises("out of another type", ValueError, "out must have",
                 lambda: comm.all_reduce(x, torch.empty(8, device=device, dtype=torch.half)))
    check.raises("unknown op", ValueError, "op must be one of", lambda: comm.all_reduce(x, op="xor"))
    if gpus > 1:
        other = (device + 1) % gpus
        check.raises("a tensor of another GPU", ValueError, f"the tensor on cuda:{other}",
                     lambda: comm.all_reduce(torch.ones(8, device=other)))


def _graphs(torch, tpcomm, comm, zero_copy_comm, check, size, device):
    n = 12345
    for c, out_of_place in ((comm, False), (zero_copy_comm, True)):
        static_in = torch.empty(n, dtype=torch.bfloat16, device=device)
        static_out = torch.empty_like(static_in)
        static_in.copy_(_inputs(torch, c.rank, n, torch.bfloat16, seed=100))
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):  # warm-up outside the graph, as PyTorch advises
            c.all_reduce(static_in, static_out if out_of_place else None)
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with c.graph_capture():
            with torch.cuda.graph(graph):
                c.all_reduce(static_in, static_out if out_of_place else None)
        for seed in (1, 2, 3):
            static_in.copy_(_inputs(torch, c.rank, n, torch.bfloat16, seed))
            graph.replay()
            got = static_out if out_of_place else static_in
            check.equal(f"graph replay {seed}{' zero-copy' if out_of_place else ''}", got,
                        _expected(torch, size, n, torch.bfloat16, seed).to(device))
        torch.cuda.synchronize(device)


def _rmsnorm(torch, tpcomm, comm, check, size, device):
    rows, hidden, eps = 5, 4096, 1e-6
    dtype = torch.bfloat16
    x = _inputs(torch, comm.rank, rows * hidden, dtype, seed=9).to(device).view(rows, hidden)
    residual = _inputs(torch, 0, rows * hidden, dtype, seed=10).to(device).view(rows, hidden)
    weight = (1 + 0.1 * _inputs(torch, 0, hidden, torch.float32, seed=11)).to(dtype).to(device)
    summed = _expected(torch, size, rows * hidden, dtype, seed=9).to(device).view(rows, hidden)
    want_residual = (summed.float() + residual.float()).to(dtype)
    r = want_residual.float()
    want = (r * torch.rsqrt(r.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(dtype)

    out, new_residual = comm.all_reduce_rmsnorm(x, residual.clone(), weight, eps,
                                                out=torch.empty_like(x),
                                                residual_out=torch.empty_like(x))
    check.equal("rmsnorm residual", new_residual, want_residual)
    ulps = ((out.float() - want.float()).abs() / want.float().abs().clamp_min(1e-3)).max().item()
    check.true(f"rmsnorm output within one bf16 rounding ({ulps})", ulps <= 2 ** -7)
    # In place: x becomes the normalised rows, residual the new residual.
    res = residual.clone()
    got, got_res = comm.all_reduce_rmsnorm(x, res, weight, eps)
    check.true("in place returns x and residual", got is x and got_res is res)
    check.equal("in place rmsnorm residual", res, want_residual)
    check.equal("in place matches out of place", x, out)
    check.raises("weight of another size", ValueError, "weight must have one row",
                 lambda: comm.all_reduce_rmsnorm(x, res, weight[:100]))
    check.raises("fp8 without scale", ValueError, "scale",
                 lambda: comm.all_reduce_rmsnorm(
                     x, res, weight, out=torch.empty(rows, hidden, device=device,
                                                     dtype=torch.float8_e4m3fn)))
    check.raises("scale without fp8", ValueError, "FP8 out only",
                 lambda: comm.all_reduce_rmsnorm(
                     x, res, weight, scale=torch.ones(1, device=device)))
    check.raises("out of another type", TypeError, "out must be x's type",
                 lambda: comm.all_reduce_rmsnorm(x, res, weight,
                                                 out=torch.empty_like(x, dtype=torch.float16)))
    _rmsnorm_fp8(torch, comm, check, device, rows, hidden, eps, weight, want_residual)


class _DLPackOnly:
    """A tensor seen only through DLPack, as tpcomm sees CuPy's or JAX's."""

    def __init__(self, tensor):
        self.tensor = tensor

    def __dlpack__(self, **kwargs):
        return self.tensor.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.tensor.__dlpack_device__()


def _rmsnorm_fp8(torch, comm, check, device, rows, hidden, eps, weight, want_residual):
    """FP8 e4m3 output with the caller's scale: within one e4m3 step of the quantised reference,
    and the same bits whether the output comes as a PyTorch tensor or through DLPack."""
    scale = torch.full((1,), 0.25, device=device)
    r = want_residual.float()
    normed = r * torch.rsqrt(r.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    want = (normed / 0.25).to(torch.float8_e4m3fn).float()
    outs = []
    for wrap in (lambda t: t, _DLPackOnly):
        x = _inputs(torch, comm.rank, rows * hidden, torch.bfloat16, seed=9).to(device)
        residual = _inputs(torch, 0, rows * hidden, torch.bfloat16, seed=10).to(device)
        out = torch.empty(rows, hidden, device=device, dtype=torch.float8_e4m3fn)
        comm.all_reduce_rmsnorm(x.view(rows, hidden), residual.view(rows, hidden), weight, eps,
                                out=wrap(out), scale=scale)
        outs.append(out)
    for out, how in zip(outs, ("PyTorch", "DLPack")):
        # One e4m3 step: 2^-3 of the value among normal numbers, 2^-9 among subnormal ones.
        err = ((out.float() - want).abs() - want.abs() / 8).max().item()
        check.true(f"fp8 out through {how} within one e4m3 step ({err})", err <= 2 ** -9)
    check.equal("fp8 out through DLPack as through PyTorch", outs[1], outs[0])


def _queries(torch, tpcomm, comm, check, size, device):
    info = comm.path_info()
    check.true(f"path info ({info})", isinstance(info, tpcomm.PathInfo) and info.reason)
    mem = comm.memory_info()
    check.true(f"memory info ({mem})", isinstance(mem, tpcomm.MemoryInfo) and mem.device_bytes > 0)
    algo = comm.algorithm(torch.empty(4096, dtype=torch.bfloat16, device=device))
    check.true(f"algorithm ({algo})", algo in ("push-oneshot", "push-twoshot", "oneshot",
                                               "twoshot", "nccl"))
    rows = torch.empty(128, 5120, dtype=torch.bfloat16, device=device)
    fused = comm.rmsnorm_algorithm(rows)
    check.true(f"rmsnorm algorithm ({fused})", fused in ("push-oneshot", "push-twoshot", "nccl"))
    if size == 2:
        check.true(f"128 rows of 5120 (1.25 MB) stay one-shot ({fused})", fused == "push-oneshot")
        wide = comm.rmsnorm_algorithm(torch.empty(128, 8192, dtype=torch.bfloat16, device=device))
        check.true(f"128 rows of 8192 (2 MB) go two-shot ({wide})", wide == "push-twoshot")
    check.raises("rmsnorm algorithm of float32 rows", tpcomm.Error, "float32",
                 lambda: comm.rmsnorm_algorithm(rows.float()))
    comm.check()


def tensors_and_graphs(rank, size, uids, queue):
    """Every all_reduce form, errors, graphs (staged and zero-copy), the fused norm, queries."""
    check = _Checks(rank)
    try:
        import torch
        import tpcomm

        gpus = torch.cuda.device_count()
        device = rank % gpus
        torch.cuda.set_device(device)
        with tpcomm.Communicator(uids[0], rank, size) as comm, \
                tpcomm.Communicator(uids[1], rank, size, zero_copy_graphs=True) as zc:
            check.true(f"rank/size/device {comm}",
                       (comm.rank, comm.size, comm.device) == (rank, size, device))
            _tensors(torch, tpcomm, comm, check, size, device, gpus)
            _graphs(torch, tpcomm, comm, zc, check, size, device)
            _rmsnorm(torch, tpcomm, comm, check, size, device)
            _queries(torch, tpcomm, comm, check, size, device)
            if gpus >= size:
                _against_nccl(torch, comm, check, rank, size, device, uids[2])
        e = check.raises("a closed communicator", tpcomm.Error, "closed",
                         lambda: comm.all_reduce(torch.ones(1, device=device)))
        check.true("closed is INVALID_USAGE", e is not None and
                   e.code is tpcomm.Result.INVALID_USAGE)
        comm.close()  # a second close does nothing
    except Exception:  # noqa: BLE001
        check.failures.append(f"rank {rank}: {traceback.format_exc()}")
    queue.put((rank, check.failures))


def _against_nccl(torch, comm, check, rank, size, device, path):
    import torch.distributed as dist

    dist.init_process_group("nccl", init_method=f"file://{path}", rank=rank, world_size=size)
    try:
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for n in (7, 65536, 2**21):
                x = _inputs(torch, rank, n, dtype, seed=5).to(device)
                y = x.clone()
                comm.all_reduce(x)
                dist.all_reduce(y)
                check.equal(f"{dtype} x {n} against torch.distributed (NCCL)", x, y)
    finally:
        dist.destroy_process_group()


def process_group(rank, size, path, pretend_host, queue):
    """from_process_group over gloo; with pretend_host, rank 1 claims another host."""
    check = _Checks(rank)
    try:
        import torch
        import torch.distributed as dist
        import tpcomm

        device = rank % torch.cuda.device_count()
        torch.cuda.set_device(device)
        dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=size)
        if pretend_host is not None:
            # Only for the call: anything else that looked the name up would wait on DNS.
            real = socket.gethostname
            if rank == 1:
                socket.gethostname = lambda: pretend_host
            try:
                check.raises("a group over two hosts", ValueError, "ranks on 2 hosts",
                             lambda: tpcomm.Communicator.from_process_group())
            finally:
                socket.gethostname = real
        else:
            with tpcomm.Communicator.from_process_group(timeout_ms=60000) as comm:
                check.true(f"rank and size from the group ({comm})",
                           (comm.rank, comm.size, comm.device) == (rank, size, device))
                x = _inputs(torch, rank, 5000, torch.bfloat16).to(device)
                comm.all_reduce(x)
                check.equal("all_reduce", x, _expected(torch, size, 5000, torch.bfloat16).to(device))
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001
        check.failures.append(f"rank {rank}: {traceback.format_exc()}")
    queue.put((rank, check.failures))


def cupy_arrays(rank, size, uid, queue):
    """CuPy arrays on CuPy's current stream, in and out of place."""
    check = _Checks(rank)
    try:
        import cupy
        import numpy as np
        import tpcomm

        device = rank % cupy.cuda.runtime.getDeviceCount()
        cupy.cuda.Device(device).use()
        with tpcomm.Communicator(uid, rank, size, device) as comm:
            x = cupy.full(10000, rank + 1, dtype=cupy.float32)
            out = cupy.empty_like(x)
            comm.all_reduce(x, out)
            comm.all_reduce(x)
            want = np.full(10000, size * (size + 1) / 2, np.float32)
            check.true("cupy out of place", np.array_equal(cupy.asnumpy(out), want))
            check.true("cupy in place", np.array_equal(cupy.asnumpy(x), want))
    except Exception:  # noqa: BLE001
        check.failures.append(f"rank {rank}: {traceback.format_exc()}")
    queue.put((rank, check.failures))


def ranks_on_threads(uid, queue):
    """One process drives two ranks on two GPUs, a thread each: int32 sums go to NCCL, which each
    rank's thread brackets with tpcomm.group(); outside a group they are refused with a sentence.
    Reports ["no NCCL"] alone where there is none to test."""
    check = _Checks(0)
    try:
        import threading

        import torch
        import tpcomm

        size = 2
        comms = [None] * size

        def on_threads(fn):
            def guarded(r):
                try:
                    fn(r)
                except Exception:  # noqa: BLE001
                    check.failures.append(f"rank {r}: {traceback.format_exc()}")
            threads = [threading.Thread(target=guarded, args=(r,)) for r in range(size)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        def init(r):
            comms[r] = tpcomm.Communicator(uid, r, size, device=r, timeout_ms=60000)

        on_threads(init)
        if check.failures:
            raise RuntimeError("init failed")
        if not comms[0].path_info().nccl_available:
            check.failures = ["no NCCL"]
        else:
            def work(r):
                torch.cuda.set_device(r)
                x = torch.full((4096,), r + 1, dtype=torch.int32, device=r)
                check.raises(f"rank {r}: int32 outside a group", tpcomm.Error, "tpcGroupStart",
                             lambda: comms[r].all_reduce(x))
                with tpcomm.group():
                    comms[r].all_reduce(x)
                torch.cuda.synchronize(r)
                check.true(f"rank {r}: the int32 sum in a group", bool((x == 3).all().item()))

            on_threads(work)
        for comm in comms:
            comm.close()
    except Exception:  # noqa: BLE001
        check.failures.append(traceback.format_exc())
    queue.put((0, check.failures))
