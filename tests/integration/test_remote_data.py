"""Data named by an ``s3://`` URI, served by a local S3 server (moto's, on 127.0.0.1): mirrored
once, copied again only where the source changed, and read by ``embedray eval`` and
``embedray train`` as the same folder on disk would be."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from embedray.data.remote import _relative, is_uri, localize, mirror, plain_path, redact
from embedray.pipeline.fingerprint import files_identity

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A local S3 endpoint and the ``AWS_*`` settings that point pyarrow and boto3 at it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_EC2_METADATA_DISABLED": "true"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"the S3 server did not start: {log.read_text()[-2000:]}")
                time.sleep(0.1)
        client = boto3.client("s3")
        client.create_bucket(Bucket="corpora")
        yield client, env
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def upload(client, folder: Path, prefix: str) -> None:
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            client.upload_file(str(f), "corpora", f"{prefix}/{f.relative_to(folder).as_posix()}")


def test_uris_and_paths():
    assert is_uri("s3://bucket/x") and is_uri("gs://b/x") and is_uri("hdfs://nn:8020/x")
    assert not is_uri("data/x") and not is_uri("/abs/x") and not is_uri(None) and not is_uri("C:\\data")
    assert not is_uri("file:///tmp/x") and plain_path("file:///tmp/a%20b") == "/tmp/a b"
    assert redact("s3://AKIA:s3cret@bucket/x") == "s3://bucket/x"
    assert str(_relative("b/data", "b/data/qrels/dev.tsv", "s3://b/data")) == "qrels/dev.tsv"
    for bad in ("b/data/../etc/passwd", "b/other/x", "b/database/x", "b/data/" + ".embedray-mirror.json"):
        with pytest.raises(ValueError, match="can't be mirrored"):
            _relative("b/data", bad, "s3://b/data")


def test_a_runs_own_folder_may_not_be_a_uri():
    from embedray.config import ConfigError, load_config
    from embedray.pipeline.config import PipelineConfig
    from embedray.training.config import ClusterConfig

    with pytest.raises(ValueError, match=r"^cluster\.storage_path: s3://bucket/runs is a URI; .*must be a path"):
        ClusterConfig(storage_path="s3://KEY:SECRET@bucket/runs")
    with pytest.raises((ValueError, ConfigError), match=r"output_dir: gs://b/runs is a URI"):
        load_config(PipelineConfig, None, ["output_dir=gs://b/runs"])
    assert ClusterConfig(storage_path="file:///tmp/runs").storage_path == "/tmp/runs"


def test_a_folder_is_mirrored_once_and_follows_its_source(s3, topic_beir, tmp_path):
    client, _ = s3
    upload(client, topic_beir, "beir-a")
    uri, root = "s3://corpora/beir-a", tmp_path / "mirrors"
    first = mirror(uri, root, "data.path", progress=False)
    local = first.local
    assert local.name == "beir-a" and local.parent.parent == root.resolve()
    names = sorted(f.relative_to(local).as_posix() for f in local.rglob("*") if f.is_file())
    assert names == sorted(f.relative_to(topic_beir).as_posix() for f in topic_beir.rglob("*") if f.is_file())
    for name in names:
        assert (local / name).read_bytes() == (topic_beir / name).read_bytes(), name
    assert (first.files, first.copied, first.removed) == (len(names), len(names), 0)

    again = mirror(uri, root, "data.path", progress=False)
    assert (again.local, again.copied) == (local, 0)
    identity = files_identity([local], root=local)  # what a pipeline's resume check compares
    size_before = (local / "corpus.jsonl").stat().st_size

    # The source changes: one file rewritten, one deleted; only those are touched.
    corpus = (topic_beir / "corpus.jsonl").read_text()
    client.put_object(Bucket="corpora", Key="beir-a/corpus.jsonl",
                      Body=(corpus + '{"_id": "extra", "text": "a new document"}\n').encode())
    client.delete_object(Bucket="corpora", Key="beir-a/qrels/dev.tsv")
    changed = mirror(uri, root, "data.path", progress=False)
    assert (changed.copied, changed.removed, changed.files) == (1, 1, len(names) - 1)
    assert (local / "corpus.jsonl").read_text().endswith('"a new document"}\n')
    assert (local / "corpus.jsonl").stat().st_size != size_before
    changed_identity = files_identity([local], root=local)
    assert changed_identity["corpus.jsonl"] != identity["corpus.jsonl"] and "qrels/dev.tsv" not in changed_identity
    assert changed_identity["queries.jsonl"] == identity["queries.jsonl"]
    assert not (local / "qrels" / "dev.tsv").exists() and (local / "qrels" / "train.tsv").is_file()
    manifest = json.loads((local.parent / ".embedray-mirror.json").read_text())
    assert manifest["uri"] == uri and "qrels/dev.tsv" not in manifest["files"]
    assert "1 copied" in changed.summary() and "1 removed" in changed.summary()


def test_missing_and_empty_sources_name_the_setting(s3, tmp_path):
    client, _ = s3
    with pytest.raises(ValueError, match=r"^data\.train_pairs: s3://corpora/nothing/pairs\.jsonl: not found"):
        mirror("s3://corpora/nothing/pairs.jsonl", tmp_path, "data.train_pairs", progress=False)
    with pytest.raises(ValueError, match=r"^data\.path: s3://no-such-bucket/x: "):
        mirror("s3://no-such-bucket/x", tmp_path, "data.path", progress=False)
    client.put_object(Bucket="corpora", Key="hollow/")
    with pytest.raises(ValueError, match="an empty folder"):
        mirror("s3://corpora/hollow", tmp_path, "data.path", progress=False)


def test_localize_rewrites_every_data_setting_of_a_pipeline(s3, topic_beir, tmp_path):
    from embedray.pipeline.config import PipelineConfig, TaskConfig
    from embedray.training.config import DataConfig

    client, _ = s3
    upload(client, topic_beir, "beir-b")
    flag = tmp_path / "train.jsonl"
    flag.write_text('{"query": "q", "pos": ["p"]}\n')
    client.upload_file(str(flag), "corpora", "flag/train.jsonl")
    cfg = PipelineConfig()
    cfg.data.path = "s3://corpora/beir-b"
    cfg.prepare.flag_train = "s3://corpora/flag/train.jsonl"
    cfg.prepare.flag_test = f"file://{flag}"
    cfg.teacher.tasks = [TaskConfig(name="other", data=DataConfig(path="s3://corpora/beir-b", dev_split=None))]
    done = localize(cfg, tmp_path / "m", progress=False)
    assert set(done.mirrors) == {"data.path", "prepare.flag_train", "teacher.tasks[other].data.path"}
    assert cfg.data.path == cfg.teacher.tasks[0].data.path == str(done.mirrors["data.path"].local)
    assert done.mirrors["data.path"] is done.mirrors["teacher.tasks[other].data.path"]  # copied once
    assert Path(cfg.prepare.flag_train).read_text() == flag.read_text()
    assert cfg.prepare.flag_test == str(flag)
    assert all(line.startswith("[embedray] ") and "s3://corpora/" in line for line in done.lines())


def _cli(args: list[str], env: dict, home: Path) -> subprocess.CompletedProcess:
    full = {**os.environ, **env, "HOME": str(home), "EMBEDRAY_CACHE": str(home / "cache"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "embedray.cli", *args], env=full, cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def test_eval_reads_an_s3_folder_as_the_local_one(s3, topic_beir, tmp_path):
    client, env = s3
    upload(client, topic_beir, "beir-c")
    out = {}
    for name, data in (("local", str(topic_beir)), ("s3", "s3://corpora/beir-c")):
        r = _cli(["eval", "--model", "tiny-bert", "--data", data, "--split", "test", "--no-progress",
                  "--output", str(tmp_path / f"{name}.json")], env, tmp_path / "home")
        assert r.returncode == 0, r.stderr[-3000:]
        out[name] = json.loads((tmp_path / f"{name}.json").read_text())["results"]["tiny-bert"]["metrics"]
        if name == "s3":
            assert "[embedray] --data: s3://corpora/beir-c → " in r.stderr and "copied" in r.stderr
            assert str(tmp_path / "home" / "cache" / ".data") in r.stderr
    assert out["s3"] == out["local"] and out["s3"]["ndcg@10"] > 0
    r = _cli(["eval", "--model", "tiny-bert", "--data", "s3://corpora/missing"], env, tmp_path / "home")
    assert r.returncode == 2 and "--data: s3://corpora/missing: not found" in r.stderr


def test_serve_reads_its_corpus_from_s3(s3, topic_beir, tmp_path, monkeypatch, capsys):
    from embedray.cli import build_parser
    from embedray.cli.serve import config_from_args

    client, _ = s3
    client.upload_file(str(topic_beir / "corpus.jsonl"), "corpora", "serve/corpus.jsonl")
    monkeypatch.setenv("EMBEDRAY_CACHE", str(tmp_path / "cache"))
    args, _ = build_parser().parse_known_args(["serve", "tiny-bert", "--corpus", "s3://corpora/serve/corpus.jsonl"])
    corpus = Path(config_from_args(args).corpus)
    assert corpus.parent.parent == tmp_path / "cache" / ".data" and corpus.name == "corpus.jsonl"
    assert corpus.read_bytes() == (topic_beir / "corpus.jsonl").read_bytes()
    assert "[embedray] --corpus: s3://corpora/serve/corpus.jsonl → " in capsys.readouterr().err


def test_train_reads_its_corpus_and_parquet_pairs_from_s3(s3, parquet_beir, tmp_path):
    client, env = s3
    upload(client, parquet_beir, "parquet")
    recipe = tmp_path / "job.yaml"
    storage = tmp_path / "runs"
    recipe.write_text(
        "data: {path: s3://corpora/parquet, train_pairs: s3://corpora/parquet/train_pairs.parquet, "
        "dev_split: dev}\n"
        "model: {name_or_path: tiny-bert}\n"
        "train: {max_steps: 2, batch_size: 4, num_negatives: 0, negatives: none, eval_every: 0, "
        "checkpoint_every: 2, max_doc_length: 32, num_threads: 1}\n"
        f"cluster: {{num_workers: 1, storage_path: {storage}, run_name: s3-run}}\n")
    r = _cli(["train", str(recipe), "--local"], env, tmp_path / "home")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "[embedray] data.path: s3://corpora/parquet → " + str(storage / ".data") in r.stdout
    assert "[embedray] data.train_pairs: s3://corpora/parquet/train_pairs.parquet → " in r.stdout
    summary = json.loads(r.stdout[r.stdout.index("{"):])
    assert summary["steps"] == 2 and summary["train_pairs"] == 32


def test_data_flag_converts_files_from_s3(s3, tmp_path, monkeypatch, capsys):
    from embedray.cli import main

    client, _ = s3
    fixtures = REPO / "tests" / "fixtures" / "flag"
    for split in ("train", "test"):
        client.upload_file(str(fixtures / f"{split}.jsonl"), "corpora", f"flag-cli/{split}.jsonl")
    monkeypatch.setenv("EMBEDRAY_CACHE", str(tmp_path / "cache"))
    assert main(["data", "flag", str(tmp_path / "remote"), "--train", "s3://corpora/flag-cli/train.jsonl",
                 "--test", "s3://corpora/flag-cli/test.jsonl"]) == 0
    remote = capsys.readouterr()
    assert "[embedray] --train: s3://corpora/flag-cli/train.jsonl → " in remote.err
    assert main(["data", "flag", str(tmp_path / "local"), "--train", str(fixtures / "train.jsonl"),
                 "--test", str(fixtures / "test.jsonl")]) == 0
    assert remote.out.splitlines()[:-1] == capsys.readouterr().out.splitlines()[:-1]  # all but the "wrote" line
    for name in ("corpus.jsonl", "queries.jsonl", "train_pairs.jsonl", "qrels/test.tsv"):
        assert (tmp_path / "remote" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    assert main(["data", "flag", str(tmp_path / "x"), "--train", "s3://corpora/flag-cli/nope.jsonl"]) == 1
    assert "--train: s3://corpora/flag-cli/nope.jsonl: not found" in capsys.readouterr().err


def test_a_model_folder_on_s3_loads_and_serves_as_the_local_one(s3, tmp_path, monkeypatch, capsys):
    import numpy as np

    from embedray.cli import build_parser
    from embedray.cli.serve import config_from_args
    from embedray.models.backends import load_encoder
    from embedray.models.bundled import UnknownModelError, resolve_model

    client, _ = s3
    monkeypatch.setenv("EMBEDRAY_CACHE", str(tmp_path / "cache"))
    local = resolve_model("tiny-bert")
    upload(client, local, "models/tiny")
    uri = "s3://corpora/models/tiny"
    mirrored = resolve_model(uri)
    assert mirrored.parent.parent == tmp_path / "cache" / ".data" and mirrored.name == "tiny"
    assert "[embedray] model: s3://corpora/models/tiny → " in capsys.readouterr().err
    assert resolve_model(uri) == mirrored and capsys.readouterr().err == ""  # nothing to copy: nothing said
    texts = ["debian package tools", "a second text"]
    a = load_encoder(str(local), "cpu", precision="fp32", backend="torch").encode(texts)
    b = load_encoder(uri, "cpu", precision="fp32", backend="torch").encode(texts)
    np.testing.assert_array_equal(a, b)
    args, _ = build_parser().parse_known_args(["serve", uri])
    cfg = config_from_args(args)
    assert cfg.model_dir == str(mirrored) and cfg.model_name == "tiny"
    with pytest.raises(UnknownModelError, match="s3://corpora/models/none: not found"):
        resolve_model("s3://corpora/models/none")


def test_exporting_a_model_named_by_a_uri_needs_an_out_folder():
    from embedray.models.export import export_model

    with pytest.raises(ValueError, match="s3://corpora/models/tiny: a URI .*pass --out DIR"):
        export_model("s3://KEY:SECRET@corpora/models/tiny", None, "onnx")


def test_a_pipeline_publishes_its_model_for_another_machine_to_serve(s3, topic_beir, tmp_path, monkeypatch, capsys):
    import shutil

    import numpy as np

    from embedray.config import build_config
    from embedray.data.remote import PUBLISHED, check_publishable, publish
    from embedray.models.backends import load_encoder
    from embedray.models.bundled import resolve_model
    from embedray.pipeline.config import PipelineConfig
    from embedray.pipeline.stages import Pipeline

    client, _ = s3
    monkeypatch.setenv("EMBEDRAY_CACHE", str(tmp_path / "cache"))
    dest = "s3://corpora/published/student"

    def pipeline(publish_to):
        return Pipeline(build_config(PipelineConfig, {
            "name": "pub", "output_dir": str(tmp_path / "runs"), "prepare": {"source": "beir"},
            "data": {"path": str(topic_beir)}, "student": {"pca_rotation": False},
            "export": {"publish": publish_to}}, "test"))

    upload(client, topic_beir, "not-a-model")
    with pytest.raises(ValueError, match=r"export\.publish: s3://corpora/not-a-model: holds 5 files no earlier "
                                         r"publish wrote \(e\.g\. corpus\.jsonl\)"):
        pipeline("s3://corpora/not-a-model")  # said before any stage runs
    run = pipeline(dest)
    shutil.copytree(resolve_model("tiny-bert"), run.run / "student" / "final")
    row = {"ndcg@10": 0.5, "recall@100": 0.9, "mrr@10": 0.45, "docs_per_s": 100.0, "dim": 32}
    (run.run / "test_results.json").write_text(json.dumps({"trained teacher": row, "distilled student": row}))
    result = run.stage_export()
    assert result["published"] == dest
    assert f"export: published {run.run / 'model'} → {dest} (" in capsys.readouterr().out
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="corpora", Prefix="published/student/")["Contents"]}
    local = sorted(p.relative_to(run.run / "model").as_posix() for p in (run.run / "model").rglob("*") if p.is_file())
    assert {k for k in keys if not k.endswith("/")} == {f"published/student/{n}" for n in [*local, PUBLISHED]}

    # Elsewhere: served from the URI, the very embeddings of the run's folder.
    texts = ["debian package tools", "a second text"]
    np.testing.assert_array_equal(load_encoder(dest, "cpu", precision="fp32").encode(texts),
                                  load_encoder(str(run.run / "model"), "cpu", precision="fp32").encode(texts))

    # A second publish replaces the first: what the new folder lacks is deleted from the destination.
    (run.run / "model" / "README.md").unlink(missing_ok=True)
    (run.run / "model" / "extra.txt").write_text("x")
    again = publish(run.run / "model", dest, progress=False)
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="corpora", Prefix="published/student/")["Contents"]}
    assert "published/student/extra.txt" in keys and "published/student/README.md" not in keys
    assert again.removed == ("README.md" in local)
    check_publishable(dest)  # a destination a publish wrote may be written again
    # A path works as a destination too.
    published = publish(run.run / "model", str(tmp_path / "models" / "student"), progress=False)
    assert (tmp_path / "models" / "student" / PUBLISHED).is_file() and published.files == len(local)
