# syntax=docker/dockerfile:1
#
# GridSentry service image.
#
#   docker build -t gridsentry .
#   docker run --rm -p 127.0.0.1:8080:8080 \
#       -v "$PWD/deploy/gridsentry.compose.yaml:/etc/gridsentry/gridsentry.yaml:ro" \
#       -e GRIDSENTRY_MQTT_PASSWORD=... gridsentry
#
# The config file is not baked in: mount one at /etc/gridsentry/gridsentry.yaml. In a container
# it must set `http.host: 0.0.0.0`, or the published port reaches nothing. Secrets come in via the
# environment (`password: ${GRIDSENTRY_MQTT_PASSWORD}`), never via the image.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build stage: install the package and its wheels into a virtual environment -------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# Same path as the systemd unit (deploy/gridsentry.service), so both installs look alike.
RUN python -m venv /opt/gridsentry/.venv
WORKDIR /src
COPY . .
RUN /opt/gridsentry/.venv/bin/pip install --no-cache-dir . \
 && /opt/gridsentry/.venv/bin/gridsentry --help >/dev/null

# --- runtime stage: the virtual environment only, no sources, no build leftovers -------------
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="GridSentry" \
      org.opencontainers.image.description="Streaming telemetry monitor for EV-charging, PV and box-transformer fleets" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PATH=/opt/gridsentry/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# A fixed uid/gid, so the owner of the data volume is the same in every build and on the host.
RUN groupadd --system --gid 10001 gridsentry \
 && useradd --system --uid 10001 --gid gridsentry --home-dir /var/lib/gridsentry \
        --no-create-home --shell /usr/sbin/nologin gridsentry \
 && mkdir -p /var/lib/gridsentry /etc/gridsentry \
 && chown gridsentry:gridsentry /var/lib/gridsentry \
 && chmod 0750 /var/lib/gridsentry

COPY --from=build /opt/gridsentry/.venv /opt/gridsentry/.venv

# The DuckDB file, the Parquet archive and backups. Created and chowned above, before VOLUME,
# so a fresh named volume starts out owned by the gridsentry user.
VOLUME ["/var/lib/gridsentry"]
WORKDIR /var/lib/gridsentry
USER gridsentry:gridsentry

EXPOSE 8080

# slim has no curl; the standard library is enough. A non-2xx answer raises, so the exit code is 1.
# Set GRIDSENTRY_HEALTH_URL if the config moves the HTTP port.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ.get('GRIDSENTRY_HEALTH_URL', 'http://127.0.0.1:8080/healthz'), timeout=4)"]

# Exec form: gridsentry is PID 1 and receives SIGTERM itself. Run with `--init` (compose sets
# `init: true`) so a signal is never lost to PID 1's special signal handling.
STOPSIGNAL SIGTERM
CMD ["gridsentry", "run", "--config", "/etc/gridsentry/gridsentry.yaml"]
