#!/usr/bin/env python3
"""What an all-reduce costs from Python in eager mode: tpcomm's comm.all_reduce against
torch.distributed.all_reduce (NCCL) on the same tensors, in the same run, one process per GPU.

For each size, three figures per call, the slowest rank's:
  issue     host time to launch a call, over a burst of calls the GPU drains afterwards
  burst     wall time per call of the burst, launches and GPU work together
  waited    wall time per call when the host waits for each (torch.cuda.synchronize)

usage: python3 tools/python_overhead.py [--calls N] [--json FILE]   (needs 2 or more GPUs)
"""

import argparse
import time

import torch
import torch.distributed as dist

from torch_ranks import run_per_gpu, write_json

SIZES = [8 << 10, 64 << 10, 1 << 20, 8 << 20]  # bytes of bf16


def measure(fn, calls, device):
    torch.cuda.synchronize(device)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    issued = time.perf_counter()
    torch.cuda.synchronize(device)
    drained = time.perf_counter()
    dist.barrier()
    waited_calls = max(calls // 4, 10)
    start_w = time.perf_counter()
    for _ in range(waited_calls):
        fn()
        torch.cuda.synchronize(device)
    end_w = time.perf_counter()
    return {
        "issue_us": 1e6 * (issued - start) / calls,
        "burst_us": 1e6 * (drained - start) / calls,
        "waited_us": 1e6 * (end_w - start_w) / waited_calls,
    }


def rank_main(rank, world, calls):
    import tpcomm

    # tpcomm's kernels carry every size: the figures are tpcomm's own, whatever its table says.
    comm = tpcomm.Communicator.from_process_group(nccl=False)
    rows = []
    for nbytes in SIZES:
        x = torch.randn(nbytes // 2, device="cuda").to(torch.bfloat16)
        # Enough calls that the first size's figures are not the process's warm-up.
        for warm in range(200):
            comm.all_reduce(x)
            dist.all_reduce(x)
        for name, fn in (("tpcomm", lambda: comm.all_reduce(x)),
                         ("torch.distributed", lambda: dist.all_reduce(x))):
            row = {"bytes": nbytes, "api": name, **measure(fn, calls, rank)}
            gathered = [None] * world
            dist.all_gather_object(gathered, row)
            rows.append({k: (max(g[k] for g in gathered) if k.endswith("_us") else v)
                         for k, v in row.items()})
    comm.close()
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = run_per_gpu("python_overhead.py", rank_main, args.calls)
    world = torch.cuda.device_count()
    gpu = torch.cuda.get_device_name(0)
    print(f"# eager all-reduce from Python, bf16, {world} x {gpu}, one process per GPU, "
          f"torch {torch.__version__}, {args.calls} calls per burst")
    print(f"# {'bytes':>9}  {'api':<18} {'issue us':>9} {'burst us':>9} {'waited us':>10}")
    for r in rows:
        print(f"  {r['bytes']:>9}  {r['api']:<18} {r['issue_us']:>9.2f} {r['burst_us']:>9.2f} "
              f"{r['waited_us']:>10.2f}")
    if args.json:
        write_json(args.json, rows)


if __name__ == "__main__":
    main()
