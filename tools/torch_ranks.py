"""One process per GPU under torch.distributed (NCCL), for the tools that time tpcomm from Python
beside PyTorch's collectives."""

import json
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def run_per_gpu(tool, body, *args):
    """Calls body(rank, world, *args) in one process per GPU, each with its GPU current and the
    default process group up, and returns what rank 0's call returned."""
    world = torch.cuda.device_count()
    if world < 2:
        raise SystemExit(f"{tool}: needs 2 or more GPUs (one process per GPU)")
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    results = mp.get_context("spawn").Queue()
    port = 29500 + os.getpid() % 1000
    mp.spawn(_rank, args=(world, port, results, body, args), nprocs=world)
    return results.get()


def _rank(rank, world, port, results, body, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", rank=rank, world_size=world, device_id=device)
    try:
        out = body(rank, world, *args)
    finally:
        dist.destroy_process_group()
    if rank == 0:
        results.put(out)


def write_json(path, rows):
    """Writes a tool's rows to `path` with the GPUs and the PyTorch they came from."""
    with open(path, "w") as f:
        json.dump({"gpu": torch.cuda.get_device_name(0), "ranks": torch.cuda.device_count(),
                   "torch": torch.__version__, "rows": rows}, f, indent=1)
