# syntax=docker/dockerfile:1
# iam-key-exporter container image.
#
#   docker build -t iam-key-exporter .
#   docker run --rm --read-only --tmpfs /tmp -v $PWD/config:/config:ro \
#     iam-key-exporter check-config --config /config/exporter.yaml
#   docker run --rm -p 9877:9877 --read-only --tmpfs /tmp -e AWS_REGION \
#     -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY -e AWS_SESSION_TOKEN iam-key-exporter
# (The demo command needs the demo extra, moto, which the image leaves out.)
#
# Stage 1 builds the wheel; stage 2 installs only that wheel (and its dependencies) into
# a slim Python runtime: no compiler, no build tools, no pip cache. The image runs as the
# numeric user 65534 (nobody) and writes nothing outside /tmp, so it works with a
# read-only root file system (Kubernetes readOnlyRootFilesystem plus an emptyDir on /tmp).

ARG PYTHON_IMAGE=python:3.12-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN python -m pip wheel --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="iam-key-exporter" \
      org.opencontainers.image.description="Prometheus exporter for AWS IAM access keys" \
      org.opencontainers.image.source="https://github.com/iam-key-exporter/iam-key-exporter" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/tmp
COPY --from=builder /wheels /wheels
# Byte-code is compiled at install time (pip's default), so nothing is written at run time.
RUN python -m pip install --no-cache-dir /wheels/*.whl \
    && rm -rf /wheels /root/.cache
WORKDIR /tmp
USER 65534:65534
EXPOSE 9877
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:9877/healthz', timeout=4); sys.exit(0)"]
ENTRYPOINT ["iam-key-exporter"]
