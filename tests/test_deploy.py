"""Running loadgen's shards on Ray, checked without Docker, Kubernetes or Ray: the Dockerfile's
`loadgen-ray` target, the compose profile "ray" (a Ray head, two Ray workers, the simulator and a
driver) and the KubeRay manifests under deploy/kuberay/. Every loadgen command line in them is
parsed with loadgen's own argument parser. The compose file's helpers are tests/test_compose.py's."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from loadgen.cli import build_parser
from tests.test_compose import (
    ROOT,
    compose,
    dockerfile_stages,
    exec_form,
    flag_value,
    service,
)

RAY_TARGET = "loadgen-ray"
KUBERAY = ROOT / "deploy" / "kuberay"
RAY_SERVICES = ("ray-head", "ray-worker-1", "ray-worker-2", "loadgen-ray")
RAY_WORKERS = ("ray-worker-1", "ray-worker-2")
SECRET_ENV = "OPENAI_API_KEY"


def ray_pin() -> str:
    """The Ray version of pyproject's `ray` extra (`ray==X.Y.Z`)."""
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (requirement,) = extra["ray"]
    match = re.fullmatch(r"ray==(\d+\.\d+\.\d+)", requirement)
    assert match, f"pin one Ray release in the extra, not {requirement!r}"
    return match.group(1)


# ---------------------------------------------------------------- loadgen's own parser


def parse_loadgen(words: list[str]) -> argparse.Namespace:
    """`loadgen WORDS` parsed as loadgen parses it; a usage error fails the test with its text."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return build_parser(words[0]).parse_args(words)
    except SystemExit:
        raise AssertionError(f"loadgen {shlex.join(words)}: {err.getvalue().strip()}") from None


def after_word(command: list[str], word: str) -> list[str]:
    """The words after the first `word` (the program a command line starts)."""
    assert word in command, f"no {word!r} in {command}"
    return command[command.index(word) + 1 :]


def assert_run_on_ray(words: list[str], address: str = "auto") -> argparse.Namespace:
    """A `loadgen run` line that loadgen parses, names a scenario file of the repository (the
    images carry scenarios/ in their working directory) and runs its shards on Ray."""
    args = parse_loadgen(words)
    assert args.command == "run"
    assert args.scenario and (ROOT / args.scenario).is_file(), args.scenario
    assert Path(args.scenario).parent == Path("scenarios")
    assert args.ray == address, f"--ray {address} expected in {words}"
    assert args.output == "/results"
    return args


def test_parse_loadgen_reports_usage_errors() -> None:
    with pytest.raises(AssertionError, match="--no-such-flag"):
        parse_loadgen(["run", "scenarios/smoke.toml", "--no-such-flag"])
    args = parse_loadgen(["run", "scenarios/smoke.toml", "--ray", "--output", "/results"])
    assert args.ray == "auto"  # --ray without a value: the cluster this node belongs to
    assert parse_loadgen(["run", "scenarios/smoke.toml", "--ray", "ray-head:6379"]).ray == (
        "ray-head:6379"
    )
    assert parse_loadgen(["run", "scenarios/smoke.toml"]).ray is None  # the shards run here


# ---------------------------------------------------------------- Dockerfile: loadgen-ray


def test_ray_target_is_built_from_the_loadgen_build_stage() -> None:
    stages = dockerfile_stages()
    names = list(stages)
    assert RAY_TARGET in stages
    assert names[-1] == "loadgen", "the plain loadgen image stays the default target"
    assert stages[RAY_TARGET][0][1].split()[0] == "python:3.11-slim"
    # Its wheels come from a stage built on loadgen-build: loadgen with both extras, Ray at the
    # extra's pin, with the dashboard (ray[default]): the Jobs API and the nodes' health
    # endpoints that Compose and KubeRay use.
    copies = [a for k, a in stages[RAY_TARGET] if k == "COPY" and "--from=" in a]
    (builder,) = {m for a in copies for m in re.findall(r"--from=(\S+)", a)}
    assert stages[builder][0][1].split()[0] == "loadgen-build"
    wheels = " ".join(a for k, a in stages[builder] if k == "RUN")
    assert re.search(r"pip wheel .*\.\[fast,ray\]", wheels)
    assert f'"ray[default]=={ray_pin()}"' in wheels
    installs = " ".join(a for k, a in stages[RAY_TARGET] if k == "RUN")
    assert "pip install" in installs and '"loadgen[fast,ray]"' in installs
    assert f'"ray[default]=={ray_pin()}"' in installs


def test_ray_image_has_no_entrypoint_and_runs_as_the_loadgen_user() -> None:
    stage = dockerfile_stages()[RAY_TARGET]
    last = {k: a for k, a in stage}  # the last instruction of each kind is the one in force
    # KubeRay replaces the command with `/bin/bash -c "... ray start ..."`; Compose names the
    # program: so no entrypoint stands in front of either.
    assert exec_form(last["ENTRYPOINT"]) == []
    assert exec_form(last["CMD"])[0] == "loadgen"
    assert last["USER"] == "loadgen"
    assert any(k == "RUN" and "useradd" in a and "loadgen" in a for k, a in stage)
    assert last["WORKDIR"] == "/app"
    assert any(k == "COPY" and a.split() == ["scenarios", "./scenarios"] for k, a in stage)
    assert "RAY_USAGE_STATS_ENABLED=0" in " ".join(a for k, a in stage if k == "ENV")


# ---------------------------------------------------------------- compose: profile "ray"


def test_ray_profile_services_share_the_simulator() -> None:
    services = compose()["services"]
    in_profile = {name for name, svc in services.items() if "ray" in svc.get("profiles", ())}
    assert in_profile == {*RAY_SERVICES, "sim"}
    for name in RAY_SERVICES:
        svc = services[name]
        assert svc["profiles"] == ["ray"]
        assert svc["build"] == {"context": ".", "target": RAY_TARGET}
        assert svc["image"] == f"{RAY_TARGET}:local"
    assert RAY_TARGET in dockerfile_stages()


def test_ray_head_reserves_no_cpu_and_serves_the_jobs_api() -> None:
    head = service("ray-head")
    command = head["command"]
    assert command[:3] == ["ray", "start", "--head"]
    assert flag_value(command, "--num-cpus") == "0"  # the shards land on the workers
    assert flag_value(command, "--port") == "6379"
    assert flag_value(command, "--dashboard-host") == "0.0.0.0"
    assert "--block" in command  # the container lives as long as the node
    test = " ".join(head["healthcheck"]["test"])
    assert "/api/healthz" in test and ":8265/api/gcs_healthz" in test
    assert "depends_on" not in head


@pytest.mark.parametrize("worker", RAY_WORKERS)
def test_each_worker_joins_the_head_with_one_cpu(worker: str) -> None:
    svc = service(worker)
    command = svc["command"]
    head = service("ray-head")["command"]
    assert command[:2] == ["ray", "start"]
    assert "--head" not in command
    assert flag_value(command, "--address") == "ray-head:" + flag_value(head, "--port")
    assert flag_value(command, "--num-cpus") == "1"
    assert "--block" in command
    assert svc["depends_on"] == {"ray-head": {"condition": "service_healthy"}}
    assert ":52365/api/healthz" in " ".join(svc["healthcheck"]["test"])


def test_ray_nodes_get_the_api_key_from_the_environment_and_write_results() -> None:
    for name in ("ray-head", *RAY_WORKERS):
        svc = service(name, {"LOADGEN_UID": "1234", "LOADGEN_GID": "99"})
        assert SECRET_ENV in svc["environment"], "passed through, never written into the file"
        assert svc["user"] == "1234:99"
        assert "./results:/results" in svc["volumes"]
        assert "./scenarios:/app/scenarios:ro" in svc["volumes"]
        assert svc["init"] is True
    # The driver only submits the job: no key, no mounts.
    driver = service("loadgen-ray")
    assert "environment" not in driver and "volumes" not in driver


def test_ray_driver_waits_for_both_workers_and_the_target() -> None:
    driver = service("loadgen-ray")
    assert driver["depends_on"] == {
        name: {"condition": "service_healthy"} for name in ("sim", "ray-head", *RAY_WORKERS)
    }
    command = driver["command"]
    # Submitted to the head's Jobs API, so the driver runs on a Ray node (see the compose file).
    assert command[:3] == ["ray", "job", "submit"]
    assert flag_value(command, "--address") == "http://ray-head:8265"
    entrypoint = after_word(command, "--")
    assert entrypoint[0] == "loadgen"
    args = assert_run_on_ray(entrypoint[1:])
    assert args.scenario == "scenarios/caption-30.toml"
    assert args.url == ["http://sim:8000"]


def test_ray_driver_scenario_follows_its_variable() -> None:
    command = service("loadgen-ray", {"LOADGEN_SCENARIO": "smoke.toml"})["command"]
    args = assert_run_on_ray(after_word(command, "loadgen"))
    assert args.scenario == "scenarios/smoke.toml"


# ---------------------------------------------------------------- KubeRay


def kuberay_documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(KUBERAY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert isinstance(doc, dict), path
            yield path, doc


def one(kind: str) -> dict[str, Any]:
    (doc,) = [d for _, d in kuberay_documents() if d["kind"] == kind]
    return doc


def cluster_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind, Ray cluster spec) of the RayJob's cluster and of the RayCluster."""
    yield "RayJob", one("RayJob")["spec"]["rayClusterSpec"]
    yield "RayCluster", one("RayCluster")["spec"]


def ray_containers(cluster: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """("head" or the worker group's name, its Ray container): KubeRay's is the first."""
    yield "head", cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    for group in cluster["workerGroupSpecs"]:
        yield group["groupName"], group["template"]["spec"]["containers"][0]


def test_kuberay_files_hold_a_rayjob_a_raycluster_and_the_results_claim() -> None:
    kinds = sorted((p.name, d["kind"], d["apiVersion"]) for p, d in kuberay_documents())
    assert kinds == [
        ("raycluster.yaml", "RayCluster", "ray.io/v1"),
        ("rayjob.yaml", "RayJob", "ray.io/v1"),
        ("results-pvc.yaml", "PersistentVolumeClaim", "v1"),
    ]
    # One cluster, described twice: a run's own (RayJob) or a long-lived one (RayCluster).
    assert one("RayCluster")["spec"] == one("RayJob")["spec"]["rayClusterSpec"]


def test_rayjob_deletes_its_cluster_after_the_run() -> None:
    spec = one("RayJob")["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] > 0
    assert spec["activeDeadlineSeconds"] > 0


def test_rayjob_entrypoint_is_a_loadgen_run_on_the_cluster() -> None:
    words = shlex.split(one("RayJob")["spec"]["entrypoint"])
    assert words[0] == "loadgen"
    args = assert_run_on_ray(words[1:])
    assert args.scenario == "scenarios/caption-30.toml"
    assert args.url == ["http://vllm.staging.svc:8000"]


@pytest.mark.parametrize("kind", ["RayJob", "RayCluster"])
def test_head_reserves_no_cpu_and_keeps_the_results(kind: str) -> None:
    cluster = dict(cluster_specs())[kind]
    assert cluster["rayVersion"] == ray_pin()
    # Ray's token authentication: pickled objects travel between the nodes (docs, Security).
    assert cluster["authOptions"] == {"mode": "token"}
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # the shards land on the workers
    container = head["template"]["spec"]["containers"][0]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in head["template"]["spec"]["volumes"]}
    claim = volumes[mounts["/results"]]["persistentVolumeClaim"]["claimName"]
    assert claim == one("PersistentVolumeClaim")["metadata"]["name"]
    # The loadgen user (uid 1000 in the image) writes to the volume.
    security = head["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and security["fsGroup"] == security["runAsUser"]


@pytest.mark.parametrize("kind", ["RayJob", "RayCluster"])
def test_workers_two_of_one_cpu_each(kind: str) -> None:
    (group,) = dict(cluster_specs())[kind]["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 2
    assert group["rayStartParams"]["num-cpus"] == "1"
    resources = group["template"]["spec"]["containers"][0]["resources"]
    assert str(resources["requests"]["cpu"]) == str(resources["limits"]["cpu"]) == "1"
    assert "address" not in group["rayStartParams"], "KubeRay points workers at the head"


def test_kuberay_images_are_the_dockerfile_ray_target() -> None:
    images = {c["image"] for _, spec in cluster_specs() for _, c in ray_containers(spec)}
    assert len(images) == 1, "head and workers run one image (KubeRay's submitter takes the head's)"
    (image,) = images
    repository, _, tag = image.rpartition(":")
    assert repository.rsplit("/", 1)[-1] == RAY_TARGET
    assert RAY_TARGET in dockerfile_stages()
    assert tag and tag != "latest"
    assert repository.startswith("registry.example.com/"), "a placeholder, named as one"
    for path in KUBERAY.glob("ray*.yaml"):
        assert "registry.example.com/loadgen/loadgen-ray" in path.read_text().split("apiVersion")[0]


def test_kuberay_api_key_comes_from_a_secret_on_every_node() -> None:
    for kind, spec in cluster_specs():
        for name, container in ray_containers(spec):
            env = {e["name"]: e for e in container["env"]}
            assert SECRET_ENV in env, f"{kind} {name}: each shard reads the key on its own node"
            assert "value" not in env[SECRET_ENV]
            ref = env[SECRET_ENV]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "loadgen-api-key", "key": SECRET_ENV}


def test_no_key_is_written_into_a_deployment_file() -> None:
    files = [*KUBERAY.glob("*.yaml"), ROOT / "docker-compose.yml", ROOT / "Dockerfile"]
    for path in files:
        text = path.read_text()
        assert not re.search(r"\bsk-[A-Za-z0-9]{8,}", text), path
        assert not re.search(r"(?im)^\s*(-\s*)?OPENAI_API_KEY\s*[=:]\s*\S", text), path
    assert "Secret" not in {d["kind"] for _, d in kuberay_documents()}, "made by hand, keyed"


# ---------------------------------------------------------------- every loadgen command line


def documented_command_lines() -> Iterator[tuple[Path, list[str]]]:
    """The `loadgen run ...` command lines in the manifests' comments and in the "Deployment"
    section of docs/distributed.md: each a line of its own or the command of `ray job submit
    ... --`, backslash continuations joined."""
    docs = (ROOT / "docs" / "distributed.md").read_text()
    section = re.search(r"^## Deployment\n(.*?)(?=^## |\Z)", docs, re.M | re.S)
    assert section, "docs/distributed.md has a section 'Deployment'"
    texts = {path: path.read_text() for path in KUBERAY.glob("*.yaml")}
    texts[ROOT / "docs" / "distributed.md"] = section.group(1)
    for path, text in texts.items():
        joined = re.sub(r"\\\n[\s#]*", " ", text)
        for match in re.finditer(r"(?:^[#\s$]*|--\s+)(loadgen run [^`#\n]*)", joined, re.M):
            yield path, shlex.split(match.group(1))[1:]


def test_every_loadgen_command_line_parses() -> None:
    """Each loadgen command in Compose, KubeRay and their docs, parsed as loadgen parses it."""
    lines: list[list[str]] = []
    for name, svc in compose()["services"].items():
        command = svc.get("command") or []
        if svc.get("image") == "loadgen:local":  # entrypoint `loadgen`: the command is its words
            lines.append(command)
        elif "loadgen" in command:
            lines.append(after_word(command, "loadgen"))
        elif svc.get("build", {}).get("target") == RAY_TARGET:
            assert command[0] == "ray", f"{name}: a Ray node or a job submission"
    lines.append(shlex.split(one("RayJob")["spec"]["entrypoint"])[1:])
    assert len(lines) == 6
    documented = list(documented_command_lines())
    assert {p.name for p, _ in documented} >= {"raycluster.yaml", "distributed.md"}
    for words in [*lines, *(w for _, w in documented)]:
        args = parse_loadgen(words)
        if args.command == "run":
            assert (ROOT / args.scenario).is_file(), args.scenario
    for _, words in documented:
        assert_run_on_ray(words)
