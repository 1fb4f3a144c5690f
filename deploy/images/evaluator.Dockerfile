# syntax=docker/dockerfile:1
# The evaluator: `python -m ownchat_evaluator`, gRPC on 50053, Prometheus metrics on 9453.
# Built from the repository root:
#   docker build -f deploy/images/evaluator.Dockerfile -t ownchat/evaluator:0.1.0 .
# torch from PyPI (CUDA inside; runs on the CPU where there is no GPU):
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu gives a CPU-only image.
FROM python:3.11-slim-bookworm

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple

# The cluster profile: listens on 0.0.0.0, no reflection, and refuses to start
# without mutual TLS (OWNCHAT_EVALUATOR_TLS_* for its port, OWNCHAT_TLS_* for its calls;
# ownchat certs create makes them). OWNCHAT_EVALUATOR_PROFILE=local runs it without.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/ownchat/bin:$PATH \
    HOME=/var/lib/ownchat \
    HF_HUB_OFFLINE=1 \
    MPLBACKEND=Agg \
    OWNCHAT_HOME=/var/lib/ownchat \
    OWNCHAT_EVALUATOR_PROFILE=cluster

RUN groupadd --system --gid 10001 ownchat \
    && useradd --system --uid 10001 --gid ownchat --home-dir /var/lib/ownchat \
        --shell /usr/sbin/nologin ownchat \
    && install -d -o ownchat -g ownchat /var/lib/ownchat /var/lib/ownchat/artifacts \
        /var/lib/ownchat/evaluator \
    && python -m venv /opt/ownchat \
    && pip install --upgrade "pip>=24"

RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

COPY requirements/constraints.txt /tmp/ownchat/constraints.txt
COPY sdk/python /tmp/ownchat/sdk/python
COPY services/evaluator /tmp/ownchat/services/evaluator
# The constraints pin the development machine's CPU build of torch: the torch
# installed above stands instead.
RUN grep -v -E '^(torch|triton)==' /tmp/ownchat/constraints.txt > /tmp/ownchat/image-constraints.txt \
    && pip install -c /tmp/ownchat/image-constraints.txt /tmp/ownchat/sdk/python \
        /tmp/ownchat/services/evaluator \
    && rm -rf /tmp/ownchat

USER 10001:10001
WORKDIR /var/lib/ownchat
EXPOSE 50053 9453
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD python -m ownchat.healthcheck "127.0.0.1:${OWNCHAT_EVALUATOR_PORT:-50053}" --server-name evaluator --timeout 5
CMD ["python", "-m", "ownchat_evaluator"]
