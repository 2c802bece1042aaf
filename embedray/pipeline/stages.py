"""The end-to-end job: one ``ray job submit`` from data to a served-ready student and a report.

Stages run in order and each leaves an artifact and a marker, ``stages/<stage>.json``, holding
the stage's fingerprint (:mod:`embedray.pipeline.fingerprint`: the config fields it reads, the
identity of its input files, the fingerprints of the stages it reads from). Re-submitting the
same ``name`` skips the stages whose fingerprint is unchanged and resumes the interrupted one
(training from its checkpoint); a stage whose fingerprint changed runs again with every stage
that reads from it, its earlier outputs moved aside to ``.stale/<stage>`` (never mixed in).
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

from embedray.atomic import write_json_atomic
from embedray.config import to_dict
from embedray.data.beir import beir_file, held_out_leakage, iter_corpus, load_beir
from embedray.data.debian import DEFAULT_LISTS_DIR, build_debian, find_translation_files
from embedray.data.flag import write_flag_folder
from embedray.data.remote import check_publishable, publish, redact
from embedray.eval.retrieval import evaluate_retrieval
from embedray.mining.store import PoolStore
from embedray.models.backends import load_encoder
from embedray.models.bundled import resolve_model
from embedray.models.config import ModelConfig
from embedray.models.encoder import BiEncoder
from embedray.models.precision import available_device
from embedray.models import rotation
from embedray.models import student as students  # module attributes: looked up at each call
from embedray.pipeline.config import PipelineConfig, TrainJobConfig
from embedray.pipeline.evaluation import cached_doc_embeddings
from embedray.pipeline.cross_encoder import GATE_FILE, at_weight, rerank_choice
from embedray.pipeline.refresh import read_gate, task_pool
from embedray.pipeline.fingerprint import config_fields, describe_changes, files_identity, fingerprint
from embedray.pipeline.report import write_report
from embedray.pipeline.runtime import LocalRuntime, Runtime
from embedray.training.config import DataConfig, DistillConfig
from embedray.training.cross_encoder import evaluate_reranker
from embedray.training.data import load_training_data, pair_rows

#: The stages of a pipeline, in order; ``pretrain`` runs only when the recipe has a ``pretrain`` section.
ALL_STAGES = ["prepare", "baseline", "pretrain", "teacher", "student", "evaluate", "export", "report"]
STAGES = [s for s in ALL_STAGES if s != "pretrain"]  # a pipeline without pre-training
# What each stage reads: config sections or fields, and the stages whose outputs it uses.
STAGE_READS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "prepare": (("prepare",), ()),
    "baseline": (("data.test_split", "teacher.model", "student.keep_layers", "student.model", "student.max_seq_length",
                  "eval.batch_size", "eval.extra_models", "mining.doc_prompt"), ("prepare",)),
    "pretrain": (("pretrain", "teacher.model", "cluster"), ("prepare",)),
    "teacher": (("data", "teacher", "mining", "cross_encoder", "refresh", "cluster"), ("prepare", "pretrain")),
    "student": (("data", "teacher.model", "student", "mining", "cross_encoder", "refresh", "cluster", "eval.batch_size"),
                ("teacher",)),
    "evaluate": (("data.test_split", "teacher.model", "teacher.tasks", "student", "eval"),
                 ("baseline", "pretrain", "teacher", "student")),
    "export": (("data.test_split", "data.dev_split", "export"), ("student", "evaluate")),
    "report": (("data.test_split",), ("baseline", "teacher", "student", "evaluate", "export")),
}


def _device() -> str:
    """Where a stage encodes: the GPU its Ray task was given (``cluster.stage_gpus``), else the CPU."""
    return str(available_device())


def say(msg: str) -> None:
    print(f"[embedray pipeline] {msg}", flush=True)


class Pipeline:
    """Runs the stages of :class:`PipelineConfig` in ``output_dir/name``."""

    def __init__(self, cfg: PipelineConfig, runtime: Runtime | None = None):
        self.cfg = cfg
        self.runtime = runtime or LocalRuntime()  # where the teacher and student train
        self.run = Path(cfg.output_dir).expanduser().resolve() / cfg.name
        self.run.mkdir(parents=True, exist_ok=True)
        self.data_dir = Path(cfg.data.path).expanduser().resolve() if cfg.prepare.source == "beir" \
            else self.run / "data"
        self.fingerprints: dict[str, str] = {}  # stage → fingerprint (see plan)
        self.stages = [s for s in ALL_STAGES if s != "pretrain" or cfg.pretrain is not None]
        if cfg.export.publish:  # a destination that can't take the model: said now, not after training
            check_publishable(cfg.export.publish, "export.publish")
        if cfg.export.openvino_int8:  # said now, not after the training stages
            from embedray.models.backends import require_onnx, require_openvino
            from embedray.models.export import require_nncf

            require_onnx()
            require_openvino()
            require_nncf()

    def __getstate__(self) -> dict:
        """What a stage task receives: the pipeline without the test data it may have cached."""
        return {k: v for k, v in self.__dict__.items() if k != "_test"}

    # -- bookkeeping ---------------------------------------------------------------------
    def _done(self, stage: str) -> Path:
        return self.run / "stages" / f"{stage}.json"

    def _started(self, stage: str) -> Path:
        """The fingerprint a stage started with (tells an interrupted stage's leftovers apart)."""
        return self.run / "stages" / "started" / f"{stage}.json"

    def run_all(self) -> dict:
        import torch

        # Local stage work (or the driver's own: layer-reduced students, pretraining pairs) runs
        # while no training does. Under `ray job submit` the driver inherits OMP_NUM_THREADS=1
        # from Ray's job supervisor, which would leave all but one core idle.
        torch.set_num_threads(len(os.sched_getaffinity(0)))
        config = to_dict(self.cfg)
        write_json_atomic(config, self.run / "pipeline_config.json")
        plan = self.plan(config)
        self.runtime.check(self._placed_jobs(plan), self.cfg.cluster if any(
            plan[s] != "skip" for s in ENCODING_STAGES) else None)
        for stage in (s for s in self.stages if plan[s] == "redo"):
            self._set_aside(stage)
        for stage in self.stages:
            marker = self._done(stage)
            if plan[stage] == "skip":
                say(f"{stage}: done earlier, skipped ({marker})")
                continue
            t0 = time.perf_counter()
            say(f"{stage}: running")
            started = self._stage_inputs(stage, config)
            write_json_atomic({"fingerprint": fingerprint(started), "inputs": started}, self._started(stage))
            if stage in ENCODING_STAGES:  # where the runtime runs stage work (a Ray task on Ray)
                result = self.runtime.call(stage, _run_stage, self, stage, cluster=self.cfg.cluster,
                                           run_dir=self.run) or {}
            else:
                result = getattr(self, f"stage_{stage}")() or {}
            inputs = self._stage_inputs(stage, config)  # after: e.g. the apt lists prepare fetched
            self.fingerprints[stage] = fingerprint(inputs)
            write_json_atomic({"stage": stage, "seconds": time.perf_counter() - t0, **result,
                               "fingerprint": self.fingerprints[stage], "inputs": inputs}, marker)
            say(f"{stage}: finished in {time.perf_counter() - t0:.0f} s")
        return json.loads((self.run / "report.json").read_text())

    # -- what re-runs ------------------------------------------------------------------------
    def plan(self, config: dict) -> dict[str, str]:
        """``skip`` / ``run`` (first run, or resume an interrupted one) / ``redo`` (outputs moved
        aside first) for each stage, from the fingerprints; says which stages re-run and why."""
        self.fingerprints = {}
        plan, reasons = {}, {}
        for stage in self.stages:
            inputs = self._stage_inputs(stage, config)
            self.fingerprints[stage] = fingerprint(inputs)
            plan[stage], reasons[stage] = self._decide(stage, inputs, plan)
        listed: set[str] = set()
        for stage in self.stages:
            if plan[stage] == "redo" and stage not in listed:
                affected = [s for s in self.stages if s == stage or (plan[s] != "skip" and stage in _upstream(s))]
                listed.update(affected)
                say(f"{stage}: {reasons[stage]}, re-running {', '.join(affected)}")
        return plan

    def _decide(self, stage: str, inputs: dict, plan: dict[str, str]) -> tuple[str, str | None]:
        fp = self.fingerprints[stage]
        upstream = [s for s in self._reads(stage)[1] if plan[s] != "skip"]
        done, started = _read_json(self._done(stage)), _read_json(self._started(stage))
        if done is not None:
            if done.get("fingerprint") is None:
                return "redo", "its marker has no fingerprint (written before stage fingerprints)"
            if done["fingerprint"] != fp:
                return "redo", describe_changes(done.get("inputs", {}), inputs)
            return ("redo", f"{upstream[0]} runs again") if upstream else ("skip", None)
        if started is not None and started.get("fingerprint") != fp:
            return "redo", describe_changes(started.get("inputs", {}), inputs) + " since it was interrupted"
        if upstream and (started is not None or any(plan[s] == "redo" for s in upstream)):
            return "redo", f"{upstream[0]} runs again"
        return "run", None

    def _reads(self, stage: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """:data:`STAGE_READS` of ``stage``, without the stages this pipeline does not run."""
        fields, after = STAGE_READS[stage]
        return fields, tuple(s for s in after if s in self.stages)

    def _stage_inputs(self, stage: str, config: dict) -> dict:
        """What decides ``stage``'s result: config fields, input files, upstream fingerprints."""
        fields, after = self._reads(stage)
        return {"config": config_fields(config, fields), "files": self._input_files(stage),
                "after": {s: self.fingerprints.get(s) for s in after}}

    def _input_files(self, stage: str) -> dict[str, list[int]]:
        p = self.cfg.prepare
        if stage == "prepare" and p.source == "debian":
            try:
                return files_identity(find_translation_files(DEFAULT_LISTS_DIR))
            except OSError:
                return {}  # none yet: prepare fetches them, and its marker records them
        if stage == "prepare" and p.source == "flag":
            return files_identity(Path(f).expanduser() for f in (p.flag_train, p.flag_dev, p.flag_test) if f)
        if stage in ("prepare", "baseline", "teacher", "student", "evaluate"):
            extra = [Path(self.cfg.data.train_pairs).expanduser()] if self.cfg.data.train_pairs else []
            if stage in ("teacher", "evaluate"):  # a multi-task teacher's other tasks' files
                extra += [Path(f).expanduser() for t in self.cfg.teacher.tasks or []
                          for f in (t.data.path, t.data.train_pairs, t.data.train_labels) if f]
            return files_identity([self.data_dir, *(f for f in extra if f.exists())], root=self.data_dir)
        return {}

    def _outputs(self, stage: str) -> list[Path]:
        """What ``stage`` writes into the run (prepare's BEIR source folder is the user's: never)."""
        r = self.run
        return {"prepare": [self.data_dir] if self.cfg.prepare.source != "beir" else [],
                "baseline": [r / "baseline.json", r / "base-student"],
                "pretrain": [r / "pretrain", r / "pretrain-data"],
                "teacher": [r / "teacher"], "student": [r / "student", r / "student-init"],
                "evaluate": [r / "test_results.json", r / "task_results.json", r / "rerank_dev.json"], "export": [r / "model", r / ".model.tmp"],
                "report": [r / "report.json", r / "report.md", r / "plots"]}[stage]

    def _set_aside(self, stage: str) -> None:
        """Move a stage's earlier outputs to ``.stale/<stage>`` (replacing an older set), then
        drop its markers: a re-run never resumes from, or mixes in, what another config made."""
        found = [p for p in self._outputs(stage) if p.exists()]
        if found:
            dest = self.run / ".stale" / stage
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            for path in found:
                path.rename(dest / path.name)
            say(f"  {stage}: earlier outputs moved to {dest}")
        self._done(stage).unlink(missing_ok=True)
        self._started(stage).unlink(missing_ok=True)

    # -- stages --------------------------------------------------------------------------
    def stage_prepare(self) -> dict:
        p = self.cfg.prepare
        if p.source == "debian":
            stats = build_debian(self.data_dir, max_docs=p.debian_max_docs, max_queries=p.debian_max_queries,
                                 split_queries=p.debian_split_queries)
            return {"data": str(self.data_dir), "summary": stats.summary()}
        if p.source == "flag":
            files = {s: f for s, f in (("train", p.flag_train), ("dev", p.flag_dev), ("test", p.flag_test)) if f}
            stats = write_flag_folder(files, self.data_dir, leakage=p.leakage)
            say(f"  prepare: {stats.summary()}")
            return {"data": str(self.data_dir), **stats.as_dict()}
        d = self.cfg.data
        load_beir(self.data_dir, d.test_split, missing_docs="keep")  # validate early
        leaked = held_out_leakage(self.data_dir, d.train_split, [s for s in (d.dev_split, d.test_split) if s])
        for split, texts in leaked.items():
            say(f"  prepare: leakage: {len(texts)} {split} query text(s) are also {d.train_split} queries "
                f"(kept: the folder is yours); e.g. " + "; ".join(repr(t[:80]) for t in texts[:3]))
        return {"data": str(self.data_dir), "leaked_queries": {s: len(v) for s, v in leaked.items()},
                "leaked_examples": {s: v[:5] for s, v in leaked.items()}}

    def stage_baseline(self) -> dict:
        student, teacher = self._base_student(), self.cfg.teacher.model.name_or_path
        # Their encode speeds are timed by the evaluate stage, on the trained models of the same
        # architecture (weights do not change the speed).
        if resolve_model(student) == resolve_model(teacher):
            # A student that starts as the teacher's own base model is evaluated once.
            rows = {"base student": self._evaluate_model(student, speed=False)}
            rows["base teacher"] = dict(rows["base student"])
        else:
            rows = {"base student": self._evaluate_model(student, speed=False),
                    "base teacher": self._evaluate_model(teacher, speed=False,
                                                         corpus_embeddings=self._teacher_docs(teacher))}
        for name in self.cfg.eval.extra_models:
            rows[f"{name} (untrained)"] = self._evaluate_model(name)
        write_json_atomic(rows, self.run / "baseline.json")
        return rows

    def stage_pretrain(self) -> dict:
        """Unsupervised pairs from the prepared corpus's texts (``pretrain.builder``), then the base
        teacher model trained on them: the weights the teacher's fine-tuning starts from."""
        p = self.cfg.pretrain
        data = self.run / "pretrain-data"
        if not (data / "train_pairs.jsonl").exists():
            corpus = {d.id: d for d in iter_corpus(beir_file(self.data_dir, "corpus"))}  # texts only: no query, no split
            stats = pretrain_pairs(corpus, p, data)
            say(f"  pretrain: {stats}")
        return self.runtime.train(self._pretrain_job(data))

    def stage_teacher(self) -> dict:
        return self.runtime.train(self._teacher_job())

    def stage_student(self) -> dict:
        if self.cfg.student.score_source == "fused":
            self.runtime.call("student-fusion", Pipeline._student_fusion, self, cluster=self.cfg.cluster,
                              run_dir=self.run)
        result = self.runtime.train(self._student_job())
        if self.cfg.student.rotates:
            result["rotation"] = self.runtime.call("student-rotation", Pipeline._rotate_student, self,
                                                   cluster=self.cfg.cluster, run_dir=self.run)
        return result

    def stage_evaluate(self) -> dict:
        c = self.cfg
        rows = json.loads((self.run / "baseline.json").read_text())
        teacher = self.run / "teacher" / "final"
        student = self._student_model()
        if c.pretrain is not None:
            rows["pre-trained teacher"] = self._evaluate_model(self.run / "pretrain" / "final", speed=False)
        rows["trained teacher"], first = self._evaluate_model(teacher, keep=True, speed=False,
                                                              corpus_embeddings=self._teacher_docs(teacher))
        ce = self.run / "teacher" / "cross-encoder"
        verdict = read_gate(self.run / "teacher")
        if ce.exists() and (verdict is None or verdict["passed"]):
            choice = self._rerank_choice(teacher, ce)
            if choice["mode"] is not None:
                label = "teacher + cross-encoder rerank" + (" (fused)" if choice["mode"] == "fused" else "")
                rows[label] = self._rerank_row(first.run, ce, choice.get("alpha"))
            else:
                say(f"  no reranking row: {choice['why']}")
        elif ce.exists():
            say(f"  no reranking row: the cross-encoder gate failed ({verdict['why']})")
        # The student is encoded once: each Matryoshka row truncates the same document
        # embeddings (only the queries are re-encoded), and the encode speed is the model's.
        dims = c.student.matryoshka_dims or [None]
        full, res = self._evaluate_model(student, keep=True, speed=False)
        rows["distilled student"] = full
        for dim in dims[1:]:
            rows[f"distilled student @{dim}"] = self._evaluate_model(
                student, truncate_dim=dim, corpus_embeddings=res.doc_embeddings, speed=False)
        # The speed-up in the verdict compares these two: timed in turns, in the same minute. Each
        # base model has its trained model's architecture (layers, length), so it takes that speed.
        speeds = self._encode_speeds({"trained teacher": teacher, "distilled student": student})
        same_arch = {"base teacher": "trained teacher", "pre-trained teacher": "trained teacher",
                     "base student": "distilled student"}
        for label, row in rows.items():
            timed = same_arch.get(label) or next((t for t in speeds if label.startswith(t)), None)
            if timed:
                row["docs_per_s"] = speeds[timed]
                if label in same_arch:
                    row["docs_per_s_timed_as"] = timed
        for label, path in [("base teacher", c.teacher.model.name_or_path), ("trained teacher", teacher),
                            ("base student", self._base_student())]:
            rows[label]["size"] = students.model_size(path)
        for label in rows:
            if label.startswith("distilled student"):
                rows[label]["size"] = students.model_size(student)
        write_json_atomic(rows, self.run / "test_results.json")
        if c.teacher.tasks:
            write_json_atomic(self._task_rows(teacher), self.run / "task_results.json")
        return {"rows": list(rows)}

    def _task_rows(self, teacher: Path) -> dict:
        """Each retrieval task of a multi-task teacher on its own test split, with its own
        instructions: the base teacher (the pre-trained one too) and the trained teacher."""
        c, out = self.cfg, {}
        models = {"base teacher": c.teacher.model.name_or_path,
                  **({"pre-trained teacher": self.run / "pretrain" / "final"} if c.pretrain is not None else {}),
                  "trained teacher": teacher}
        loaded = {}  # each model loaded once, for every task it is scored on
        for t in c.teacher.tasks:
            test = Path(t.data.path).expanduser().resolve() / "qrels" / f"{t.data.test_split}.tsv"
            if t.loss.name == "classification" or not test.is_file():
                say(f"  task {t.name}: no {t.data.test_split} judgements ({test}), not evaluated")
                continue
            data = load_beir(Path(t.data.path).expanduser().resolve(), t.data.test_split, missing_docs="keep")
            q = c.teacher.model.query_prompt if t.query_prompt is None else t.query_prompt
            d = c.teacher.model.doc_prompt if t.doc_prompt is None else t.doc_prompt
            row = {"split": t.data.test_split, "queries": len(data.qrels)}
            for label, path in models.items():
                if label not in loaded:
                    loaded[label] = load_encoder(str(path), _device(), precision=c.eval.precision)
                res = evaluate_retrieval(loaded[label], data, k=100, batch_size=c.eval.batch_size, query_prompt=q,
                                         doc_prompt=d, show_progress=False)
                row[label] = res.metrics
                say(f"  task {t.name}, {label}: nDCG@10 {res.metrics['ndcg@10']:.4f}")
            out[t.name] = row
        return out

    def stage_export(self) -> dict:
        student = self._student_model()
        results = json.loads((self.run / "test_results.json").read_text())
        staging = self.run / ".model.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(student, staging)
        meta_path = staging / "embedray.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        meta.setdefault("metrics", {})["test"] = {k: v for k, v in results.items() if k.startswith("distilled")}
        meta["data"] = {"path": str(self.data_dir), "test_split": self.cfg.data.test_split}
        meta["teacher"] = str(self.run / "teacher" / "final")
        meta_path.write_text(json.dumps(meta, indent=2))
        result = self._export_openvino_int8(staging) if self.cfg.export.openvino_int8 else {}
        target = self.run / "model"
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        if self.cfg.export.publish:
            published = publish(target, self.cfg.export.publish, "export.publish")
            say(f"  export: published {published.summary()}")
            result["published"] = redact(self.cfg.export.publish)
        return {"model": str(target), **result}

    def _export_openvino_int8(self, folder: Path) -> dict:
        """Add the calibrated int8 OpenVINO file to ``folder``, checked on the dev split (never
        test); returns what the stage marker and the report record about it."""
        from embedray.data.beir import beir_file
        from embedray.eval.export_check import check_int8_quality
        from embedray.models.backends import OPENVINO_DIR, OPENVINO_INT8_FILE
        from embedray.models.export import export_model

        dev = self.cfg.data.dev_split
        has_dev = dev is not None and (self.data_dir / "qrels" / f"{dev}.tsv").is_file()
        calibration = self.data_dir if has_dev else beir_file(self.data_dir, "corpus")
        say(f"  export: int8 OpenVINO file, calibrated on {self.cfg.export.calibration_samples} corpus texts"
            + (f", checked on the {dev} split" if has_dev else " (no dev split: unchecked, served only on request)"))
        record = export_model(folder, fmt="openvino", quantize="int8", calibration=calibration,
                              check_split=dev if has_dev else None,
                              calibration_samples=self.cfg.export.calibration_samples,
                              quality_check=check_int8_quality)
        quality = record["files"][f"{OPENVINO_DIR}/{OPENVINO_INT8_FILE}"]["quality"]
        if quality is not None:
            verdict = "served by embedray serve" if quality["passed"] else "kept, not served by default"
            say(f"  export: int8 nDCG@10 {quality['ndcg@10']:.4f} vs fp32 {quality['fp32_ndcg@10']:.4f} on "
                f"{quality['split']} ({quality['ratio']:.1%}): {verdict}")
        return {"openvino_int8": quality if quality is not None else {"passed": None, "split": None}}

    def stage_report(self) -> dict:
        return write_report(self.run, self.cfg)

    # -- helpers -------------------------------------------------------------------------
    def _student_model(self) -> Path:
        """The distilled student as evaluated and exported (rotated when configured)."""
        return self.run / "student" / ("rotated" if self.cfg.student.rotates else "final")

    def _rotate_student(self) -> dict:
        """Rotate ``student/final`` onto the principal axes of its embeddings of the training
        queries and positives (never dev or test texts) into ``student/rotated``."""
        data_cfg = self._data()
        data = load_training_data(data_cfg)
        texts = rotation.fit_texts(((data.queries[r["query_id"]], data.doc_text(r["pos_id"])) for r in pair_rows(data_cfg)
                           if r.get("query_id") in data.queries and r.get("pos_id") in data.corpus),
                          self.cfg.student.pca_max_texts)
        info = rotation.rotate_model(self.run / "student" / "final", texts, self._student_model(),
                            batch_size=self.cfg.eval.batch_size)
        say(f"  student rotated onto principal axes ({info['fit_texts']} training texts; "
             f"variance kept: {rotation.variance_summary(info)})")
        return info

    def _teacher_docs(self, name_or_path, corpus=None):
        """Teacher corpus embeddings through the teacher stage's embedding cache (keyed by the
        weights and each text). The base teacher's are encoded here and read by that stage's
        first mining round, cross-encoder check and first dev evaluation; the trained teacher's
        were written by its final dev evaluation (the dev corpus is the test corpus)."""
        c = self.cfg
        # A folder the pipeline wrote holds merged weights: encoded in full precision, whatever
        # the teacher trained with (a QLoRA teacher's base model too: as the refresher encodes it).
        model = BiEncoder.from_config(replace(c.teacher.model, name_or_path=str(name_or_path), finetune="full")).eval()
        model.to(_device())
        model.precision = c.eval.precision  # part of the cache key: as the stages that share it encode
        return cached_doc_embeddings(model, c.teacher.model, c.mining.doc_prompt,
                                     self._test_data().corpus if corpus is None else corpus,
                                     self.run / "teacher" / "cache", store=True, batch_size=c.eval.batch_size)

    def _seed_student_pool(self) -> None:
        """Publish the teacher's newest negative pool as the student's (once; a resumed student
        keeps the pool it trained on)."""
        src_root, dst_root = self.run / "teacher" / "pools", self.run / "student" / "pools"
        if (dst_root / "LATEST").exists():
            return
        if not (src_root / "LATEST").exists():
            raise ValueError(f"student.train.negatives: pool needs the teacher's mined pool, but "
                             f"{src_root} has none (teacher refresh.mode: off?); use negatives: random")
        src = PoolStore(src_root)
        pool = src.load(src.latest_version())
        if self.cfg.teacher.tasks:  # a multi-task teacher's pool: the pipeline's own task's part
            pool = task_pool(pool, self.cfg.teacher.task_name)
        PoolStore(dst_root).publish(pool)

    def _base_student(self) -> str:
        s = self.cfg.student
        if s.keep_layers is None:
            return s.model.name_or_path if s.model else self.cfg.teacher.model.name_or_path
        if students.keeps_every_layer(self.cfg.teacher.model.name_or_path, s.keep_layers) and s.max_seq_length is None:
            return self.cfg.teacher.model.name_or_path  # before training, the student is the base teacher
        out = self.run / "base-student"
        if not (out / "modules.json").exists():
            students.layer_reduced_student(resolve_model(self.cfg.teacher.model.name_or_path), s.keep_layers, out,
                                  max_seq_length=s.max_seq_length)
        return str(out)

    def _test_data(self):
        if not hasattr(self, "_test"):
            self._test = load_beir(self.data_dir, self.cfg.data.test_split, missing_docs="keep")
        return self._test

    def _evaluate_model(self, name_or_path, truncate_dim=None, corpus_embeddings=None, keep: bool = False,
                        speed: bool = True):
        """Test-split metrics + encode speed of one model (``speed=False``: measured by the
        caller); with ``keep``, also its :class:`EvalResult` (run and document embeddings)."""
        model = load_encoder(str(name_or_path), _device(), precision=self.cfg.eval.precision)
        res = evaluate_retrieval(model, self._test_data(), k=100, batch_size=self.cfg.eval.batch_size,
                                 query_prompt=self.cfg.teacher.model.query_prompt, doc_prompt=self.cfg.teacher.model.doc_prompt,
                                 show_progress=False, truncate_dim=truncate_dim, corpus_embeddings=corpus_embeddings,
                                 return_embeddings=keep)
        dim = truncate_dim or (getattr(model, "get_embedding_dimension", None)
                               or model.get_sentence_embedding_dimension)()  # renamed in sentence-transformers 6
        docs_per_s = self._encode_speeds({"model": model})["model"] if speed else None
        say(f"  {Path(str(name_or_path)).name} (dim {dim}): nDCG@10 {res.metrics['ndcg@10']:.4f}"
             + (f", {docs_per_s:.0f} docs/s" if speed else ""))
        row = {**res.metrics, "docs_per_s": docs_per_s, "dim": dim}
        return (row, res) if keep else row

    def _encode_speeds(self, models: dict, n: int = 256, rounds: int = 3) -> dict[str, float]:
        """Docs/s of each model (a loaded encoder or a path) on the same first ``n`` test-corpus
        documents: a warm-up each, then ``rounds`` timed passes taken in turns (model A, B, A, B:
        a slower minute of the machine slows all of them), best pass per model."""
        docs = [d.text_for_model for d in list(self._test_data().corpus.values())[:n]]
        device = _device()
        loaded = {k: load_encoder(str(m), device, precision=self.cfg.eval.precision)
                  if isinstance(m, (str, Path)) else m for k, m in models.items()}
        for model in loaded.values():
            model.encode(docs[:32], batch_size=self.cfg.eval.batch_size)
        best = dict.fromkeys(loaded, float("inf"))
        for _ in range(rounds):
            for label, model in loaded.items():
                t0 = time.perf_counter()
                model.encode(docs, batch_size=self.cfg.eval.batch_size)
                best[label] = min(best[label], time.perf_counter() - t0)
        speeds = {label: len(docs) / s for label, s in best.items()}
        if len(speeds) > 1:
            say("  encode speed, timed in turns: "
                 + ", ".join(f"{k} {v:.0f} docs/s" for k, v in speeds.items()))
        return speeds

    def _rerank_choice(self, teacher: Path, ce: Path) -> dict:
        """How the report reranks the trained teacher, decided on dev against the trained teacher
        itself (the gate compared the cross-encoder with the base model, a weaker first stage):
        the cross-encoder alone when it reranks dev at least as well, else its score fused with
        the teacher's at the dev-chosen weight when that reranks dev better, else not at all.
        Written to ``rerank_dev.json``."""
        c, depth = self.cfg, self.cfg.eval.rerank_depth
        if not c.data.dev_split:
            return {"mode": "cross_encoder", "why": "no dev split to decide on: the cross-encoder alone"}
        out = rerank_choice(self._teacher_dev_rerank(teacher, ce, depth, fuse=c.cross_encoder.fuse), depth)
        write_json_atomic(out, self.run / "rerank_dev.json")
        return out

    def _teacher_dev_rerank(self, teacher: Path, ce: Path, depth: int, fuse: bool = True,
                            temperature: bool = False) -> dict:
        """:func:`evaluate_reranker` of the cross-encoder on the trained teacher's dev top-``depth``."""
        c = self.cfg
        dev = load_beir(self.data_dir, c.data.dev_split, missing_docs="keep")
        model = load_encoder(str(teacher), _device(), precision=c.eval.precision)
        first = evaluate_retrieval(model, dev, k=max(depth, 10), batch_size=c.eval.batch_size,
                                   query_prompt=c.teacher.model.query_prompt, doc_prompt=c.teacher.model.doc_prompt,
                                   show_progress=False, corpus_embeddings=self._teacher_docs(teacher, dev.corpus))
        return evaluate_reranker(str(ce), dev, first.run, k=depth, precision=c.cross_encoder.precision,
                                 fuse=fuse, temperature=temperature)

    def _student_fusion(self) -> dict | None:
        """Under ``student.score_source: fused``: the weight of the cross-encoder's score fused with
        the *trained* teacher's, and the fused scores' temperature, both chosen on dev against the
        trained teacher (the gate fused the cross-encoder with the base model, a weaker bi-encoder).
        Written to ``student/fusion_dev.json`` (reused on resume); None without a dev split (the
        gate's weight then) or when the gate failed the cross-encoder."""
        path = self.run / "student" / "fusion_dev.json"
        if path.is_file():
            return json.loads(path.read_text())
        c = self.cfg
        verdict = read_gate(self.run / "teacher")
        if not c.data.dev_split or (verdict is not None and not verdict["passed"]):
            return None  # a failed gate: the student job refuses fused targets, saying why
        depth = c.cross_encoder.dev_rerank_depth or c.eval.rerank_depth
        report = self._teacher_dev_rerank(self.run / "teacher" / "final", self.run / "teacher" / "cross-encoder",
                                          depth, fuse=True, temperature=True)
        fused = report["fused"]
        alpha = float(fused["alpha"])
        temperature = at_weight(fused["temperature"], alpha)["value"]
        out = {"alpha": alpha, "temperature": temperature, "depth": depth,
               "dev": {"teacher": report["before"]["ndcg@10"], "cross_encoder": report["after"]["ndcg@10"],
                       "fused": fused["after"]["ndcg@10"]},
               "ndcg@10_by_alpha": fused.get("ndcg@10", {})}
        say(f"  fused distillation targets: weight {alpha:g} and temperature {temperature:g}, chosen on dev "
            f"(top-{depth} of the trained teacher: nDCG@10 {out['dev']['teacher']:.4f}, cross-encoder alone "
            f"{out['dev']['cross_encoder']:.4f}, fused {out['dev']['fused']:.4f})")
        write_json_atomic(out, path)
        return out

    def _rerank_row(self, first_stage_run: dict, ce: Path, alpha: float | None = None) -> dict:
        """The cross-encoder reranking the trained teacher's top-k on test; with ``alpha`` (the
        fusion weight chosen on dev) its score fused with the teacher's."""
        report = evaluate_reranker(str(ce), self._test_data(), first_stage_run, k=self.cfg.eval.rerank_depth,
                                   precision=self.cfg.cross_encoder.precision,
                                   fuse=alpha if alpha is not None else False)
        after = report["fused"]["after"] if alpha is not None else report["after"]
        return {**after, "rerank_depth": self.cfg.eval.rerank_depth, "before_rerank_ndcg@10": report["before"]["ndcg@10"],
                **({"fusion_alpha": alpha, "cross_encoder_alone_ndcg@10": report["after"]["ndcg@10"]}
                   if alpha is not None else {})}

    def _placed_jobs(self, plan: dict[str, str]) -> dict[str, TrainJobConfig]:
        """What each training stage that will run asks the cluster for (its workers; the teacher's
        refresher too): only ``cluster`` and ``refresh`` matter, so no stage's inputs are needed."""
        return {stage: TrainJobConfig(cluster=self._cluster(stage), refresh=replace(
                    self.cfg.refresh, mode=self.cfg.refresh.mode if stage == "teacher" else "off"))
                for stage in ("pretrain", "teacher", "student") if stage in self.stages and plan[stage] != "skip"}

    def _cluster(self, stage: str):
        return replace(self.cfg.cluster, storage_path=str(self.run), run_name=stage)

    def _data(self):
        pairs = self.data_dir / "train_pairs.jsonl"
        return replace(self.cfg.data, path=str(self.data_dir),
                       train_pairs=str(pairs) if pairs.exists() else self.cfg.data.train_pairs)

    def _pretrain_job(self, data: Path):
        c = self.cfg
        pairs = DataConfig(path=str(data), train_pairs=str(data / "train_pairs.jsonl"), dev_split=None)
        return TrainJobConfig(data=pairs, model=copy.deepcopy(c.teacher.model), loss=copy.deepcopy(c.pretrain.loss),
                              train=copy.deepcopy(c.pretrain.train), cluster=self._cluster("pretrain"))

    def _teacher_start(self) -> ModelConfig:
        """The teacher's model section, starting from the pre-trained weights when there are some."""
        model = copy.deepcopy(self.cfg.teacher.model)
        if self.cfg.pretrain is not None:
            model.name_or_path = str(self.run / "pretrain" / "final")
        return model

    def _teacher_job(self):
        c = self.cfg
        data = {"tasks": c.teacher_tasks(self._data())} if c.teacher.tasks else \
            {"data": self._data(), "loss": copy.deepcopy(c.teacher.loss)}
        return TrainJobConfig(**data, model=self._teacher_start(), train=copy.deepcopy(c.teacher.train),
                              cluster=self._cluster("teacher"), mining=copy.deepcopy(c.mining),
                              cross_encoder=copy.deepcopy(c.cross_encoder), refresh=copy.deepcopy(c.refresh))

    def _student_job(self):
        c, s = self.cfg, self.cfg.student
        teacher = self.run / "teacher" / "final"
        if s.keep_layers is not None:
            init = self.run / "student-init"
            if not (init / "modules.json").exists():
                students.layer_reduced_student(teacher, s.keep_layers, init, max_seq_length=s.max_seq_length)
            model = replace(c.teacher.model, name_or_path=str(init), max_seq_length=s.max_seq_length)
        else:
            model = copy.deepcopy(s.model) if s.model else ModelConfig()
        loss = replace(s.loss, matryoshka_dims=s.matryoshka_dims, matryoshka_weights=s.matryoshka_weights)
        train = copy.deepcopy(s.train)
        ce = teacher.parent / "cross-encoder"
        gate_file = teacher.parent / GATE_FILE
        if gate_file.is_file() and not (self.run / "student" / GATE_FILE).is_file():
            # The teacher's verdict on its cross-encoder holds for the student (no second dev check).
            write_json_atomic(json.loads(gate_file.read_text()), self.run / "student" / GATE_FILE)
        if train.negatives == "pool" and (s.score_source == "teacher" or self._teacher_pool_scored()):
            # The student trains on the teacher's last (refreshed, denoised) pool, scored by the teacher
            # (and by the cross-encoder, whose scores that pool carries).
            self._seed_student_pool()
            refresh = replace(c.refresh, mode="static", cross_encoder=str(ce) if ce.exists() else None)
        elif s.score_source in ("cross_encoder", "fused"):
            refresh = replace(c.refresh, mode="static", cross_encoder=str(ce))
        else:
            refresh = replace(c.refresh, mode="off")
        fusion = {}
        if s.score_source == "fused" and (chosen := self._student_fusion()) is not None:
            fusion = {"fusion_alpha": chosen["alpha"], "fusion_temperature": chosen["temperature"]}
        return TrainJobConfig(data=self._data(), model=model, loss=loss, train=train,
                              cluster=self._cluster("student"), mining=copy.deepcopy(c.mining),
                              cross_encoder=copy.deepcopy(c.cross_encoder), refresh=refresh,
                              distill=DistillConfig(teacher=str(teacher), score_source=s.score_source,
                                                    cross_encoder_temperature=s.cross_encoder_temperature, **fusion))

    def _teacher_pool_scored(self) -> bool:
        """Whether the teacher's newest pool carries cross-encoder scores (its positives' at least)."""
        src = PoolStore(self.run / "teacher" / "pools")
        version = src.latest_version()
        return bool(version) and bool(src.load(version).positive_scores)


#: The stages that encode (evaluations): run where the runtime runs stage work, not in the driver.
ENCODING_STAGES = ("baseline", "evaluate")


def _run_stage(pipeline: Pipeline, stage: str) -> dict:
    return getattr(pipeline, f"stage_{stage}")() or {}


def pretrain_pairs(corpus, cfg, out: Path) -> str:
    """Write ``cfg.builder``'s pairs from the first ``cfg.max_texts`` corpus texts as a BEIR folder
    with ``train_pairs.jsonl`` (:func:`embedray.data.flag.write_flag_folder`) at ``out``, atomically;
    returns the builder's counts."""
    import tempfile

    from embedray.atomic import replace_dir
    from embedray.data import builders
    from embedray.data.flag import write_flag_jsonl

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.tmp-") as tmp:
        texts = Path(tmp) / "texts.jsonl"
        docs = list(corpus.values())[: cfg.max_texts]
        texts.write_text("".join(json.dumps({"text": d.text_for_model}) + "\n" for d in docs), encoding="utf-8")
        build = {"nsp": lambda: builders.build_nsp(texts, progress=True),
                 "span": lambda: builders.build_span(texts, ratio=cfg.span_ratio, seed=cfg.seed),
                 "simcse": lambda: builders.build_simcse(texts)}[cfg.builder]
        rows, stats = build()
        if not rows:
            raise ValueError(f"pretrain.builder {cfg.builder}: no pairs from {len(docs)} corpus texts ({stats.summary()})")
        write_flag_jsonl(rows, Path(tmp) / "pairs.jsonl")
        write_flag_folder({"train": Path(tmp) / "pairs.jsonl"}, Path(tmp) / "data")
        replace_dir(Path(tmp) / "data", out)
    return stats.summary()


def _upstream(stage: str) -> set[str]:
    """Every stage ``stage`` reads from, directly or through another stage."""
    direct = set(STAGE_READS[stage][1])
    return direct.union(*(_upstream(s) for s in direct))


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


