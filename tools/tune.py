#!/usr/bin/env python3
"""Measures every all-reduce algorithm at every size on this machine and prints the rows of the
algorithm table (src/core/algorithm.cc) that the measurements give: for eager and for graph-captured
calls, the fastest algorithm at each size, one row where the winner changes. With --fused HIDDEN it
does the same for tpcAllReduceAddRmsNorm on rows of HIDDEN elements (the table's addRmsNorm rows,
graph-captured): the fused one-shot and two-shot kernels against NCCL followed by the norm kernel.

It runs tpcomm-perf once per algorithm and mode (one process per GPU, as an engine would), keeps
the JSON of every run in OUTDIR, and names the machine beside the rows.

usage: tools/tune.py [--perf build/tools/tpcomm-perf] [--out build/tune] [-g RANKS]
                     [-b 8] [-e 256M] [-f 2] [-d bfloat16] [--algos push-oneshot,...]
                     [--fused HIDDEN]
"""
import argparse
import json
import os
import subprocess
import sys

ROUTES = {
    "oneshot": "Route::kOneShot",
    "twoshot": "Route::kTwoShot",
    "push-oneshot": "Route::kPushOneShot",
    "push-twoshot": "Route::kPushTwoShot",
    "nccl": "Route::kNccl",
}


def measure(perf, algo, mode, args, out, nccl_beside=False):
    fused = ["--fused", str(args.fused)] if args.fused else []
    path = os.path.join(out, f"{algo}-{mode}{'-fused' if fused else ''}.json")
    command = [perf, f"--{mode}", "-a", algo, "-b", args.b, "-e", args.e, "-f", args.f,
               "-d", args.d, "-c", "1", "-J", path] + fused
    if algo != "nccl" and not nccl_beside:
        command += ["--nccl", "off"]  # NCCL is measured as an algorithm of its own
    if args.g:
        command += ["-g", str(args.g)]
    env = dict(os.environ, NCCL_NVLS_ENABLE="0")
    run = subprocess.run(command, capture_output=True, text=True, env=env)
    if run.returncode != 0:
        sys.stderr.write(f"tune: {' '.join(command)} failed:\n{run.stdout[-2000:]}{run.stderr}\n")
        return None
    with open(path) as f:
        return json.load(f)


def rows_of(results, nranks):
    """Rows (largest bytes, algorithm) from per-algorithm {bytes: time}: the fastest at each size,
    one row per run of the same winner."""
    sizes = sorted(set.intersection(*(set(r) for r in results.values())))
    winners = [(b, min(results, key=lambda a: results[a][b])) for b in sizes]
    rows = []
    for i, (b, algo) in enumerate(winners):
        last = i + 1 == len(winners) or winners[i + 1][1] != algo
        if last:
            rows.append(("kAny" if i + 1 == len(winners) else str(b), algo))
    return [f"{{{nranks}, {size}, {ROUTES[algo]}}}" for size, algo in rows], winners


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--perf", default="build/tools/tpcomm-perf")
    p.add_argument("--out", default="build/tune")
    p.add_argument("-g", type=int, default=0, help="ranks (default: one per GPU)")
    p.add_argument("-b", default="8")
    p.add_argument("-e", default="256M")
    p.add_argument("-f", default="2")
    p.add_argument("-d", default="bfloat16")
    p.add_argument("--algos", default=None,
                   help="default: push-oneshot,push-twoshot,oneshot,twoshot,nccl; with --fused "
                        "push-oneshot,push-twoshot (and NCCL + norm beside the first)")
    p.add_argument("--fused", type=int, default=0, metavar="HIDDEN")
    args = p.parse_args()
    algos = args.algos or ("push-oneshot,push-twoshot" if args.fused else
                           "push-oneshot,push-twoshot,oneshot,twoshot,nccl")
    os.makedirs(args.out, exist_ok=True)
    machine = None
    for mode in ("graph",) if args.fused else ("graph", "eager"):
        results = {}
        for i, algo in enumerate(algos.split(",")):
            # The fused call has no NCCL algorithm: NCCL + norm is timed beside the first kernel.
            nccl_beside = args.fused != 0 and i == 0
            report = measure(args.perf, algo, mode, args, args.out, nccl_beside)
            if report is None or report.get("wrong"):
                continue
            if report.get("loopback"):
                sys.stderr.write("tune: ranks share a GPU: loopback figures tune nothing\n")
                return 1
            nranks = report["nranks"]
            devices = report["devices"]
            machine = f"{nranks} x {devices[0]['name']} on {devices[0]['host']}"
            results[algo] = {
                r["bytes"]: min(r["out_of_place"]["time_us"], r["in_place"]["time_us"])
                for r in report["results"]
            }
            if nccl_beside and all(r["nccl_time_us"] is not None for r in report["results"]):
                results["nccl"] = {r["bytes"]: r["nccl_time_us"] for r in report["results"]}
        if not results:
            sys.stderr.write(f"tune: nothing measured in {mode} mode\n")
            return 1
        rows, winners = rows_of(results, nranks)
        what = f"addRmsNorm, rows of {args.fused}" if args.fused else mode
        print(f"// {what}: measured by tools/tune.py on {machine}, {args.d}")
        for b, algo in winners:
            times = ", ".join(f"{a} {results[a][b]:.2f}" for a in sorted(results))
            print(f"//   {b:>10} B: {algo:<13} ({times} us)")
        print("   " + ", ".join(rows) + ",")
    return 0


if __name__ == "__main__":
    sys.exit(main())
