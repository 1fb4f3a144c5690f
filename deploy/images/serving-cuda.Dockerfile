# syntax=docker/dockerfile:1
# The serving service on NVIDIA GPUs: `python -m ownchat_serving`, gRPC on 50054,
# Prometheus metrics on 9454 (GPU memory and utilisation through NVML); engines:
# vLLM (CUDA), ONNX Runtime, Transformers.
# Built from the repository root:
#   docker build -f deploy/images/serving-cuda.Dockerfile -t ownchat/serving-cuda:0.1.0 .
# vllm 0.32 pins torch 2.13.0, whose PyPI build is for CUDA 13: the host needs an
# NVIDIA driver for CUDA 13 and the NVIDIA container toolkit (or, on Kubernetes,
# the NVIDIA device plugin).
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

ARG VLLM_VERSION=0.32.0

# The cluster profile: listens on 0.0.0.0, no reflection, and refuses to start
# without mutual TLS (OWNCHAT_SERVING_TLS_* for its port, OWNCHAT_TLS_* for its
# calls; ownchat certs create makes them). OWNCHAT_SERVING_PROFILE=local runs it without.
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/ownchat/bin:$PATH \
    HOME=/var/lib/ownchat \
    HF_HUB_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1 \
    OWNCHAT_HOME=/var/lib/ownchat \
    OWNCHAT_SERVING_PROFILE=cluster

# Ubuntu 24.04's Python (3.12) in a virtual environment. tini reaps the engines'
# processes.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv libnuma1 tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 ownchat \
    && useradd --system --uid 10001 --gid ownchat --home-dir /var/lib/ownchat \
        --shell /usr/sbin/nologin ownchat \
    && install -d -o ownchat -g ownchat /var/lib/ownchat /var/lib/ownchat/artifacts \
        /var/lib/ownchat/serving \
    && python3 -m venv /opt/ownchat \
    && pip install --upgrade "pip>=24"

COPY requirements/constraints.txt /tmp/ownchat/constraints.txt
COPY sdk/python /tmp/ownchat/sdk/python
COPY services/serving /tmp/ownchat/services/serving
# The constraints pin the development machine's CPU build of torch: vllm brings
# its own (CUDA) torch instead.
RUN grep -v -E '^(torch|triton)==' /tmp/ownchat/constraints.txt > /tmp/ownchat/image-constraints.txt \
    && pip install -c /tmp/ownchat/image-constraints.txt "vllm==${VLLM_VERSION}" \
        /tmp/ownchat/sdk/python "/tmp/ownchat/services/serving[cuda]" \
    && rm -rf /tmp/ownchat

USER 10001:10001
WORKDIR /var/lib/ownchat
EXPOSE 50054 9454
# Health stays NOT_SERVING until the deployments live at the last stop are loaded again.
HEALTHCHECK --interval=30s --timeout=10s --start-period=600s --retries=3 \
    CMD python -m ownchat.healthcheck "127.0.0.1:${OWNCHAT_SERVING_PORT:-50054}" --server-name serving --timeout 5
ENTRYPOINT ["tini", "--"]
CMD ["python", "-m", "ownchat_serving"]
