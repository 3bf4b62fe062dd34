#!/usr/bin/env python3
"""Plots tpcomm-perf JSON results: all-reduce latency against message size, tpcomm beside NCCL
(on ordinary buffers and, where measured, on symmetric registered windows).

usage: plot_perf.py RESULT.json [RESULT.json ...] -o latency.png

Each file adds tpcomm's out-of-place latency, and NCCL's where the run measured it, on log-log
axes; the title names the GPU and rank count. Needs matplotlib (pip install matplotlib), the
standard plotting library of the Python ecosystem.
"""
import argparse
import json
import sys


def label_of(result, path, several):
    mode = "graph" if result.get("graph_launches", 0) > 0 else "eager"
    label = f"{result['algorithm']}, {mode}"
    return f"{label} ({path})" if several else label


def human_bytes(n):
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:g} {unit}"
        n /= 1024


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="tpcomm-perf -J output files")
    parser.add_argument("-o", "--output", default="latency.png", help="PNG to write")
    args = parser.parse_args(argv)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("plot_perf.py: matplotlib is missing (pip install matplotlib)")

    results = []
    for path in args.results:
        with open(path) as f:
            results.append((path, json.load(f)))

    fig, ax = plt.subplots(figsize=(9, 6))
    several = len(results) > 1
    nccl_drawn = set()
    for path, r in results:
        rows = r["results"]
        sizes = [row["bytes"] for row in rows]
        ax.plot(sizes, [row["out_of_place"]["time_us"] for row in rows], marker="o",
                markersize=3, label="tpcomm " + label_of(r, path, several))
        key = (r["nranks"], r.get("graph_launches", 0) > 0)
        if key in nccl_drawn:
            continue
        nccl_drawn.add(key)
        # NCCL on ordinary buffers, and on symmetric registered windows where the run had them.
        for field, name, marker in (("nccl_time_us", "NCCL", "s"),
                                    ("nccl_symmetric_time_us", "NCCL symmetric", "^")):
            nccl = [(row["bytes"], row[field]) for row in rows if row.get(field)]
            if nccl:
                ax.plot([s for s, _ in nccl], [t for _, t in nccl], marker=marker, markersize=3,
                        linestyle="--", label=name + label_of(r, path, several).split(",", 1)[1])

    gpus = sorted({d["name"] for _, r in results for d in r["devices"]})
    ranks = sorted({r["nranks"] for _, r in results})
    loopback = any(r["loopback"] for _, r in results)
    title = f"all-reduce {results[0][1]['datatype']} on {', '.join(gpus)}, " \
            f"{'/'.join(map(str, ranks))} ranks"
    if loopback:
        title += "\nLOOPBACK: ranks share a GPU (kernel diagnostics, not NVLink)"
    ax.set_title(title)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("message size")
    ax.set_ylabel("latency per call (us)")
    ticks = [s for s in sorted({row["bytes"] for _, r in results for row in r["results"]})]
    ticks = ticks[:: max(1, len(ticks) // 10)]
    ax.set_xticks(ticks)
    ax.set_xticklabels([human_bytes(t) for t in ticks], rotation=30)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main(sys.argv[1:])
