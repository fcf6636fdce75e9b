# syntax=docker/dockerfile:1
# The registry as a small, non-root image. Build: docker build -t droq-registry .
# Node files live in /srv/assets/nodes (mount your own read-only over it); the database,
# a derived index rebuilt from the files when missing, lives on the /data volume.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY config/ config/
COPY daemon/ daemon/
RUN pip install .

FROM python:${PYTHON_VERSION}-slim
RUN groupadd --system --gid 10001 registry \
 && useradd --system --uid 10001 --gid registry --no-create-home --home-dir /nonexistent registry \
 && mkdir -p /data \
 && chown registry:registry /data
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
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 CMD ["droq-registry", "probe", "/health"]
CMD ["droq-registry", "serve"]
