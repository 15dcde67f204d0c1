"""Plot a ``ray-mm bench --json`` file: measured throughput vs media workers (left) and the run's
scale model, projected requests/s vs CPU nodes (right). matplotlib, from the dev extra."""

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
    model = r.get("scale_model")
    fig, axes = plt.subplots(1, 2 if model else 1, figsize=(11 if model else 6, 4), dpi=120, squeeze=False)
    ax = axes[0][0]
    workers = r["scaling"]["workers"]
    ax.plot(workers, r["scaling"]["requests_per_s"], "o-", label="ray-mm pool, float32 (media workers)")
    if "requests_per_s" in p.get("pool_uint8", {}):
        ax.plot([2], [p["pool_uint8"]["requests_per_s"]], "s", color="tab:purple", label="ray-mm pool, uint8 (default)")
    ax.axhline(p["sglang_style"]["requests_per_s"], color="tab:red", ls="--", label="SGLang-style, HF processor")
    if "requests_per_s" in p.get("sglang_style_hand", {}):
        ax.axhline(p["sglang_style_hand"]["requests_per_s"], color="tab:orange", ls="-.", label="SGLang-style, same pixel path")
    ax.axhline(p["ray_data"]["requests_per_s"], color="tab:green", ls=":", label="Ray Data, class UDF actor pool")
    ax.set_xticks(workers)
    ax.set_xlabel("media workers (one per simulated CPU node; 2 physical cores in all)")
    ax.set_ylabel("requests / s (measured)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Measured: {r['command']}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    if model:
        ax = axes[0][1]
        rows = model["projections"]
        nodes = [row["n_cpu_nodes"] for row in rows]
        for key, style in (("media", "o-"), ("coordinator", "--"), ("network", ":"), ("gpu_pull", "-.")):
            ax.plot(nodes, [row["ceilings"][key] for row in rows], style, label=f"{key} ceiling")
        ax.plot(nodes, [row["requests_per_s"] for row in rows], "k-", lw=2.5, alpha=0.4, label="projected (K=1, 1 GPU node)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(nodes, [str(n) for n in nodes])
        i = model["inputs"]
        ax.set_xlabel(f"CPU nodes x {i['cores_per_node']} cores")
        ax.set_ylabel("requests / s (projected)")
        ax.set_title("Scale model from this run's per-unit figures (not measured at scale)", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")
