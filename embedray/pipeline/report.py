"""The pipeline's report: ``report.json`` + ``report.md`` + PNG plots, readable in ten seconds."""
from __future__ import annotations

import json
from pathlib import Path

from embedray.atomic import write_json_atomic, write_text_atomic
from embedray.models.rotation import variance_summary


def _checks(rows: dict) -> dict:
    """The headline questions: did the student keep the teacher's quality at a fraction of the cost?"""
    teacher, student = rows.get("trained teacher"), rows.get("distilled student")
    out = {}
    if teacher and student:
        out["student_vs_teacher_ndcg"] = student["ndcg@10"] / max(teacher["ndcg@10"], 1e-9)
        out["student_encode_speedup"] = student["docs_per_s"] / max(teacher["docs_per_s"], 1e-9)
    dims = sorted((r["dim"], r) for k, r in rows.items() if k.startswith("distilled student"))
    if len(dims) > 1 and student:
        quarter = [r for d, r in dims if d <= student["dim"] // 4]
        if quarter:
            out["quarter_dim"] = quarter[-1]["dim"]
            out["quarter_dim_vs_full_ndcg"] = quarter[-1]["ndcg@10"] / max(student["ndcg@10"], 1e-9)
    base = rows.get("base student")
    if base and student:
        out["student_vs_base_student_ndcg"] = student["ndcg@10"] / max(base["ndcg@10"], 1e-9)
    return out


def _plots(run: Path, rows: dict) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = run / "plots"
    out.mkdir(exist_ok=True)
    written = []
    dims = sorted((r["dim"], r["ndcg@10"]) for k, r in rows.items() if k.startswith("distilled student"))
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    if dims:
        ax[0].plot([d for d, _ in dims], [v for _, v in dims], "o-", label="distilled student")
        if "trained teacher" in rows:
            ax[0].axhline(rows["trained teacher"]["ndcg@10"], color="grey", ls="--", label="trained teacher")
        ax[0].set(xscale="log", xlabel="embedding dimensions", ylabel="test nDCG@10", title="quality vs dimension")
        ax[0].legend(fontsize=8)
    for label, r in rows.items():
        if r.get("docs_per_s") is not None and "@" not in label:
            ax[1].scatter(r["docs_per_s"], r["ndcg@10"])
            ax[1].annotate(label, (r["docs_per_s"], r["ndcg@10"]), fontsize=7, xytext=(4, 2),
                           textcoords="offset points")
    ax[1].set(xlabel="encode speed (docs/s)", ylabel="test nDCG@10", title="quality vs speed")
    fig.tight_layout()
    fig.savefig(out / "quality.png", dpi=110)
    plt.close(fig)
    written.append("plots/quality.png")
    for stage in ("teacher", "student"):
        for name in ("training.png", "refresh.png"):
            src = run / stage / "plots" / name
            if src.exists():
                dst = out / f"{stage}_{name}"
                dst.write_bytes(src.read_bytes())
                written.append(f"plots/{dst.name}")
    return written


def _task_table(tasks: dict) -> list[str]:
    """The multi-task teacher's other tasks, each on its own held-out split and instructions."""
    models = list(dict.fromkeys(m for r in tasks.values() for m in r if m not in ("split", "queries")))
    lines = ["## The teacher's other tasks (each on its own held-out split)", "",
             "| task | split | queries | " + " | ".join(f"{m} nDCG@10" for m in models) + " |",
             "|---|---|---:|" + "---:|" * len(models)]
    for task, r in tasks.items():
        cells = [f"{r[m]['ndcg@10']:.4f}" if m in r else "" for m in models]
        lines.append(f"| {task} | {r['split']} | {r['queries']} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _table(rows: dict) -> str:
    head = "| model | dim | nDCG@10 | Recall@100 | MRR@10 | docs/s | params |\n|---|---:|---:|---:|---:|---:|---:|"
    lines = [head]
    for label, r in rows.items():
        params = r.get("size", {}).get("params")
        lines.append(f"| {label} | {r.get('dim', '')} | {r['ndcg@10']:.4f} | {r.get('recall@100', float('nan')):.4f} "
                     f"| {r['mrr@10']:.4f} | {r['docs_per_s']:.0f} | "
                     f"{'' if params is None else f'{params / 1e6:.1f}M'} |" if "docs_per_s" in r else
                     f"| {label} | | {r['ndcg@10']:.4f} | — | {r['mrr@10']:.4f} "
                     f"| (reranks top-{r.get('rerank_depth')}) | |")
    return "\n".join(lines)


def write_report(run: Path, cfg) -> dict:
    """Write the report of a finished pipeline run and return its JSON."""
    run = Path(run)
    rows = json.loads((run / "test_results.json").read_text())
    checks = _checks(rows)
    extra = {}
    for name in ("teacher/cross_encoder_dev.json", "teacher/cross_encoder_gate.json", "teacher/training_summary_report.json",
                 "student/training_summary_report.json", "rerank_dev.json"):
        if (run / name).exists():
            extra[name.split(".")[0]] = json.loads((run / name).read_text())
    stages = {p.stem: json.loads(p.read_text()).get("seconds") for p in sorted((run / "stages").glob("*.json"))}
    plots = _plots(run, rows)
    tasks = json.loads((run / "task_results.json").read_text()) if (run / "task_results.json").exists() else {}
    report = {"name": cfg.name, "test_split": cfg.data.test_split, "rows": rows, "checks": checks, "tasks": tasks,
              "stage_seconds": stages, "details": extra,
              "paths": {"run": str(run), "model": str(run / "model"), "report_md": str(run / "report.md"),
                        "plots": plots}}
    write_json_atomic(report, run / "report.json")
    verdict = []
    if "student_vs_teacher_ndcg" in checks:
        verdict.append(f"- Distilled student keeps **{checks['student_vs_teacher_ndcg']:.1%}** of the trained "
                       f"teacher's test nDCG@10 while encoding **{checks['student_encode_speedup']:.2f}×** faster.")
    if "quarter_dim_vs_full_ndcg" in checks:
        verdict.append(f"- At {checks['quarter_dim']} dims (¼) the student keeps "
                       f"**{checks['quarter_dim_vs_full_ndcg']:.1%}** of its full-dimension nDCG@10.")
    student_stage = run / "stages" / "student.json"
    rotation = json.loads(student_stage.read_text()).get("rotation") if student_stage.exists() else None
    if rotation:
        verdict.append(f"- The student's embeddings are rotated onto their principal axes (fit on "
                       f"{rotation['fit_texts']} training texts; variance held by the first "
                       f"{variance_summary(rotation)}).")
    if "base teacher" in rows and "trained teacher" in rows:
        verdict.append(f"- Teacher training: nDCG@10 {rows['base teacher']['ndcg@10']:.4f} → "
                       f"{rows['trained teacher']['ndcg@10']:.4f}.")
    ce = extra.get("teacher/cross_encoder_dev") or {}
    for task, r in ce["tasks"].items() if "tasks" in ce else ([("", ce)] if ce else []):
        depth = f" (top-{r['depth']})" if r.get("depth") else ""
        verdict.append(f"- Cross-encoder reranking on {task + ' ' if task else ''}dev{depth}: nDCG@10 "
                       f"{r['before']['ndcg@10']:.4f} → {r['after']['ndcg@10']:.4f}.")
    ce_gate = extra.get("teacher/cross_encoder_gate")
    if ce_gate is not None and ce_gate.get("fusion"):
        use = "to denoise" if ce_gate.get("denoise", True) else "to rerank, not to denoise"
        verdict.append(f"- **Cross-encoder fused with the bi-encoder** {use}: {ce_gate['why']}.")
    choice = extra.get("rerank_dev")
    if choice is not None and ce_gate is not None and ce_gate["passed"]:
        how = {"cross_encoder": "reranked by the cross-encoder", "fused": "reranked by the fused score",
               None: "**no reranking row**"}[choice["mode"]]
        verdict.append(f"- Trained teacher's top-{choice.get('depth')}: {how}: {choice['why']}.")
        row = next((r for label, r in rows.items() if label.startswith("teacher + cross-encoder rerank")), None)
        if row is not None and "trained teacher" in rows and row["ndcg@10"] < rows["trained teacher"]["ndcg@10"]:
            verdict.append(f"- On test that reranking **lowers** nDCG@10 ({row['ndcg@10']:.4f} < "
                           f"{rows['trained teacher']['ndcg@10']:.4f}), though it helped on dev.")
    if ce_gate is not None and not ce_gate["passed"]:
        verdict.append(f"- **Cross-encoder gated off**: {ce_gate['why']}. It scored nothing in this run: "
                       f"denoising used the bi-encoder's positive-aware rule (max_score_ratio "
                       f"{ce_gate['fallback']['max_score_ratio']:g}) and the table has no reranking row.")
    export_stage = run / "stages" / "export.json"
    int8 = json.loads(export_stage.read_text()).get("openvino_int8") if export_stage.exists() else None
    if int8 and int8.get("passed") is not None:
        served = ("`embedray serve` serves it on a CPU" if int8["passed"]
                  else f"below {int8['min_ratio']:.0%}: **not served by default**")
        verdict.append(f"- int8 OpenVINO student on {int8['split']} ({int8['queries']} queries): nDCG@10 "
                       f"{int8['ndcg@10']:.4f} vs fp32 {int8['fp32_ndcg@10']:.4f} (**{int8['ratio']:.1%}**): "
                       f"{served}.")
    elif int8:
        verdict.append("- int8 OpenVINO student written without a quality check (no dev split): served only "
                       "on request (`--backend openvino --onnx-file openvino_model_qint8_quantized.xml`).")
    tasks = report["tasks"]
    for task, r in tasks.items():
        if "base teacher" in r and "trained teacher" in r:
            verdict.append(f"- Task {task} ({r['split']}, {r['queries']} queries): nDCG@10 "
                           f"{r['base teacher']['ndcg@10']:.4f} → {r['trained teacher']['ndcg@10']:.4f}.")
    md = [f"# embedray report: {cfg.name}", "", *verdict, "",
          f"## Test split ({cfg.data.test_split})", "", _table(rows), "",
          *(_task_table(tasks) if tasks else []),
          "docs/s: corpus encoding speed on this machine, same batch size for every model; the trained "
          "teacher and the distilled student timed in turns on the same 256 documents (best of three "
          "passes each), a base model taking its trained model's speed (same architecture).", "",
          "## Plots", "", *[f"![{p}]({p})" for p in plots], "",
          "## Stages (seconds)", "", *[f"- {k}: {v:.0f}" for k, v in stages.items() if v is not None], "",
          f"Model: `{run / 'model'}` — `SentenceTransformer(path)` loads it; `embedray serve {run / 'model'}` serves it."]
    write_text_atomic("\n".join(md) + "\n", run / "report.md")
    return {"report": str(run / "report.md"), "checks": checks}
