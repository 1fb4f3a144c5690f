# syntax=docker/dockerfile:1
# The gateway: `python -m ownchat_gateway` (BentoML), HTTP on 3000 with the
# OpenAI-compatible API, /readyz, /livez and /metrics.
# Built from the repository root:
#   docker build -f deploy/images/gateway.Dockerfile -t ownchat/gateway:0.1.0 .
# No torch (the build fails if any dependency brings it in).
FROM python:3.11-slim-bookworm

# The cluster profile: listens on 0.0.0.0 and refuses to start without the
# client certificate of its calls to the gRPC services (OWNCHAT_TLS_*).
# OWNCHAT_GATEWAY_PROFILE=local runs it without.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/ownchat/bin:$PATH \
    HOME=/var/lib/ownchat \
    OWNCHAT_HOME=/var/lib/ownchat \
    OWNCHAT_GATEWAY_PROFILE=cluster

RUN groupadd --system --gid 10001 ownchat \
    && useradd --system --uid 10001 --gid ownchat --home-dir /var/lib/ownchat \
        --shell /usr/sbin/nologin ownchat \
    && install -d -o ownchat -g ownchat /var/lib/ownchat /var/lib/ownchat/artifacts \
        /var/lib/ownchat/gateway \
    && python -m venv /opt/ownchat \
    && pip install --upgrade "pip>=24"

COPY requirements/constraints.txt /tmp/ownchat/constraints.txt
COPY sdk/python /tmp/ownchat/sdk/python
COPY services/gateway /tmp/ownchat/services/gateway
RUN pip install -c /tmp/ownchat/constraints.txt /tmp/ownchat/sdk/python \
        /tmp/ownchat/services/gateway \
    && if pip show torch >/dev/null 2>&1; then echo "torch must not be in the gateway image" >&2; exit 1; fi \
    && rm -rf /tmp/ownchat

USER 10001:10001
WORKDIR /var/lib/ownchat
EXPOSE 3000
# BentoML's readiness endpoint: 200 once the service's workers are up.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('OWNCHAT_GATEWAY_PORT', '3000'), timeout=5)"
CMD ["python", "-m", "ownchat_gateway"]
