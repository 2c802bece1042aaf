"""Every local Ray the project starts listens on loopback only, with token auth on, and a new
machine (empty home directory) gets its token created with mode 0600.

Each mode is started as a user starts it (the head script; ``embedray serve`` without
``RAY_ADDRESS``, with the UI) and the OS socket table is read for every process of that Ray.
"""
from __future__ import annotations

import ipaddress
import os
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _tree(roots: list[psutil.Process]) -> list[psutil.Process]:
    seen: dict[int, psutil.Process] = {}
    for p in roots:
        for q in [p, *p.children(recursive=True)]:
            seen.setdefault(q.pid, q)
    return list(seen.values())


def listening(procs: list[psutil.Process]) -> list[tuple[int, str, str, int]]:
    """``(pid, process name, ip, port)`` of every listening TCP socket of ``procs``."""
    out = []
    for p in procs:
        try:
            name = p.name()
            out += [(p.pid, name, c.laddr.ip, c.laddr.port) for c in p.net_connections(kind="tcp")
                    if c.status == psutil.CONN_LISTEN]
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return out


def describe(sockets: list[tuple[int, str, str, int]]) -> str:
    """``name ip:port`` of each socket, one line each (printed with ``pytest -s``)."""
    return "\n".join(f"  {name:40s} {ip}:{port}" for _, name, ip, port in sorted(sockets, key=lambda s: s[1]))


def assert_loopback_only(sockets: list[tuple[int, str, str, int]]) -> None:
    """Fail on any socket beyond loopback, naming process and port -- but for the one Ray Serve
    cannot be told to bind elsewhere (a replica's inter-deployment gRPC server, hard-coded to
    ``[::]:0`` in Ray Serve 2.60), which must then refuse a call without the Ray token."""
    exposed = [f"{name} (pid {pid}) listens on {ip}:{port}" for pid, name, ip, port in sockets
               if not _is_loopback(ip) and not name.startswith("ray::ServeReplica")]
    assert not exposed, "sockets beyond loopback:\n" + "\n".join(exposed)
    for _, name, ip, port in sockets:
        if not _is_loopback(ip):
            assert_token_guards_replica_grpc(port)


def assert_token_guards_replica_grpc(port: int) -> None:
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.RpcError) as refused:
            channel.unary_unary("/ray.serve.ASGIService/HandleRequest")(b"", timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, (port, refused.value)


def _clean_env(home: Path) -> dict[str, str]:
    """The environment of a new user: an empty home, no Ray settings of the developer's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "EMBEDRAY_"))}
    env.update(HOME=str(home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def _assert_new_token(home: Path) -> None:
    token = home / ".ray" / "auth_token"
    assert token.is_file(), "no auth token was created in the empty home"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600, oct(token.stat().st_mode)
    assert len(token.read_text().strip()) >= 32


def test_head_script_listens_on_loopback_with_token_auth(tmp_path):
    home, state = tmp_path / "home", tmp_path / "state"
    home.mkdir()
    short = tempfile.mkdtemp(prefix="er-", dir="/tmp")  # Ray's socket paths must stay short
    env = {**_clean_env(home), "EMBEDRAY_RAY_STATE": str(state), "EMBEDRAY_RAY_TMP": short}
    start = subprocess.run(["scripts/ray-head.sh", "start"], cwd=REPO, env=env, capture_output=True, text=True)
    try:
        assert start.returncode == 0, start.stderr[-3000:]
        assert "created a Ray auth token at" in start.stderr
        _assert_new_token(home)
        env.update(dict(kv.split("=", 1) for kv in (state / "env").read_text().split()[1:]))
        # a job with an actor, so that job supervisor, driver and workers are up while we look
        job = ("import ray, time; ray.init(); a = ray.remote(num_cpus=0.1)(type('A', (), {'f': lambda s: 1}))"
               ".remote(); ray.get(a.f.remote()); print('actor-ready', flush=True); time.sleep(30)")
        job_id = "embedray-loopback-test"
        sub = subprocess.run([str(BIN / "ray"), "job", "submit", "--no-wait", "--submission-id", job_id,
                              "--", "python", "-c", job], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=120)
        assert sub.returncode == 0, sub.stderr[-2000:]
        deadline = time.time() + 90
        while "actor-ready" not in (logs := subprocess.run([str(BIN / "ray"), "job", "logs", job_id], cwd=REPO,
                                                           env=env, capture_output=True, text=True)).stdout:
            assert time.time() < deadline, f"the job's actor did not come up: {logs.stdout} {logs.stderr}"
            time.sleep(1)
        # the head's processes name its temp dir, but for the Ray client server, which names its port
        client_port = int((state / "client-port").read_text())
        ours = (f"{short}/session_", f"--port={client_port}")
        procs = _tree([p for p in psutil.process_iter(["cmdline"])
                       if any(a == ours[1] or ours[0] in a for a in (p.info["cmdline"] or []))])
        sockets = listening(procs)
        print(f"\nhead script: {len(sockets)} listening sockets of {len(procs)} processes\n{describe(sockets)}")
        names = {name for _, name, _, _ in sockets}
        assert {"gcs_server", "raylet"} <= names and len(sockets) >= 8, sockets
        assert any(port == client_port for *_, port in sockets), "the Ray client server was not found"
        assert_loopback_only(sockets)
        # `embedray serve` joining the head (as `make demo` ends): served, and loopback still
        port = free_port()
        serving = subprocess.Popen([str(BIN / "embedray"), "serve", "tiny-bert", "--port", str(port),
                                    "--cpus-per-replica", "0.5"], cwd=tmp_path, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            _wait_http(f"http://127.0.0.1:{port}/health", serving, timeout_s=180)
            procs = _tree([p for p in psutil.process_iter(["cmdline"])
                           if any(a == ours[1] or ours[0] in a for a in (p.info["cmdline"] or []))]
                          + [psutil.Process(serving.pid)])
            joined = listening(procs)
            print(f"head + embedray serve: {len(joined)} listening sockets\n{describe(joined)}")
            assert any(p == port for *_, p in joined)
            assert_loopback_only(joined)
        finally:
            _stop(serving)
        # token auth guards the job API: no token or a wrong one is refused
        api = env["RAY_API_SERVER_ADDRESS"]
        assert httpx.get(f"{api}/api/jobs/", timeout=10).status_code == 401
        wrong = subprocess.run([str(BIN / "ray"), "job", "list"], cwd=REPO, capture_output=True, text=True,
                               env={**env, "RAY_AUTH_TOKEN": "0" * 64}, timeout=60)
        assert wrong.returncode != 0 and "invalid" in (wrong.stdout + wrong.stderr).lower()
    finally:
        subprocess.run(["scripts/ray-head.sh", "stop"], cwd=REPO, env=env, check=False)
        shutil.rmtree(short, ignore_errors=True)


def _wait_http(url: str, proc: subprocess.Popen, timeout_s: float = 240) -> None:
    deadline = time.time() + timeout_s
    while True:
        assert proc.poll() is None, f"the server exited with {proc.returncode}"
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.time() < deadline, f"{url} did not answer in {timeout_s} s"
        time.sleep(1)


def test_embedray_serve_with_its_own_ray_listens_on_loopback(tmp_path, serve_assets):
    home = tmp_path / "home"
    home.mkdir()
    port, ui_port = free_port(), free_port()
    proc = subprocess.Popen(
        [str(BIN / "embedray"), "serve", "tiny-bert", "--corpus", str(serve_assets.corpus),
         "--cross-encoder", str(serve_assets.cross_encoder), "--port", str(port), "--ui", "--ui-port", str(ui_port),
         "--cpus-per-replica", "0.5", "--reranker-cpus", "0.2"],
        cwd=tmp_path, env=_clean_env(home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", proc)
        _wait_http(f"http://127.0.0.1:{ui_port}/", proc)
        _assert_new_token(home)
        procs = _tree([psutil.Process(proc.pid)])
        sockets = listening(procs)
        print(f"\nembedray serve: {len(sockets)} listening sockets of {len(procs)} processes\n{describe(sockets)}")
        names = {name for _, name, _, _ in sockets}
        assert {"gcs_server", "raylet"} <= names, sockets
        assert any(p == port for *_, p in sockets) and any(p == ui_port for *_, p in sockets), sockets
        assert_loopback_only(sockets)
    finally:
        out = _stop(proc)
    assert "created a Ray auth token at" in out, out[-3000:]
    # its own Ray, one replica, one model: the replica answers on --port itself, the proxy beside it
    assert f"ingress: the replica answers on http://127.0.0.1:{port} itself" in out, out[-3000:]


def _stop(proc: subprocess.Popen) -> str:
    """SIGTERM (what Ctrl-C does to `embedray serve`), SIGKILL the tree if it hangs; its output."""
    proc.terminate()
    try:
        return proc.communicate(timeout=90)[0]
    except subprocess.TimeoutExpired:
        for p in _tree([psutil.Process(proc.pid)]):
            p.kill()
        return proc.communicate()[0]
