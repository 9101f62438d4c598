"""docker-compose.yml, Dockerfile and .dockerignore, checked without a Docker engine: the compose
file's structure after variable interpolation, the Dockerfile's instructions against the
repository, and (when a compose client is installed) the compose client's own validation."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"

GPU_MODEL = "nvidia/Qwen2.5-VL-7B-Instruct-NVFP4"
# Each tunable vLLM flag, the variable that overrides it, and its default.
VLLM_FLAG_VARS = {
    "--max-model-len": ("VLLM_MAX_MODEL_LEN", "8192"),
    "--max-num-seqs": ("VLLM_MAX_NUM_SEQS", "64"),
    "--limit-mm-per-prompt.image": ("VLLM_MAX_IMAGES_PER_PROMPT", "1"),
    "--mm-processor-cache-gb": ("VLLM_MM_PROCESSOR_CACHE_GB", "4"),
    "--gpu-memory-utilization": ("VLLM_GPU_MEMORY_UTILIZATION", "0.90"),
}
# Boolean flags: the variable holds the flag itself, on or off.
VLLM_SWITCH_VARS = {
    "VLLM_PREFIX_CACHING": ("--enable-prefix-caching", "--no-enable-prefix-caching"),
    "VLLM_PROMPT_TOKENS_DETAILS": (
        "--enable-prompt-tokens-details",
        "--no-enable-prompt-tokens-details",
    ),
}

_VAR = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's variable syntax as this file uses it: ${X}, ${X:-default}, ${X-default}, $$."""

    def replace(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, default = m.group("name"), m.group("op"), m.group("default") or ""
        value = env.get(name)
        if op == ":-":
            return value if value else default
        if op == "-":
            return value if value is not None else default
        return value or ""

    return _VAR.sub(replace, text)


def resolve(value: Any, env: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return interpolate(value, env)
    if isinstance(value, list):
        return [resolve(v, env) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v, env) for k, v in value.items()}
    return value


def compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(raw, dict)
    resolved: dict[str, Any] = resolve(raw, env or {})
    return resolved


def service(name: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    svc: dict[str, Any] = compose(env)["services"][name]
    return svc


def flag_value(command: list[str], flag: str) -> str:
    assert command.count(flag) == 1, f"{flag} should appear once in {command}"
    return command[command.index(flag) + 1]


def seconds(duration: str) -> float:
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration):
        total += float(number) * units[unit]
    return total


# ---------------------------------------------------------------- compose: structure


def test_services_and_profiles() -> None:
    services = compose()["services"]
    profiles = {name: tuple(svc.get("profiles", ())) for name, svc in services.items()}
    assert profiles == {
        "vllm": (),  # the GPU stack is what a plain `docker compose up` starts
        "loadgen": (),
        "sim": ("sim", "ray"),
        "loadgen-sim": ("sim",),
        "vllm-cpu": ("cpu",),
        "loadgen-cpu": ("cpu",),
        # a Ray cluster of three nodes and its driver (tests/test_deploy.py)
        "ray-head": ("ray",),
        "ray-worker-1": ("ray",),
        "ray-worker-2": ("ray",),
        "loadgen-ray": ("ray",),
    }


def test_vllm_uses_the_pinned_official_image_of_the_tested_release() -> None:
    image = service("vllm")["image"]
    repo, _, tag = image.partition(":")
    assert repo == "vllm/vllm-openai"
    assert re.fullmatch(r"v\d+\.\d+\.\d+", tag), f"pin a release tag, not {tag!r}"
    # The same release as the CPU build the integration suite runs against.
    install = (ROOT / "scripts" / "vllm_cpu_install.sh").read_text()
    cpu_version = re.search(r"^VLLM_CPU_VERSION=(\S+)$", install, re.MULTILINE)
    assert cpu_version is not None
    assert tag == "v" + cpu_version.group(1)
    assert service("vllm", {"VLLM_IMAGE": "vllm/vllm-openai:v0.32.0-cu129"})["image"].endswith(
        "-cu129"
    )


def test_vllm_gpu_reservation_ipc_cache_and_token() -> None:
    vllm = service("vllm")
    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert vllm["ipc"] == "host"
    targets = {v.split(":")[1]: v.split(":")[0] for v in vllm["volumes"]}
    assert targets["/root/.cache/huggingface"] == "hf-cache"
    assert "hf-cache" in compose()["volumes"]
    bound = service("vllm", {"HF_CACHE": "/data/hf"})["volumes"]
    assert "/data/hf:/root/.cache/huggingface" in bound
    # Passed through from the environment, never written into the file.
    assert "HF_TOKEN" in vllm["environment"]
    assert vllm["ports"] == ["127.0.0.1:8000:8000"]


def test_vllm_command_is_arguments_only_with_model_default() -> None:
    command = service("vllm")["command"]
    assert all(isinstance(arg, str) for arg in command)
    assert command[0].startswith("--"), "the image's entrypoint is the server"
    assert flag_value(command, "--model") == GPU_MODEL
    assert flag_value(command, "--host") == "0.0.0.0"
    assert flag_value(command, "--port") == "8000"
    assert flag_value(command, "--limit-mm-per-prompt.video") == "0"
    other = service("vllm", {"VLLM_MODEL": "RedHatAI/Qwen3-VL-32B-Instruct-NVFP4"})["command"]
    assert flag_value(other, "--model") == "RedHatAI/Qwen3-VL-32B-Instruct-NVFP4"


def test_vllm_flag_defaults() -> None:
    command = service("vllm")["command"]
    for flag, (_, default) in VLLM_FLAG_VARS.items():
        assert flag_value(command, flag) == default
    for on, _ in VLLM_SWITCH_VARS.values():
        assert on in command


@settings(max_examples=40, derandomize=True)
@given(
    overrides=st.dictionaries(
        st.sampled_from(sorted(VLLM_FLAG_VARS)),
        st.integers(min_value=1, max_value=1 << 20).map(str),
    ),
    switches=st.dictionaries(st.sampled_from(sorted(VLLM_SWITCH_VARS)), st.booleans()),
)
def test_every_vllm_flag_follows_its_variable(
    overrides: dict[str, str], switches: dict[str, bool]
) -> None:
    env = {VLLM_FLAG_VARS[flag][0]: value for flag, value in overrides.items()}
    env |= {var: VLLM_SWITCH_VARS[var][0 if on else 1] for var, on in switches.items()}
    command = service("vllm", env)["command"]
    for flag, (_, default) in VLLM_FLAG_VARS.items():
        assert flag_value(command, flag) == overrides.get(flag, default)
    for var, (on, off) in VLLM_SWITCH_VARS.items():
        expected = on if switches.get(var, True) else off
        assert expected in command
        assert (off if expected == on else on) not in command


def test_vllm_healthcheck_waits_for_download_and_graph_capture() -> None:
    health = service("vllm")["healthcheck"]
    assert health["test"][0] == "CMD"
    assert any("/health" in part for part in health["test"])
    assert ":8000/health" in " ".join(health["test"])
    assert seconds(health["start_period"]) >= 20 * 60
    assert seconds(health["interval"]) <= 60


def test_loadgen_runs_the_scenario_once_vllm_is_healthy() -> None:
    loadgen = service("loadgen")
    assert loadgen["build"] == {"context": ".", "target": "loadgen"}
    assert loadgen["depends_on"] == {"vllm": {"condition": "service_healthy"}}
    assert loadgen["command"] == [
        "run",
        "scenarios/caption-30.toml",
        "--url",
        "http://vllm:8000",
        "--output",
        "/results",
    ]
    assert "./results:/results" in loadgen["volumes"]
    assert (ROOT / "scenarios" / "caption-30.toml").is_file()
    smoke = service("loadgen", {"LOADGEN_SCENARIO": "smoke.toml"})["command"]
    assert smoke[1] == "scenarios/smoke.toml"


@pytest.mark.parametrize(
    ("runner", "server"), [("loadgen", "vllm"), ("loadgen-sim", "sim"), ("loadgen-cpu", "vllm-cpu")]
)
def test_each_runner_targets_the_server_of_its_profile(runner: str, server: str) -> None:
    services = compose()["services"]
    run, srv = services[runner], services[server]
    # The server starts in every profile of its runner (the simulator serves two).
    assert set(run.get("profiles", ())) <= set(srv.get("profiles", ()))
    assert bool(run.get("profiles")) == bool(srv.get("profiles"))
    assert run["depends_on"] == {server: {"condition": "service_healthy"}}
    assert flag_value(run["command"], "--url") == f"http://{server}:8000"
    assert flag_value(run["command"], "--output") == "/results"
    assert "./results:/results" in run["volumes"]
    assert "healthcheck" in srv and "start_period" in srv["healthcheck"]
    assert any("/health" in part for part in srv["healthcheck"]["test"])


def test_sim_serves_from_the_loadgen_image() -> None:
    sim = service("sim")
    assert sim["image"] == service("loadgen")["image"]
    assert sim["build"] == service("loadgen")["build"]
    command = sim["command"]
    assert command[0] == "sim"
    assert flag_value(command, "--host") == "0.0.0.0"
    assert flag_value(command, "--port") == "8000"


def test_cpu_server_builds_the_dockerfile_cpu_stage() -> None:
    cpu = service("vllm-cpu")
    assert cpu["build"]["target"] in dockerfile_stages()
    assert "deploy" not in cpu


def test_every_compose_variable_is_documented_in_env_example() -> None:
    names = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE.read_text()))
    names |= {
        v
        for svc in compose()["services"].values()
        for v in svc.get("environment", [])
        if isinstance(v, str) and "=" not in v
    }
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.M))
    assert names <= documented, f"undocumented: {sorted(names - documented)}"


# ---------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "dangling line continuation"
    return instructions


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for keyword, args in dockerfile_instructions():
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            current = [(keyword, args)]
            stages[name] = current
        else:
            current.append((keyword, args))
    return stages


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def ignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` (relative to the context) out of the build context:
    a pattern excludes a path when it matches the path or one of its parent folders; `**/`
    matches at any depth; the last matching pattern wins, `!` re-includes."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for raw in dockerignore_patterns():
        negate = raw.startswith("!")
        pattern = raw.lstrip("!").strip("/")
        if pattern.startswith("**/"):
            tail = pattern[3:]
            hit = any(fnmatch.fnmatch(p.split("/")[-1], tail) for p in prefixes)
        else:
            hit = any(fnmatch.fnmatch(p, pattern) for p in prefixes)
        if hit:
            result = not negate
    return result


def test_dockerfile_stages_and_bases() -> None:
    stages = dockerfile_stages()
    assert list(stages)[-1] == "loadgen", "the default build target is the last stage"
    assert {"vllm-cpu", "loadgen-build", "loadgen"} <= set(stages)
    for name in ("vllm-cpu", "loadgen-build", "loadgen"):
        base = stages[name][0][1].split()[0]
        assert base == "python:3.11-slim"


def test_loadgen_image_entrypoint_is_the_console_script_run_as_non_root() -> None:
    stage = dict(
        (k, a) for k, a in dockerfile_stages()["loadgen"] if k in {"ENTRYPOINT", "USER", "WORKDIR"}
    )
    entrypoint = exec_form(stage["ENTRYPOINT"])
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert entrypoint == ["loadgen"]
    assert pyproject["project"]["scripts"]["loadgen"] == "loadgen.cli:main"
    assert stage["USER"] not in {"root", "0", "0:0"}
    # Compose's loadgen commands name scenarios relative to the working directory.
    assert stage["WORKDIR"] == "/app"
    runner = service("loadgen")
    assert any(v.endswith(":/app/scenarios:ro") for v in runner["volumes"])


def test_dockerfile_installs_the_package_with_pip() -> None:
    runs = [a for k, a in dockerfile_stages()["loadgen-build"] if k == "RUN"]
    assert any(re.search(r"pip wheel .*\.\[fast\]", r) for r in runs)
    runs = [a for k, a in dockerfile_stages()["loadgen"] if k == "RUN"]
    assert any("pip install" in r and "loadgen[fast]" in r for r in runs)


def test_dockerfile_copies_only_files_that_exist_and_are_in_the_context() -> None:
    copied = 0
    for keyword, args in dockerfile_instructions():
        if keyword != "COPY" or "--from=" in args:
            continue
        words = shlex.split(args)
        sources = [w for w in words[:-1] if not w.startswith("--")]
        for source in sources:
            matches = list(ROOT.glob(source))
            if any(ch in source for ch in "*?["):
                continue  # optional by design (README.md* may be absent)
            assert matches, f"COPY source {source!r} does not exist"
            assert not ignored(source), f"COPY source {source!r} is excluded by .dockerignore"
            copied += 1
    assert copied >= 4


def test_cpu_stage_runs_the_repository_scripts() -> None:
    stage = dockerfile_stages()["vllm-cpu"]
    entrypoint = exec_form(dict(stage)["ENTRYPOINT"])
    script = Path(entrypoint[1])
    assert (ROOT / "scripts" / script.name).is_file()
    assert entrypoint[2:4] == ["run", "--host"]
    assert any("vllm_cpu_install.sh" in a for k, a in stage if k == "RUN")


def test_dockerignore_keeps_local_state_out() -> None:
    for path in (".venv", ".venv/bin/python", "results", "results/run-1/summary.json", ".git"):
        assert ignored(path), path
    for path in ("pyproject.toml", "loadgen/cli.py", "scenarios/caption-30.toml"):
        assert not ignored(path), path


# ---------------------------------------------------------------- the compose client itself


def _compose_client() -> list[str] | None:
    """A compose client that validates files without an engine, or None."""
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run(
            [docker, "compose", "version"], capture_output=True, check=False, timeout=30
        ).returncode
        == 0
    ):
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if (
        legacy
        and subprocess.run(
            [legacy, "version"], capture_output=True, check=False, timeout=30
        ).returncode
        == 0
    ):
        return [legacy]
    return None


def test_compose_client_accepts_the_file(tmp_path: Path) -> None:
    client = _compose_client()
    if client is None:
        pytest.skip("no docker compose client installed (only an engine-less check would run)")
    text = COMPOSE.read_text()
    if client[0].endswith("docker-compose"):
        # The 1.x client predates the top-level `name`; everything else it validates.
        text = re.sub(r"^name: .*\n", "", text, flags=re.M)
    (tmp_path / "docker-compose.yml").write_text(text)
    argv = [
        *client,
        "--project-directory",
        str(tmp_path),
        "-f",
        str(tmp_path / "docker-compose.yml"),
    ]
    proc = subprocess.run(
        [*argv, "--profile", "sim", "--profile", "cpu", "--profile", "ray", "config", "--services"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert set(proc.stdout.split()) == set(compose()["services"])
