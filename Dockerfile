# The registry as a small, non-root image.
#   With a registry:  docker build -t droq-registry .      (or: podman build --format docker ...)
#   Offline:          deploy/build-image.sh                  (same file, a base made from Debian packages)
# Node files live in /srv/assets/nodes (mount your own read-only over it); the database,
# a derived index rebuilt from the files when missing, lives on the /data volume.
# PYTHON_IMAGE is any Debian-based image with python3.11, python -m venv, useradd.
# No "# syntax=" line: BuildKit would fetch that frontend from a registry, and nothing
# here needs more than the builder's own.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY config/ config/
COPY daemon/ daemon/
# The service needs neither pip nor setuptools at run time: they leave with the build stage.
RUN pip install . \
 && pip uninstall --yes pip setuptools

FROM ${PYTHON_IMAGE}
ARG PYTHON_IMAGE
# Which base this image was built on (the tests compare the image with it).
LABEL org.opencontainers.image.title="droq-registry" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
# /data belongs to the service user and to group 0, group-writable: the image also runs
# under an arbitrary uid with group 0 (OpenShift), which must be able to write the database.
RUN groupadd --system --gid 10001 registry \
 && useradd --system --no-log-init --uid 10001 --gid registry --no-create-home --home-dir /nonexistent registry \
 && mkdir /data \
 && chown 10001:0 /data \
 && chmod 0775 /data
COPY --from=build /opt/venv /opt/venv
COPY assets/nodes/ /srv/assets/nodes/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8002 \
    REGISTRY_ASSETS_DIR=/srv/assets/nodes \
    REGISTRY_DB_PATH=/data/registry.db
USER 10001:10001
WORKDIR /srv
VOLUME ["/data"]
EXPOSE 8002
# exec form: the server is PID 1 and receives SIGTERM itself (stops cleanly, exit code 0).
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 CMD ["droq-registry", "probe", "/health"]
CMD ["droq-registry", "serve"]
