"""Plot throughput vs media workers from a ``ray-mm bench --json`` file (matplotlib, from the dev extra)."""

from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("json_file")
    parser.add_argument("--out", default="benchmarks/scaling.png")
    args = parser.parse_args()
    r = json.load(open(args.json_file))
    p = r["pipelines"]
    workers = r["scaling"]["workers"]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(workers, r["scaling"]["requests_per_s"], "o-", label="ray-mm pool (media workers)")
    ax.axhline(p["sglang_style"]["requests_per_s"], color="tab:red", ls="--", label="SGLang-style, one process")
    ax.axhline(p["ray_data"]["requests_per_s"], color="tab:green", ls=":", label="Ray Data map, 2 tasks")
    ax.axhline(1.8 * p["sglang_style"]["requests_per_s"], color="tab:red", ls="-", alpha=0.3, label="target: 1.8x SGLang-style")
    ax.set_xticks(workers)
    ax.set_xlabel("media workers (one per simulated CPU node; 2 physical cores in all)")
    ax.set_ylabel("requests / s")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Throughput vs workers: {r['command']}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")
