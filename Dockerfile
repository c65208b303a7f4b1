# syntax=docker/dockerfile:1
# One image for every meterwatch process: docker-compose.yml runs it as `db migrate`, `ingest`,
# `notify`, `api` and `simulate`. The build stage installs the project (not editable, no dev
# extras) into a virtualenv; the runtime stage copies only that virtualenv.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# .dockerignore keeps tests, docs, caches and local data out of the context.
COPY . .
RUN pip install . && pip check


FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="meterwatch" \
      org.opencontainers.image.description="Smart water-meter platform: MQTT ingest into PostgreSQL/TimescaleDB, detectors, alerts, API." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed uid, so volume ownership and securityContext-style policies can name it.
RUN groupadd --system --gid 10001 meterwatch \
    && useradd --system --uid 10001 --gid meterwatch --create-home --home-dir /home/meterwatch \
        --shell /usr/sbin/nologin meterwatch

COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# An empty working directory: Settings reads ./.env from here, and nothing should be found.
WORKDIR /app
USER meterwatch:meterwatch

# The API's port; ingest and migrate listen on nothing.
EXPOSE 8000
ENTRYPOINT ["meterwatch"]
CMD ["--help"]
