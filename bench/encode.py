"""Encode throughput on this machine: embedray's encoder vs sentence-transformers, and the GEMM peak.

Texts: a fixed sample of ``--docs`` documents of a BEIR corpus (default SciFact's abstracts,
title + text as evaluation encodes them), truncated at ``--max-len`` 256 tokens. Every variant
encodes the same texts at batch ``--batch-size``; the variants take turns for ``--rounds``
rounds after a warm-up each (median per variant), the peers in their own processes included, so
a busy neighbour or the machine's drift slows all of them alike.

- ``st fp32``: ``SentenceTransformer(folder).encode`` as installed (fp32, the default);
- ``st bf16 autocast``: the same call under ``torch.autocast("cpu", torch.bfloat16)``;
- ``st bf16 weights``: ``model_kwargs={"dtype": torch.bfloat16}`` (bf16 weights end to end);
- ``st onnx int8``: sentence-transformers' own ``backend="onnx"`` on its dynamic int8 export
  (``export_dynamic_quantized_onnx_model``, ``avx512_vnni``), run in the separate virtualenv
  ``bench/peer_venvs.sh`` builds (optimum-onnx needs an older transformers than the project);
  skipped, with the reason printed, where that virtualenv is missing;
- ``st openvino``: sentence-transformers' own ``backend="openvino"`` (optimum-intel exports the
  folder on load; OpenVINO's default precision, bf16 on a CPU with AMX), run in the virtualenv
  ``bench/peer_venvs.sh st-openvino`` builds; skipped like the ONNX peer where it is missing;
- ``st openvino int8``: sentence-transformers' ``export_static_quantized_openvino_model`` with
  its default settings (NNCF static int8), calibrated on the same corpus (a local copy of its
  texts, since the helper's default calibration set is on the hub), loaded with
  ``backend="openvino"`` and that file, in the same virtualenv;
- ``embedray``: :func:`embedray.eval.retrieval.load_encoder` with ``precision="auto"`` — what
  ``embedray eval``, mining, the refresher and serving load;
- ``embedray onnx int8``: ``embedray export --quantize int8`` of the folder (a temporary copy),
  loaded with ``load_encoder(backend="onnx")`` — what ``embedray serve`` runs by default on a
  folder with only an int8 export;
- ``embedray openvino``: ``embedray export --format openvino`` of the same copy, loaded with
  ``load_encoder(backend="openvino", precision="auto")`` (bf16 on a CPU with bf16 units) — what
  ``embedray eval --backend openvino`` runs on that export: static-shape copies of the graph for
  the batch shapes that repeat (``OvTransformer``'s ``static_shapes``), compiled during the
  warm-up; ``embedray serve`` runs the same file on the dynamic graph alone;
- ``embedray openvino int8``: ``embedray export --format openvino --quantize int8 --calibration
  CORPUS`` of the same copy (calibrated on the corpus file, so without the retrieval check: its
  quality is measured by the export command on a BEIR folder, README), loaded with
  ``load_encoder(backend="openvino", onnx_file="openvino_model_qint8_quantized.xml")`` — the file
  ``embedray serve`` runs by default where that check passed, here with static-shape copies as above.

The GEMM peak is measured in the same run: the best of ``2048 x 2048`` matmuls in fp32 and bf16.
``of_peak`` is the useful work rate of embedray's fastest variant (tokens/s x FLOP/token of the
transformer, from its config, padding not counted) divided by the bf16 peak (int8 counts the
same FLOPs against the bf16 peak).

With ``--profile``, OpenVINO's performance counters of embedray's fastest OpenVINO variant over one
more pass: the share of its inference time per node type / kernel (where the time goes, e.g.
the attention block against the projections).

Printed: the table, then ``ratio vs_st_fp32`` (embedray's fastest variant / st fp32),
``ratio vs_st_best`` (the same / the fastest sentence-transformers variant that ran) and
``ratio of_peak``.

Run:  .venv/bin/python bench/encode.py [--data ../shared/datasets/scifact] [--profile] [--json out.json]
      (bash bench/peer_venvs.sh st-onnx st-openvino first for the ONNX and OpenVINO peers)
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("st fp32", "st bf16 autocast", "st bf16 weights", "st onnx int8", "st openvino", "st openvino int8",
            "embedray", "embedray onnx int8", "embedray openvino", "embedray openvino int8")
OURS = ("embedray", "embedray onnx int8", "embedray openvino", "embedray openvino int8")
EXPORTED = ("embedray onnx int8", "embedray openvino", "embedray openvino int8")
PEER_VENVS = Path(os.environ.get("PEER_VENVS", "/tmp/embedray-peer-venvs"))
#: The peers run in their own virtualenvs (``bench/peer_venvs.sh NAME``), each by its script.
OUT_OF_PROCESS = {"st onnx int8": "st-onnx", "st openvino": "st-openvino", "st openvino int8": "st-openvino"}

#: How every out-of-process peer ends: a warm-up, ``ready``, then one timed pass per ``round`` line
#: on its stdin (so that its rounds take turns with the in-process variants').
ST_TIMING = r"""
model.max_seq_length = int(max_len)
model.encode(texts[:int(batch)], batch_size=int(batch))
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() != "round":
        break
    start = time.perf_counter()
    model.encode(texts, batch_size=int(batch))
    print(json.dumps({"docs_per_s": len(texts) / (time.perf_counter() - start)}), flush=True)
"""

#: How every out-of-process peer starts: its arguments, the texts, a copy of the folder to export into.
ST_SETUP = r"""
import json, shutil, sys, time
from pathlib import Path
import sentence_transformers as st
src, work, texts_file, batch, threads, max_len = sys.argv[1:7]
import torch; torch.set_num_threads(int(threads))
texts = json.loads(Path(texts_file).read_text())
folder = Path(work) / "model"
shutil.copytree(src, folder, ignore=shutil.ignore_patterns("onnx", "openvino"))
"""

#: Run in the ST-ONNX virtualenv: export int8 the sentence-transformers way, then time it.
ST_ONNX_SCRIPT = ST_SETUP + r"""
onnx = st.SentenceTransformer(str(folder), backend="onnx", local_files_only=True)
st.export_dynamic_quantized_onnx_model(onnx, "avx512_vnni", str(folder))
model = st.SentenceTransformer(str(folder), backend="onnx", local_files_only=True,
                               model_kwargs={"file_name": "onnx/model_qint8_avx512_vnni.onnx",
                                             "provider": "CPUExecutionProvider"})
""" + ST_TIMING

#: Run in the ST-OpenVINO virtualenv: load the folder with backend="openvino" as a user does.
ST_OPENVINO_SCRIPT = ST_SETUP + r"""
model = st.SentenceTransformer(str(folder), backend="openvino", local_files_only=True,
                               model_kwargs={"ov_config": {"INFERENCE_NUM_THREADS": int(threads)}})
""" + ST_TIMING

#: Run in the ST-OpenVINO virtualenv: sentence-transformers' static int8 export with its default
#: settings, calibrated on the benchmark's corpus (``calibration/train.jsonl``, column ``text``).
ST_OPENVINO_INT8_SCRIPT = ST_SETUP + r"""
ov = st.SentenceTransformer(str(folder), backend="openvino", local_files_only=True)
st.export_static_quantized_openvino_model(ov, None, str(folder), dataset_name=str(Path(work) / "calibration"),
                                          dataset_config_name="default", dataset_split="train",
                                          column_name="text")
model = st.SentenceTransformer(str(folder), backend="openvino", local_files_only=True,
                               model_kwargs={"file_name": "openvino/openvino_model_qint8_quantized.xml",
                                             "ov_config": {"INFERENCE_NUM_THREADS": int(threads)}})
""" + ST_TIMING
SCRIPTS = {"st onnx int8": ST_ONNX_SCRIPT, "st openvino": ST_OPENVINO_SCRIPT,
           "st openvino int8": ST_OPENVINO_INT8_SCRIPT}


def gemm_peak(n: int = 2048, repeats: int = 10) -> dict[str, float]:
    """Best GFLOP/s of an ``n x n`` matmul in fp32 and bf16 on this CPU."""
    import torch

    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b  # warm-up
        best = min(_timed(lambda: a @ b) for _ in range(repeats))
        out[name] = round(2 * n**3 / best / 1e9, 1)
    return out


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def openvino_profile(model, texts: list[str], batch: int, max_len: int, top: int = 6) -> dict[str, float]:
    """Where an OpenVINO-backed model's inference time goes: OpenVINO's own performance counters
    over one pass of ``texts`` (the same graph and settings, compiled with ``PERF_COUNT``; where the
    model keeps static-shape copies, one per batch shape, padded as it pads), as the share of each
    node type / kernel, largest first."""
    import collections

    import openvino as ov

    from embedray.models.backends import _feeds, pad_feeds, pooled_graph, static_length

    runner = model[0].auto_model
    core = ov.Core()
    graph = core.read_model(str(runner.path))
    if runner.pooling is not None:
        graph = pooled_graph(graph, runner.pooling)
    props = {**runner.props, "PERF_COUNT": True}
    requests: dict = {}
    spent: collections.Counter[str] = collections.Counter()
    ordered = sorted(texts, key=len)
    for i in range(0, len(ordered), batch):
        enc = model.tokenizer(ordered[i:i + batch], truncation=True, max_length=max_len, padding=True,
                              return_tensors="pt")
        rows, length = enc["input_ids"].shape
        shape = (rows, static_length(length, runner._max_length)) if runner.static_shapes else None
        if shape not in requests:
            shaped = graph.clone()
            if shape is not None:
                shaped.reshape({p.get_any_name(): ov.PartialShape(list(shape)) for p in shaped.inputs})
            requests[shape] = core.compile_model(shaped, "CPU", props).create_infer_request()
        request = requests[shape]
        feeds = _feeds([p.get_any_name() for p in request.model_inputs], enc["input_ids"], enc["attention_mask"],
                       enc.get("token_type_ids"))
        request.infer(feeds if shape is None else pad_feeds(feeds, shape[1]))
        for node in request.profiling_info:
            spent[f"{node.node_type}/{node.exec_type}"] += node.real_time.total_seconds()
    total = sum(spent.values()) or 1.0
    return {k: round(v / total, 3) for k, v in spent.most_common(top)}


def flop_per_text(config, n_tokens: int) -> float:
    """Forward FLOPs of a BERT-style encoder on one text of ``n_tokens`` (multiply-add = 2).

    Per layer and token: Q, K, V, O projections (4 h^2), the feed-forward (2 h i), and attention
    over the text's own tokens (scores and values, 2 n h); each counted twice (multiply, add).
    """
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    return layers * n_tokens * 2 * (4 * h * h + 2 * h * i + 2 * n_tokens * h)


def sample_texts(data: str, n: int, seed: int = 0) -> list[str]:
    """A fixed random sample of ``n`` corpus texts (title + text)."""
    from embedray.data.beir import iter_corpus

    docs = list(iter_corpus(Path(data) / "corpus.jsonl"))
    return [d.text_for_model for d in random.Random(seed).sample(docs, min(n, len(docs)))]


def load_variant(folder: Path, variant: str, max_len: int):
    """The model of one in-process variant and the context to call it in."""
    import contextlib

    import torch
    from sentence_transformers import SentenceTransformer

    from embedray.models.backends import INT8_FILE, OPENVINO_INT8_FILE

    if variant in OURS:
        from embedray.models.backends import load_encoder

        kwargs = {"embedray onnx int8": {"backend": "onnx", "onnx_file": INT8_FILE},
                  "embedray openvino": {"backend": "openvino"},
                  "embedray openvino int8": {"backend": "openvino", "onnx_file": OPENVINO_INT8_FILE}}.get(variant, {})
        model, ctx = load_encoder(folder, max_seq_length=max_len, precision="auto", **kwargs), contextlib.nullcontext
    else:
        kwargs = {"model_kwargs": {"dtype": torch.bfloat16}} if variant == "st bf16 weights" else {}
        model = SentenceTransformer(str(folder), device="cpu", local_files_only=True, **kwargs)
        model.max_seq_length = max_len
        ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if variant == "st bf16 autocast" \
            else contextlib.nullcontext
    return model, ctx


class Peer:
    """A sentence-transformers backend in its own virtualenv and process, timed one pass per
    :meth:`round`; ``error`` says why it can't run (then it has no process)."""

    def __init__(self, variant: str, folder: Path, texts: list[str], batch: int, threads: int, max_len: int,
                 corpus: Path):
        self.variant, self.proc, self.error = variant, None, None
        venv = PEER_VENVS / OUT_OF_PROCESS[variant]
        python = venv / "bin" / "python"
        if not python.exists():
            self.error = f"no {venv} (bash bench/peer_venvs.sh {venv.name} builds it)"
            return
        self.tmp = tempfile.TemporaryDirectory(prefix="embedray-bench-st-peer-")
        work = Path(self.tmp.name)
        texts_file = work / "texts.json"
        texts_file.write_text(json.dumps(texts))
        if variant == "st openvino int8":  # the corpus as a local datasets folder: column "text"
            from embedray.data.beir import iter_corpus

            (work / "calibration").mkdir()
            with open(work / "calibration" / "train.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps({"text": d.text_for_model}) + "\n" for d in iter_corpus(corpus))
        self.stderr = open(work / "stderr.log", "w+", encoding="utf-8")
        self.proc = subprocess.Popen(
            [str(python), "-c", SCRIPTS[variant], str(folder), str(work), str(texts_file), str(batch), str(threads),
             str(max_len)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
        while (line := self.proc.stdout.readline()) and line.strip() != "ready":
            pass
        if not line:
            self._fail()

    def _fail(self) -> None:
        self.proc.wait(timeout=60)
        self.stderr.seek(0)
        self.error = "failed: " + (self.stderr.read().strip().splitlines() or ["?"])[-1]
        self.close()

    def round(self) -> float | None:
        """docs/s of one timed pass over the texts (``None`` once it has failed)."""
        if self.proc is None:
            return None
        self.proc.stdin.write("round\n")
        self.proc.stdin.flush()
        while line := self.proc.stdout.readline():
            if line.startswith("{"):
                return float(json.loads(line)["docs_per_s"])
        self._fail()
        return None

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            self.proc = None
            self.stderr.close()
            self.tmp.cleanup()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="minilm-l6", help="bundled name or sentence-transformers folder")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "scifact"), help="BEIR folder")
    p.add_argument("--docs", type=int, default=512, help="texts per round")
    p.add_argument("--max-len", type=int, default=256, help="token cap")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of every variant")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of: " + ", ".join(VARIANTS))
    p.add_argument("--profile", action="store_true",
                   help="also print where embedray's fastest OpenVINO variant spends its inference time "
                        "(OpenVINO's performance counters, share per node type / kernel)")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()

    import torch
    from transformers import AutoConfig, AutoTokenizer

    from embedray.models.bundled import resolve_model
    from embedray.models.precision import resolve_precision

    torch.set_num_threads(a.threads)
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    if unknown := set(variants) - set(VARIANTS) or ({"embedray"} - set(variants)):
        p.error(f"variants: {sorted(unknown)} unknown or missing; choose from {', '.join(VARIANTS)} "
                "(embedray included)")
    folder = resolve_model(a.model)
    texts = sample_texts(a.data, a.docs)
    corpus = Path(a.data) / "corpus.jsonl"
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=a.max_len)["input_ids"]]
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    flops = sum(flop_per_text(config, n) for n in lengths)
    peak = gemm_peak()
    print(f"GEMM 2048x2048: fp32 {peak['fp32']} GFLOP/s, bf16 {peak['bf16']} GFLOP/s; "
          f"{len(texts)} texts, {sum(lengths) / len(lengths):.0f} tokens on average", flush=True)

    skipped: dict[str, str] = {}
    docs_s: dict[str, float] = {}
    peers = [Peer(v, folder, texts, a.batch_size, a.threads, a.max_len, corpus) for v in variants
             if v in OUT_OF_PROCESS]
    in_process = [v for v in variants if v not in OUT_OF_PROCESS]
    tmp = tempfile.TemporaryDirectory(prefix="embedray-bench-encode-")
    exported = Path(tmp.name) / "model"
    if set(EXPORTED) & set(in_process):
        from embedray.models.export import export_model

        export_model(folder, exported, quantize="int8")
        if "embedray openvino int8" in in_process:
            export_model(exported, fmt="openvino", quantize="int8", calibration=corpus)
        elif "embedray openvino" in in_process:
            export_model(exported, fmt="openvino")
    models = {v: load_variant(exported if v in EXPORTED else folder, v, a.max_len)
              for v in in_process}
    for model, ctx in models.values():
        with ctx():
            model.encode(texts[:a.batch_size], batch_size=a.batch_size)  # warm-up
    times: dict[str, list[float]] = {v: [] for v in [p.variant for p in peers] + in_process}
    for _ in range(a.rounds):  # each round: every peer's pass, then every in-process variant's
        for peer in peers:
            if (rate := peer.round()) is not None:
                times[peer.variant].append(rate)
        for variant, (model, ctx) in models.items():
            with ctx():
                times[variant].append(len(texts) / _timed(lambda: model.encode(texts, batch_size=a.batch_size)))
    for peer in peers:
        peer.close()
        if peer.error:
            skipped[peer.variant] = peer.error
    docs_s.update({v: round(statistics.median(t), 1) for v, t in times.items() if v not in skipped})
    profile: dict[str, float] = {}
    openvino_run = [v for v in OURS if "openvino" in v and v in docs_s]
    if a.profile and openvino_run:
        profiled = max(openvino_run, key=docs_s.get)
        profile = openvino_profile(models[profiled][0], texts, a.batch_size, a.max_len)
    tmp.cleanup()

    fastest = max((v for v in OURS if v in docs_s), key=docs_s.get)
    ours = docs_s[fastest]
    st = {v: r for v, r in docs_s.items() if v.startswith("st ")}
    best = max(st, key=st.get) if st else None
    achieved = ours / len(texts) * flops / 1e9  # GFLOP/s of useful work
    print(f"\nencode, {a.model}, {len(texts)} docs of {Path(a.data).name}, max {a.max_len} tokens, batch "
          f"{a.batch_size}, {a.threads} threads, median of {a.rounds} (embedray precision: "
          f"{resolve_precision('auto')})")
    for variant in variants:
        if variant in docs_s:
            base = docs_s.get("st fp32")
            rel = f"x{docs_s[variant] / base:.2f} of st fp32" if base else ""
            print(f"  {variant:22s} {docs_s[variant]:7.1f} docs/s  {rel}")
        else:
            print(f"  {variant:22s} skipped: {skipped[variant]}")
    print(f"  {fastest} (embedray's fastest): {achieved:.0f} GFLOP/s of useful work = "
          f"{achieved / peak['bf16']:.1%} of the bf16 GEMM peak")
    if profile:
        print(f"  {profiled}: OpenVINO's inference time by node type / kernel (performance counters)")
        for kind, share in profile.items():
            print(f"    {kind:50s} {share:6.1%}")
    if "st fp32" in docs_s:
        print(f"ratio vs_st_fp32 {ours / docs_s['st fp32']:.3f}")
    if best:
        print(f"ratio vs_st_best {ours / st[best]:.3f}")
    print(f"ratio of_peak {achieved / peak['bf16']:.3f}")
    if a.json:
        Path(a.json).write_text(json.dumps({
            "model": a.model, "docs": len(texts), "max_len": a.max_len, "batch_size": a.batch_size,
            "threads": a.threads, "gemm_gflops": peak, "docs_per_s": docs_s, "skipped": skipped,
            "st_best": best, "embedray_fastest": fastest, "embedray_gflops": round(achieved, 1),
            "openvino_profile": profile,
            "ratio": {"vs_st_fp32": round(ours / docs_s["st fp32"], 3) if "st fp32" in docs_s else None,
                      "vs_st_best": round(ours / st[best], 3) if best else None,
                      "of_peak": round(achieved / peak["bf16"], 3)}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
