# slotswitch container image.
#   docker build -t slotswitch .
#   docker run --rm -p 8080:8080 -p 9901:9901 -e SLOTSWITCH_ADMIN_TOKEN=... \
#     -v "$PWD/my-config.yaml:/etc/slotswitch/config.yaml:ro" -v slotswitch-state:/var/lib/slotswitch \
#     slotswitch
# The config must listen on 0.0.0.0:8080 and admin.listen on 0.0.0.0:9901 to be reachable (the
# HEALTHCHECK asks 127.0.0.1:9901, or SLOTSWITCH_HEALTHCHECK_URL); a non-loopback admin.listen needs
# a token (admin.tokens or SLOTSWITCH_ADMIN_TOKEN), and TLS (admin.tls) or admin.allow_plaintext: true. The mounted config is read-only, so set
# `state: {file: /var/lib/slotswitch/state.json}` and `admin: {audit_log: /var/lib/slotswitch/audit.jsonl}`
# (the defaults, next to the config file, are not writable here and the start fails, naming the file).
# `workers: 0` means one per CPU of the host, not of the container's CPU limit: set `workers` to the
# limit. SIGTERM drains for up to drain_timeout (default 30s), longer than `docker stop`'s 10 s: use
# `docker stop -t 35` (compose: stop_grace_period; Kubernetes: terminationGracePeriodSeconds).
# Examples: deploy/compose/ (docker compose) and deploy/kubernetes/ (kustomize); docs/operating.md.

# The Debian release is pinned with the Python version, so that a base image update cannot move the
# runtime image to another Debian release underneath the apt packages.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# A C compiler for the data path's mypyc build (setup.py); it stays in this stage.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
WORKDIR /src
# Only what the wheel needs (setuptools reads README.md for the package's long description).
# The pinned, hashed runtime set (a layer that changes only with the lock); the build's tools (setuptools,
# mypy for mypyc) pinned in a venv of their own, at the versions CI tests with, so they stay out of the
# runtime image. A new release of any dependency cannot change what this image runs.
COPY requirements.lock requirements-build.lock ./
RUN /opt/venv/bin/pip install --require-hashes -r requirements.lock \
    && python -m venv /opt/build \
    && /opt/build/bin/pip install --require-hashes -r requirements-build.lock
COPY pyproject.toml setup.py README.md ./
COPY proxy ./proxy
COPY admin ./admin
# The wheel is built by the build venv without resolving anything, then installed without dependencies
# (they are all in place). uvloop and httptools come as wheels. The data path is compiled with mypyc,
# and the rest to bytecode, as the runtime image never writes any. The image fails to build if the data
# path did not compile (proxy/native.py).
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/wheels . \
    && /opt/venv/bin/pip install --no-deps /tmp/wheels/slotswitch-*.whl \
    && /opt/venv/bin/python -I -c "import proxy.native as n, sys; print(n.describe()); sys.exit(n.mode != 'compiled')"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="slotswitch" \
      org.opencontainers.image.description="A blue-green switching reverse proxy: drain on switch, percentage ramps, automatic rollback." \
      org.opencontainers.image.licenses="Apache-2.0"
# tini as PID 1: forwards SIGTERM/SIGHUP to slotswitch and reaps orphans (worker processes).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin slotswitch \
    && install -d -o slotswitch -g slotswitch -m 0700 /var/lib/slotswitch
COPY --from=builder /opt/venv /opt/venv
ENV PATH="/opt/venv/bin:$PATH" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    SLOTSWITCH_HEALTHCHECK_URL=http://127.0.0.1:9901/v1/health
USER 10001:10001
WORKDIR /var/lib/slotswitch
VOLUME ["/var/lib/slotswitch"]
EXPOSE 8080 9901
STOPSIGNAL SIGTERM
# GET /v1/health on the admin listener (no token needed); environment HTTP proxies are ignored.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.build_opener(u.ProxyHandler({})).open(os.environ['SLOTSWITCH_HEALTHCHECK_URL'], timeout=2)"]
ENTRYPOINT ["tini", "--", "slotswitch"]
CMD ["run", "--config", "/etc/slotswitch/config.yaml"]
