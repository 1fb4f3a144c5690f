# syntax=docker/dockerfile:1
# The data service: `python -m ownchat_data`, gRPC on 50051, Prometheus metrics on 9451.
# Built from the repository root:
#   docker build -f deploy/images/data.Dockerfile -t ownchat/data:0.1.0 .
# No torch: the data service needs only transformers' tokenizers (the build fails
# if any dependency brings torch in).
FROM python:3.11-slim-bookworm

# The cluster profile: listens on 0.0.0.0, no reflection, and refuses to start
# without mutual TLS (OWNCHAT_DATA_TLS_* for its port, OWNCHAT_TLS_* for its calls;
# ownchat certs create makes them). OWNCHAT_DATA_PROFILE=local runs it without.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/ownchat/bin:$PATH \
    HOME=/var/lib/ownchat \
    HF_HUB_OFFLINE=1 \
    OWNCHAT_HOME=/var/lib/ownchat \
    OWNCHAT_DATA_PROFILE=cluster

# A non-root user owning the state directory and the mount points under it, so
# that volumes mounted there start out writable by it.
RUN groupadd --system --gid 10001 ownchat \
    && useradd --system --uid 10001 --gid ownchat --home-dir /var/lib/ownchat \
        --shell /usr/sbin/nologin ownchat \
    && install -d -o ownchat -g ownchat /var/lib/ownchat /var/lib/ownchat/artifacts \
        /var/lib/ownchat/data \
    && python -m venv /opt/ownchat \
    && pip install --upgrade "pip>=24"

COPY requirements/constraints.txt /tmp/ownchat/constraints.txt
COPY sdk/python /tmp/ownchat/sdk/python
COPY services/data /tmp/ownchat/services/data
RUN pip install -c /tmp/ownchat/constraints.txt /tmp/ownchat/sdk/python /tmp/ownchat/services/data \
    && if pip show torch >/dev/null 2>&1; then echo "torch must not be in the data image" >&2; exit 1; fi \
    && rm -rf /tmp/ownchat

USER 10001:10001
WORKDIR /var/lib/ownchat
EXPOSE 50051 9451
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD python -m ownchat.healthcheck "127.0.0.1:${OWNCHAT_DATA_PORT:-50051}" --server-name data --timeout 5
CMD ["python", "-m", "ownchat_data"]
