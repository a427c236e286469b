# slotswitch container image.
#   docker build -t slotswitch .
#   docker run --rm -p 8080:8080 -p 9901:9901 -e SLOTSWITCH_ADMIN_TOKEN=... \
#     -v "$PWD/my-config.yaml:/etc/slotswitch/config.yaml:ro" -v slotswitch-state:/var/lib/slotswitch slotswitch
# The config must listen on 0.0.0.0:8080 and admin.listen on 0.0.0.0:9901 to be reachable (and for the
# HEALTHCHECK); a non-loopback admin.listen needs a token (admin.tokens or SLOTSWITCH_ADMIN_TOKEN). The
# routing state and the audit log must be writable and outlive the container: set
# `state: {file: /var/lib/slotswitch/state.json}` and `admin: {audit_log: /var/lib/slotswitch/audit.jsonl}`
# (the defaults, next to the config file, are not writable here). SIGTERM drains for up to
# drain_timeout (default 30s): give `docker stop` a longer timeout, e.g. `docker stop -t 35`.

FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY admin ./admin
RUN /opt/venv/bin/pip install .

FROM python:3.11-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin slotswitch \
    && install -d -o slotswitch -g slotswitch -m 0700 /var/lib/slotswitch
COPY --from=builder /opt/venv /opt/venv
ENV PATH="/opt/venv/bin:$PATH" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER slotswitch
VOLUME /var/lib/slotswitch
EXPOSE 8080 9901
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9901/v1/health', timeout=2)"]
ENTRYPOINT ["tini", "--", "slotswitch"]
CMD ["run", "--config", "/etc/slotswitch/config.yaml"]
