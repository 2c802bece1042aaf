"""PNG plots of a run: training loss, dev nDCG@10 per evaluation/refresh, negative-pool telemetry."""
from __future__ import annotations

import json
from pathlib import Path

from embedray.atomic import atomic_path


def plot_run(run_dir: str | Path) -> list[Path]:
    """Draw the plots of ``run_dir/detailed_training_logs.json`` into ``run_dir/plots/``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    logs = json.loads((run_dir / "detailed_training_logs.json").read_text())
    out_dir = run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    written = []
    steps = logs["steps"]
    dev = [e for e in logs["events"] if e["kind"] == "dev"]
    refresh = [e for e in logs["events"] if e["kind"] == "refresh" and not e.get("failed")]
    pools = [e for e in logs["events"] if e["kind"] == "pool"]

    fig, ax = plt.subplots(1, 2, figsize=(11, 3.6))
    ax[0].plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=1)
    ax[0].set(title="training loss", xlabel="step", ylabel="loss")
    ax[1].plot([e["step"] for e in dev], [e["ndcg@10"] for e in dev], "o-")
    for e in pools:
        ax[1].axvline(e["step"], color="grey", ls=":", lw=0.8)
    ax[1].set(title="dev nDCG@10 (dotted: new negative pool)", xlabel="step", ylabel="nDCG@10")
    written.append(save_figure(fig, out_dir / "training.png"))

    if refresh:
        fig, ax = plt.subplots(1, 3, figsize=(14, 3.6))
        x = [e["snapshot_step"] for e in refresh]
        ax[0].plot(x, [e["false_negative_rate"] for e in refresh], "o-", label="removed by cross-encoder")
        ax[0].plot(x, [e["overlap@10"] if e["overlap@10"] is not None else float("nan") for e in refresh],
                   "s-", label="overlap@10 with previous pool")
        ax[0].set(title="negative pool", xlabel="snapshot step", ylim=(0, 1))
        ax[0].legend(fontsize=8)
        ax[1].plot([e["step"] for e in pools], [e["staleness_steps"] or 0 for e in pools], "o-")
        ax[1].set(title="staleness (steps from snapshot to use)", xlabel="step")
        parts = ["encode_s", "index_s", "search_s", "rescore_s"]
        bottom = [0.0] * len(refresh)
        for p in parts:
            vals = [e.get(p) or 0.0 for e in refresh]
            ax[2].bar([str(s) for s in x], vals, bottom=bottom, label=p[:-2])
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax[2].set(title="refresh wall time (s)", xlabel="snapshot step")
        ax[2].legend(fontsize=8)
        written.append(save_figure(fig, out_dir / "refresh.png"))
    return written


def save_figure(fig, path: Path) -> Path:
    """Write ``fig`` to ``path`` as PNG, atomically, and close it."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path
