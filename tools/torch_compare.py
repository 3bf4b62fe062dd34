#!/usr/bin/env python3
"""tpcomm's all-reduce against the ones PyTorch offers on the same GPUs, in one run: NCCL
(torch.distributed.all_reduce) and symmetric memory's one-shot and two-shot kernels
(torch.ops.symm_mem, on a rendezvoused buffer, multicast off). bf16, CUDA graphs, one process
per GPU. Every implementation's result is first checked against the exact sum; then each is timed
in a graph of N calls replayed R times on a zeroed buffer (repeated in-place sums of data would
overflow), and the slowest rank's time per call is reported.

usage: python3 tools/torch_compare.py [--sizes 8K,64K,...] [--json FILE]   (needs 2 or more GPUs)
"""

import argparse
import os

import torch
import torch.distributed as dist

from torch_ranks import run_per_gpu, write_json

DEFAULT_SIZES = "8K,64K,256K,1M,2M,4M,16M,64M,256M"
IMPLEMENTATIONS = ("tpcomm", "nccl", "symm-oneshot", "symm-twoshot")


def parse_size(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper()
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def exact_inputs(n, rank, world, device):
    """Small integers whose sums bf16 holds exactly, and their sum over the ranks."""
    base = torch.arange(n, device=device) % 13
    mine = (base + rank).to(torch.bfloat16)
    total = (base * world + world * (world - 1) // 2).to(torch.bfloat16)
    return mine, total


class Runner:
    """One call of each implementation on this rank's tensors of one size."""

    def __init__(self, comm, group_name, symm_buffer, n, device):
        self.comm = comm
        self.group_name = group_name
        self.x = torch.empty(n, dtype=torch.bfloat16, device=device)
        self.s = symm_buffer[:n] if symm_buffer is not None else None

    def call(self, name):
        """Runs `name` once; returns the tensor that holds its result."""
        if name == "tpcomm":
            return self.comm.all_reduce(self.x)
        if name == "nccl":
            dist.all_reduce(self.x)
            return self.x
        if self.s is None:
            raise RuntimeError("no symmetric memory")
        if name == "symm-oneshot":
            return torch.ops.symm_mem.one_shot_all_reduce(self.s, "sum", self.group_name)
        torch.ops.symm_mem.two_shot_all_reduce_(self.s, "sum", self.group_name)
        return self.s

    def load(self, name, data):
        (self.s if name.startswith("symm") else self.x).copy_(data)


def time_graph(runner, name, calls, replays, device):
    """Milliseconds per call of `name` in a graph of `calls` calls replayed `replays` times."""
    runner.call(name)  # lazy initialisation happens outside the capture
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            runner.call(name)
    graph.replay()
    torch.cuda.synchronize(device)
    dist.barrier()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / (calls * replays)


def rank_main(rank, world, sizes):
    import torch.distributed._symmetric_memory as symm_mem

    import tpcomm

    device = torch.device("cuda", rank)
    group_name = dist.group.WORLD.group_name
    # tpcomm's own algorithm table picks the kernel (at two ranks it never picks NCCL).
    comm = tpcomm.Communicator.from_process_group(nccl=False)
    symm_buffer, symm_error = None, None
    try:
        symm_buffer = symm_mem.empty(max(sizes) // 2, dtype=torch.bfloat16, device=device)
        symm_mem.rendezvous(symm_buffer, group_name)
    except Exception as e:  # an older PyTorch, or a machine without P2P
        symm_buffer, symm_error = None, f"{type(e).__name__}: {e}"
    rows = []
    for nbytes in sizes:
        n = nbytes // 2
        runner = Runner(comm, group_name, symm_buffer, n, device)
        mine, total = exact_inputs(n, rank, world, device)
        row = {"bytes": nbytes, "tpcomm_algorithm": comm.algorithm(runner.x)}
        calls, replays = (20, 10) if nbytes <= 16 << 20 else (5, 4)
        for name in IMPLEMENTATIONS:
            try:
                runner.load(name, mine)
                wrong = int((runner.call(name) != total).sum().item())
                runner.load(name, torch.zeros_like(mine))
                ms = time_graph(runner, name, calls, replays, device)
                row[name] = {"us": 1e3 * ms, "wrong": wrong}
            except Exception as e:
                why = symm_error if name.startswith("symm") and symm_error else None
                row[name] = {"error": why or f"{name}: {type(e).__name__}: {e}"}
        gathered = [None] * world
        dist.all_gather_object(gathered, row)
        for name in IMPLEMENTATIONS:
            failed = [g[name] for g in gathered if "error" in g[name]]
            if failed:
                row[name] = failed[0]
            else:
                row[name] = {"us": max(g[name]["us"] for g in gathered),
                             "wrong": sum(g[name]["wrong"] for g in gathered)}
        rows.append(row)
    comm.close()
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="message sizes in bytes (K, M, G)")
    parser.add_argument("--json")
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    rows = run_per_gpu("torch_compare.py", rank_main, sizes)
    world = torch.cuda.device_count()
    gpu = torch.cuda.get_device_name(0)
    print(f"# all-reduce, bf16, CUDA graphs, {world} x {gpu}, one process per GPU, "
          f"torch {torch.__version__}; us per call (the slowest rank), wrong elements in brackets")
    print(f"# {'bytes':>10}  {'tpcomm':>8} {'(algorithm)':<14} {'NCCL':>8} {'symm 1-shot':>12} "
          f"{'symm 2-shot':>12} {'speedup':>8}")
    for r in rows:
        cells = []
        others = []
        for name in IMPLEMENTATIONS:
            cell = r[name]
            if "us" in cell:
                text = f"{cell['us']:.2f}" + (f"[{cell['wrong']}]" if cell["wrong"] else "")
                if name != "tpcomm" and not cell["wrong"]:
                    others.append(cell["us"])
            else:
                text = "-"
            cells.append(text)
        ours = r["tpcomm"].get("us")
        speedup = f"{min(others) / ours:.2f}x" if ours and others else "-"
        print(f"  {r['bytes']:>10}  {cells[0]:>8} {r['tpcomm_algorithm']:<14} {cells[1]:>8} "
              f"{cells[2]:>12} {cells[3]:>12} {speedup:>8}")
    errors = {r[name]["error"] for r in rows for name in IMPLEMENTATIONS if "error" in r[name]}
    for e in sorted(errors):
        print(f"# not timed: {e}")
    if args.json:
        write_json(args.json, rows)


if __name__ == "__main__":
    main()
