"""Which scores to distil the student from: the trained teacher bi-encoder's, the cross-encoder's,
or the two fused — on the demo's held-out queries.

The demo's recipe (``jobs/configs/demo-cpu.yaml``) runs its prepare, baseline and teacher stages
once (the teacher trains with refreshed, cross-encoder-denoised negatives and the cross-encoder
is trained and gated on dev). Then the demo's student stage runs once per score source, on the
same data, from the same trained teacher, with the same seed, steps and loss (task InfoNCE + KL
over candidate scores + embedding MSE; ``--no-embed``: without the MSE, so that the KL targets
are the only distillation signal), each on the teacher's last pool (``student.train.negatives:
pool``, ``--negatives`` per query, the cross-encoder's scores in it); only the KL targets differ:

- ``teacher``: the trained teacher's cosines over the loss temperature (the demo's default);
- ``cross_encoder``: the cross-encoder's logits over the temperature its dev check chose. Where
  its gate passed it only fused (it alone reranks dev worse than the bi-encoder), the pipeline
  refuses these targets; the bench lifts that refusal for this row (an unchecked verdict in the
  student's folder, the dev-chosen temperature kept) to measure what they are worth;
- ``fused``: ``α · z(cross-encoder logit) + (1 − α) · z(teacher cosine)`` over each row's
  candidates, over a temperature, ``α`` and the temperature chosen on dev against the trained
  teacher (``student/fusion_dev.json``).

Each student is evaluated on dev and test (nDCG@10, test never used for any choice); the
differences from the ``teacher`` row come with a 95% paired bootstrap interval over queries.

Run:  .venv/bin/python bench/distill_targets.py [--json runs/bench-distill-targets.json]
      (about 20 minutes on 2 CPU cores; Ray starts on 127.0.0.1 and stops with the script)
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("teacher", "cross_encoder", "fused")
BASE_STAGES = ["prepare", "baseline", "teacher"]


def _config(out: Path, name: str, overrides: list[str]):
    from embedray.config import load_config
    from embedray.pipeline.config import PipelineConfig

    return load_config(PipelineConfig, ROOT / "jobs" / "configs" / "demo-cpu.yaml",
                       [f"output_dir={out}", f"name={name}", "export.openvino_int8=false", *overrides])


def _evaluate(model_dir: Path, data_dir: Path, prompts) -> dict:
    from embedray.data.beir import load_beir
    from embedray.eval.metrics import per_query_ndcg
    from embedray.eval.retrieval import evaluate_retrieval
    from embedray.models.backends import load_encoder

    model = load_encoder(str(model_dir))
    out = {}
    for split in ("dev", "test"):
        data = load_beir(data_dir, split, missing_docs="keep")
        res = evaluate_retrieval(model, data, k=100, show_progress=False, query_prompt=prompts.query_prompt,
                                 doc_prompt=prompts.doc_prompt)
        out[split] = res.metrics["ndcg@10"]
        out[f"{split}_per_query"] = per_query_ndcg(data.qrels, res.run)
    return out


def _share(base: Path, run: Path) -> None:
    """The variant's run folder reads the base run's data and trained teacher (links, not copies)."""
    run.mkdir(parents=True, exist_ok=True)
    for name in ("data", "teacher"):
        link = run / name
        if not link.exists():
            link.symlink_to(base / name, target_is_directory=True)


def _lift_gate(base: Path, run: Path) -> dict:
    """For the ``cross_encoder`` row: the teacher's verdict, unchecked, with its dev-chosen
    temperature (the pipeline refuses these targets when the gate passed the cross-encoder only
    fused; the bench measures them anyway)."""
    from embedray.atomic import write_json_atomic
    from embedray.training.distill import GATE_FILE

    verdict = json.loads((base / "teacher" / GATE_FILE).read_text())
    lifted = {"checked": False, "passed": True, "temperature": verdict.get("temperature", 1.0),
              "why": f"bench/distill_targets.py: the cross-encoder's own scores, measured (gate: {verdict['why']})"}
    write_json_atomic(lifted, run / "student" / GATE_FILE)
    return verdict


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sources", default=",".join(SOURCES), help="comma-separated, of: " + ", ".join(SOURCES))
    p.add_argument("--negatives", type=int, default=3, help="pool negatives per query in each student row")
    p.add_argument("--out", default="runs/bench-distill-targets")
    p.add_argument("--no-embed", action="store_true",
                   help="no embedding MSE (student.loss.distill_embed: false): the KL targets are the only "
                        "distillation signal")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    sources = a.sources.split(",")
    if unknown := [s for s in sources if s not in SOURCES]:
        raise SystemExit(f"--sources: unknown {unknown[0]!r}; choose from {', '.join(SOURCES)}")

    from embedray.cluster.runtime import ensure_ray
    from embedray.cluster.train import RayRuntime
    from embedray.eval.metrics import paired_bootstrap
    from embedray.pipeline.stages import Pipeline

    out = Path(a.out).resolve()
    ensure_ray()
    base_pipe = Pipeline(_config(out, "base", []), RayRuntime())
    base_pipe.stages = [s for s in base_pipe.stages if s in BASE_STAGES]  # the student rows follow
    t0 = time.perf_counter()
    try:
        base_pipe.run_all()  # the pipeline's own skip / resume of these stages
    except FileNotFoundError as e:  # run_all ends reading the report, which these stages do not write
        if Path(e.filename or "") != base_pipe.run / "report.json":
            raise
    base = base_pipe.run
    print(f"prepare, baseline, teacher: {time.perf_counter() - t0:.0f} s", flush=True)
    prompts = base_pipe.cfg.teacher.model
    data_dir = base_pipe.data_dir
    verdict = json.loads((base / "teacher" / "cross_encoder_gate.json").read_text())
    print(f"cross-encoder gate: {verdict['why']}", flush=True)
    rows = {"trained teacher": _evaluate(base / "teacher" / "final", data_dir, prompts)}
    for source in sources:
        overrides = [f"student.score_source={source}", "student.train.negatives=pool",
                     f"student.train.num_negatives={a.negatives}", f"student.train.seed={a.seed}"]
        if a.no_embed:
            overrides += ["student.loss.distill_embed=false"]
        pipe = Pipeline(_config(out, f"student-{source}" + ("-no-embed" if a.no_embed else ""), overrides),
                        RayRuntime())
        _share(base, pipe.run)
        if source == "cross_encoder":
            _lift_gate(base, pipe.run)
        t0 = time.perf_counter()
        if not (pipe._student_model() / "modules.json").exists():
            pipe.stage_student()
        wall = time.perf_counter() - t0
        rows[source] = {**_evaluate(pipe._student_model(), data_dir, prompts), "wall_s": wall}
        fusion = pipe.run / "student" / "fusion_dev.json"
        if fusion.is_file():
            rows[source]["fusion"] = json.loads(fusion.read_text())
        print(f"student, {source} targets: dev {rows[source]['dev']:.4f} test {rows[source]['test']:.4f} "
              f"({wall:.0f} s)", flush=True)

    print("\n| KL targets | dev nDCG@10 | test nDCG@10 |\n|---|---|---|")
    for name, r in rows.items():
        print(f"| {name if name == 'trained teacher' else 'student, ' + name} | {r['dev']:.4f} | {r['test']:.4f} |")
    bootstrap = {}
    if "teacher" in rows:
        for source in (s for s in sources if s != "teacher"):
            for split in ("dev", "test"):
                bs = paired_bootstrap(rows["teacher"][f"{split}_per_query"], rows[source][f"{split}_per_query"],
                                      seed=a.seed)
                bootstrap[f"{source} - teacher ({split})"] = bs
                print(f"{source} − teacher targets, {split}: {bs['diff']:+.4f} [{bs['low']:+.4f}, {bs['high']:+.4f}] "
                      f"({bs['queries']} queries, 95% paired bootstrap)")
    for source in sources:
        if source != "teacher" and "teacher" in rows:
            print(f"ratio {source}_vs_teacher_targets_test {rows[source]['test'] / rows['teacher']['test']:.4f}")
    if a.json:
        from embedray.atomic import write_json_atomic

        slim = {k: {m: v for m, v in r.items() if not m.endswith("_per_query")} for k, r in rows.items()}
        write_json_atomic({"rows": slim, "bootstrap": bootstrap, "gate": verdict, "negatives": a.negatives,
                           "embedding_mse": not a.no_embed}, a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
