"""The Python package on GPUs: two rank processes, on two GPUs or sharing one (whose kernels then
time-slice: slow, so every scenario makes few calls). Each scenario runs in fresh processes
(_workers.py) and fails with every check any rank failed."""

import multiprocessing
import os
import queue as queue_module
import time

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

import _workers  # noqa: E402  (beside this file; spawned ranks import it by name)
import tpcomm  # noqa: E402

RANKS = 2
TIMEOUT_S = 600


def run_ranks(target, make_args, env=None):
    """Starts RANKS spawned processes running target(rank, RANKS, *make_args(rank), queue)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        procs = [ctx.Process(target=target, args=(r, RANKS, *make_args(r), queue))
                 for r in range(RANKS)]
        for p in procs:
            p.start()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    failures, reported = [], set()
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while len(reported) < RANKS and time.monotonic() < deadline:
            try:
                rank, fails = queue.get(timeout=1)
            except queue_module.Empty:
                # A rank that died without reporting fails the test now, not at the deadline.
                dead = [r for r, p in enumerate(procs) if r not in reported and not p.is_alive()]
                if dead and queue.empty():
                    break
                continue
            reported.add(rank)
            failures += fails
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    missing = set(range(RANKS)) - reported
    assert not missing, (f"ranks {sorted(missing)} reported nothing (exit codes "
                         f"{[p.exitcode for p in procs]})")
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("allocator", ["", "expandable_segments:True"])
def test_tensors_graphs_and_norm(tmp_path, allocator):
    uids = [tpcomm.unique_id(), tpcomm.unique_id(), str(tmp_path / "nccl-rendezvous")]
    run_ranks(_workers.tensors_and_graphs, lambda r: (uids,),
              env={"PYTORCH_CUDA_ALLOC_CONF": allocator} if allocator else None)


def test_from_process_group(tmp_path):
    run_ranks(_workers.process_group, lambda r: (str(tmp_path / "store"), None))


def test_a_group_over_two_hosts_is_refused(tmp_path):
    run_ranks(_workers.process_group, lambda r: (str(tmp_path / "store"), "elsewhere"))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs a GPU per rank")
def test_one_process_drives_two_ranks_through_nccl_in_groups():
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_workers.ranks_on_threads, args=(tpcomm.unique_id(), queue))
    proc.start()
    try:
        _, failures = queue.get(timeout=TIMEOUT_S)
    finally:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
    if failures == ["no NCCL"]:
        pytest.skip("no NCCL here")
    assert not failures, "\n".join(failures)


def test_cupy_arrays():
    pytest.importorskip("cupy")
    uid = tpcomm.unique_id()
    run_ranks(_workers.cupy_arrays, lambda r: (uid,))
