"""Serving benchmark: embedray (Ray Serve, token-budget dynamic batching) vs a plain
sentence-transformers model behind a minimal FastAPI/uvicorn app, same model, same machine,
same run.

For each server in turn (the baseline, infinity-emb, then embedray in its default layout (backend
``auto``: OpenVINO on a converted copy where the CPU has bf16 units), the same on torch, behind
Ray Serve's proxy with ``--replicas``, and with those replicas on their own ports; never two at
once), a closed-loop load generator keeps ``c`` requests in flight (c = 1, 8, 32), each request
embedding one text from a fixed, seeded mix of short and long texts, and records embeddings/s,
the p50/p99 request latency and its own CPU time per request (aiohttp, bodies serialised up
front: the client shares the cores with the server under test, so it is kept light; ``--client
httpx`` for the heavier httpx client). It prints a table per embedray layout with the
embedray/baseline ratios, then ``ratio vs_st_fastapi_c32`` (embedray as ``embedray serve
MODEL`` runs it, over the baseline's embeddings/s at c=32), ``ratio p99_vs_st_fastapi_c32`` (its p99
over the baseline's; below 1 is better), ``ratio default_vs_torch_c32`` (the default layout
over the same on torch) and ``ratio vs_infinity_c32`` (over infinity-emb
serving the same folder on the CPU, torch engine, from the virtualenv ``bench/peer_venvs.sh``
builds; skipped without it).

    .venv/bin/python bench/serve.py                        # minilm-l6, ~6-8 min on 2 CPU cores
    .venv/bin/python bench/serve.py --layout direct --requests 200 --json out.json

Target (issue 6): >= 1.5x the baseline's throughput at c=32 with a p99 no worse.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx  # noqa: E402
from pydantic import BaseModel  # noqa: E402

WORDS = ("package library daemon python gtk font kernel module music image viewer mail server client "
         "network tool compress archive editor terminal database driver firmware graphics audio video "
         "backup secure shell web proxy cache index search text document utility desktop").split()


def make_texts(n: int, seed: int = 0) -> list[str]:
    """Seeded texts of 4-60 words (mostly short, some long), like queries and package descriptions."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.choice([4, 6, 8, 12, 20, 40, 60]))) for _ in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BaselineRequest(BaseModel):
    input: str | list[str]


# -- the baseline server (run in a subprocess: `bench/serve.py --baseline-server PORT MODEL`) --------

def run_baseline_server(port: int, model_dir: str) -> None:
    """The minimal way to serve sentence-transformers: FastAPI + uvicorn, ``encode`` per request."""
    import uvicorn
    from fastapi import FastAPI
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device="cpu")
    app = FastAPI()

    @app.post("/v1/embeddings")
    def embed(req: BaselineRequest):  # sync: FastAPI runs it in its thread pool
        texts = [req.input] if isinstance(req.input, str) else req.input
        emb = model.encode(texts)
        return {"object": "list", "data": [{"object": "embedding", "index": i, "embedding": e.tolist()}
                                           for i, e in enumerate(emb)]}

    @app.get("/health")
    def health():
        return {"status": "ok"}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# -- load generation -----------------------------------------------------------------------------

async def load(urls: str | list[str], texts: list[str], concurrency: int, n_requests: int,
               extra: dict | None = None, client: str = "aiohttp") -> dict[str, float]:
    """Closed loop: ``concurrency`` workers send ``n_requests`` single-text requests in total
    (worker i to ``urls[i % len(urls)]``: client-side balancing over several replica ports).

    The client shares the machine with the server under test, so by default it is kept light:
    aiohttp's C HTTP parser, request bodies serialised once up front, responses parsed with
    orjson. ``client="httpx"`` is the heavier httpx client, for comparison. Its CPU time per
    request is reported (``client_cpu_ms_per_req``)."""
    import aiohttp
    import orjson

    urls = [urls] if isinstance(urls, str) else urls
    bodies = [orjson.dumps({"input": t, **(extra or {})}) for t in texts]
    headers = {"content-type": "application/json"}
    latencies: list[float] = []
    errors = 0
    next_i = 0

    async def post_aiohttp(session, url: str, body: bytes) -> tuple[int, bytes]:
        async with session.post(url, data=body, headers=headers) as r:
            return r.status, await r.read()

    async def post_httpx(session, url: str, body: bytes) -> tuple[int, bytes]:
        r = await session.post(url, json=orjson.loads(body))  # httpx serialises it, as the earlier client did
        return r.status_code, r.content

    if client == "httpx":
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        session, post = httpx.AsyncClient(timeout=120, limits=limits), post_httpx
    else:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                        timeout=aiohttp.ClientTimeout(total=120))
        post = post_aiohttp
    cpu0 = time.process_time()
    async with session:
        async def worker(url: str):
            nonlocal next_i, errors
            while next_i < n_requests:
                i = next_i
                next_i += 1
                t0 = time.perf_counter()
                status, body = await post(session, url, bodies[i % len(bodies)])
                latencies.append(time.perf_counter() - t0)
                if status != 200 or not orjson.loads(body)["data"]:
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*[worker(urls[w % len(urls)]) for w in range(concurrency)])
        wall = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    latencies.sort()
    return {"embeddings_per_s": len(latencies) / wall, "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "requests": len(latencies), "errors": errors, "wall_s": wall,
            "client_cpu_ms_per_req": 1000 * cpu / max(1, len(latencies))}


def wait_healthy(url: str, timeout_s: float = 300) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not healthy after {timeout_s}s")


#: The load generator's HTTP client (``--client``).
CLIENT = {"name": "aiohttp"}


def measure(name: str, url: str | list[str], texts: list[str], levels: list[int], requests: dict[int, int],
            warmup: int, route: str = "/v1/embeddings", extra: dict | None = None) -> dict[int, dict[str, float]]:
    routes = [u + route for u in ([url] if isinstance(url, str) else url)]
    client = CLIENT["name"]
    asyncio.run(load(routes, texts, 8, warmup, extra, client))
    out = {}
    for c in levels:
        out[c] = asyncio.run(load(routes, texts, c, requests[c], extra, client))
        r = out[c]
        print(f"  {name:9s} c={c:<3d} {r['embeddings_per_s']:8.1f} emb/s  p50 {r['p50_ms']:7.1f} ms  "
              f"p99 {r['p99_ms']:7.1f} ms  ({r['requests']} req, {r['errors']} errors, "
              f"client {r['client_cpu_ms_per_req']:.2f} ms CPU/req)", flush=True)
    return out


def bench_baseline(model_dir: str, texts, levels, requests, warmup, threads: int | None = None) -> dict:
    """The baseline with torch's default threads (all cores), or ``threads`` via OMP_NUM_THREADS."""
    port = free_port()
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    proc = subprocess.Popen([sys.executable, __file__, "--baseline-server", str(port), model_dir], env=env)
    try:
        wait_healthy(f"http://127.0.0.1:{port}")
        name = f"base-{threads}t" if threads else "baseline"
        return measure(name, f"http://127.0.0.1:{port}", texts, levels, requests, warmup)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def bench_infinity(model_dir: str, texts, levels, requests, warmup, venv: Path) -> dict:
    """infinity-emb (its own virtualenv, ``bench/peer_venvs.sh``) serving the same folder on the
    CPU with its torch engine, batch 32, 127.0.0.1; its OpenAI-style route is ``/embeddings``."""
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DO_NOT_TRACK="1",
               INFINITY_ANONYMOUS_USAGE_STATS="0")
    proc = subprocess.Popen([str(venv / "bin" / "infinity_emb"), "v2", "--model-id", model_dir,
                             "--served-model-name", "bench", "--host", "127.0.0.1", "--port", str(port),
                             "--device", "cpu", "--engine", "torch", "--batch-size", "32", "--no-compile"],
                            env=env, stdout=subprocess.DEVNULL)
    try:
        wait_healthy(f"http://127.0.0.1:{port}")
        return measure("infinity", f"http://127.0.0.1:{port}", texts, levels, requests, warmup,
                       route="/embeddings", extra={"model": "bench"})
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def bench_embedray(model_dir: str, texts, levels, requests, warmup, args, layout: str = "default") -> dict:
    """embedray in one of three layouts:

    * ``default``: what ``embedray serve MODEL`` does on this machine (its own local Ray: the
      replica answers on the port itself and takes the machine's cores; ``backend: auto``, which
      on a CPU with bf16 units serves a converted OpenVINO copy of a folder without an export);
    * ``torch``: the same with ``--backend torch`` (the model as given, in ``precision: auto``);
    * ``proxy``: ``--replicas`` colocated replicas of ``--cpus-per-replica`` behind Ray Serve's proxy;
    * ``direct``: the same replicas on their own ports (``--direct-port``), the client spreading
      its connections over them.
    """
    import ray
    from ray import serve

    from embedray.cluster.runtime import init_local_ray
    from embedray.cluster.serve_app import direct_ingress_env, resolve_layout, start_serve
    from embedray.serve.config import ServeConfig

    port = free_port()
    common = dict(max_batch_tokens=args.max_batch_tokens, batch_wait_timeout_s=args.batch_wait_s)
    if layout in ("default", "torch"):
        backend = "torch" if layout == "torch" else "auto"
        cfg = resolve_layout(ServeConfig(model_dir, port=port, backend=backend, **common), own_ray=True)
    else:
        # Ray's convention: a replica gets as many torch threads as CPUs it reserves (1 here);
        # the cores are used by running replicas side by side.
        cfg = ServeConfig(model_dir, port=port, replicas=args.replicas, cpus_per_replica=args.cpus_per_replica,
                          colocate=args.colocate, ingress="proxy",
                          direct_port=free_port_range(port, args.replicas) if layout == "direct" else 0, **common)
    print(f"  {layout}: ingress {cfg.ingress}, {cfg.replicas} replica(s) x {cfg.cpus_per_replica:g} CPU", flush=True)
    saved = dict(os.environ)
    os.environ.update(direct_ingress_env(cfg))  # read by the Serve processes this ray.init starts
    init_local_ray(num_cpus=os.cpu_count(), log_to_driver=False)
    try:
        urls = start_serve(cfg)
        wait_healthy(urls["api"])
        info = httpx.get(urls["api"] + "/info", timeout=10).json()
        print(f"  {layout}: backend {info['backend']}, precision {info['precision']}"
              f"{', a converted copy' if info.get('converted') else ''}", flush=True)
        return measure(layout, urls["direct"] if layout == "direct" else urls["api"], texts, levels, requests,
                       warmup)
    finally:
        serve.shutdown()
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)


def free_port_range(avoid: int, n: int) -> int:
    """The first of ``n`` consecutive free 127.0.0.1 ports (none of them ``avoid``)."""
    for _ in range(100):
        first = free_port()
        ports = range(first, first + n)
        if avoid in ports or first + n > 65535:
            continue
        try:
            socks = [socket.create_server(("127.0.0.1", p)) for p in ports]
        except OSError:
            continue
        for sock in socks:
            sock.close()
        return first
    raise RuntimeError(f"no {n} consecutive free ports")


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--baseline-server":
        run_baseline_server(int(sys.argv[2]), sys.argv[3])
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm-l6", help="bundled name or folder (default: %(default)s)")
    p.add_argument("--levels", default="1,8,32", help="concurrency levels (default: %(default)s)")
    p.add_argument("--requests", type=int, default=400,
                   help="requests per level at c>=8; c=1 sends a quarter (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=40, help="warm-up requests per server (default: %(default)s)")
    p.add_argument("--replicas", type=int, default=2, help="embedray model replicas (default: %(default)s)")
    p.add_argument("--cpus-per-replica", type=float, default=0.9, help="(default: %(default)s)")
    p.add_argument("--baseline-1t", action="store_true",
                   help="also run the baseline with OMP_NUM_THREADS=1 (one torch thread)")
    p.add_argument("--colocate", action=argparse.BooleanOptionalAction, default=True,
                   help="model inside the HTTP replicas (default) or a separate Embedder deployment")
    p.add_argument("--layout", choices=["default", "torch", "proxy", "direct", "all"], default="all",
                   help="default: what `embedray serve MODEL` does here (the replica on the port itself, "
                        "all cores, backend auto); torch: the same with --backend torch; proxy: --replicas "
                        "behind Ray Serve's proxy; direct: the same replicas on their own ports (--direct-port); "
                        "all: each in turn (default: %(default)s)")
    p.add_argument("--max-batch-tokens", type=int, default=8192)
    p.add_argument("--batch-wait-s", type=float, default=0.005)
    p.add_argument("--infinity-venv", type=Path,
                   default=Path(os.environ.get("PEER_VENVS", "/tmp/embedray-peer-venvs")) / "infinity",
                   help="virtualenv with infinity-emb (bash bench/peer_venvs.sh builds it; "
                        "skipped with a message where it is missing) (default: %(default)s)")
    p.add_argument("--client", choices=["aiohttp", "httpx"], default="aiohttp",
                   help="the load generator's HTTP client: aiohttp (light) or httpx (heavier, for comparison) "
                        "(default: %(default)s)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    CLIENT["name"] = args.client

    from embedray.models.bundled import resolve_model

    model_dir = str(resolve_model(args.model))
    levels = [int(c) for c in args.levels.split(",")]
    requests = {c: max(20, args.requests // 4) if c == 1 else args.requests for c in levels}
    texts = make_texts(512)
    print(f"model {args.model} ({model_dir}); {os.cpu_count()} CPUs; one text per request; {args.client} client; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    results = {"baseline": bench_baseline(model_dir, texts, levels, requests, args.warmup)}
    if args.baseline_1t:
        results["base-1t"] = bench_baseline(model_dir, texts, levels, requests, args.warmup, threads=1)
    if (args.infinity_venv / "bin" / "infinity_emb").exists():
        results["infinity"] = bench_infinity(model_dir, texts, levels, requests, args.warmup, args.infinity_venv)
    else:
        print(f"infinity: skipped, no {args.infinity_venv}/bin/infinity_emb (bash bench/peer_venvs.sh)")
    ours = [name for name in ("default", "torch", "proxy", "direct") if args.layout in (name, "all")]
    for name in ours:
        results[name] = bench_embedray(model_dir, texts, levels, requests, args.warmup, args, layout=name)
    print("\ndefault = `embedray serve MODEL` (the replica on the port itself); torch = the same with "
          "--backend torch; proxy = --replicas behind Ray Serve's proxy; direct = the same replicas on their "
          "own ports")
    for base in [k for k in results if k not in ours]:
        for mine in ours:
            print(f"\n| concurrency | {base} emb/s | {mine} emb/s | throughput ratio | {base} p50/p99 ms "
                  f"| {mine} p50/p99 ms | p99 ratio |")
            print("|---|---|---|---|---|---|---|")
            for c in levels:
                b, e = results[base][c], results[mine][c]
                print(f"| {c} | {b['embeddings_per_s']:.1f} | {e['embeddings_per_s']:.1f} "
                      f"| {e['embeddings_per_s'] / b['embeddings_per_s']:.2f}x "
                      f"| {b['p50_ms']:.0f} / {b['p99_ms']:.0f} | {e['p50_ms']:.0f} / {e['p99_ms']:.0f} "
                      f"| {e['p99_ms'] / b['p99_ms']:.2f} |")
    top = max(levels)
    print()
    for mine in ours:
        b, e = results["baseline"][top], results[mine][top]
        ok = e["embeddings_per_s"] >= 1.5 * b["embeddings_per_s"] and e["p99_ms"] <= b["p99_ms"]
        print(f"target at c={top} (>= 1.5x throughput, p99 no worse), {mine}: {'met' if ok else 'NOT met'} "
              f"({e['embeddings_per_s'] / b['embeddings_per_s']:.2f}x, p99 {e['p99_ms']:.0f} vs {b['p99_ms']:.0f} ms)")
    ratios = {}
    if "default" in results and top == 32:
        b, e = results["baseline"][top], results["default"][top]
        ratios = {"vs_st_fastapi_c32": e["embeddings_per_s"] / b["embeddings_per_s"],
                  "p99_vs_st_fastapi_c32": e["p99_ms"] / b["p99_ms"]}
        if "torch" in results:
            ratios["default_vs_torch_c32"] = e["embeddings_per_s"] / results["torch"][top]["embeddings_per_s"]
        if "infinity" in results:
            ratios["vs_infinity_c32"] = e["embeddings_per_s"] / results["infinity"][top]["embeddings_per_s"]
    for name, value in ratios.items():
        print(f"ratio {name} {value:.3f}")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "client": args.client, "results": results,
                                         "ratio": {k: round(v, 3) for k, v in ratios.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
