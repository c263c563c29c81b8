# syntax=docker/dockerfile:1
# One image for the Ray head, the Ray workers and Locust (target `runtime`, the default), plus a small
# `mlflow-server` target for the tracking server (it needs a PostgreSQL driver the product does not).

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS python-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A fixed uid so that named volumes and Kubernetes securityContext agree on file ownership.
RUN groupadd --gid 1000 app \
    && useradd --uid 1000 --gid app --create-home --shell /usr/sbin/nologin app


FROM python-base AS mlflow-server
# Same MLflow range as pyproject.toml, so client and server speak the same REST API.
RUN pip install "mlflow>=3.17,<3.19" "psycopg2-binary>=2.9,<2.10"
RUN mkdir -p /mlartifacts && chown app:app /mlartifacts
USER 1000:1000
EXPOSE 5000
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000", "--artifacts-destination", "/mlartifacts"]


FROM python-base AS runtime
WORKDIR /app
# Dependencies first, in their own layer: a code change then rebuilds in seconds, not minutes.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY serve_app ./serve_app
COPY train ./train
COPY tune ./tune
COPY loadtest ./loadtest
# A regular (not editable) install without the dev extras; the sources stay in /app because
# serve_config.yaml, configs/ and the locustfile are referenced by relative path from here.
RUN pip install --no-deps . && rm -rf build ./*.egg-info
COPY serve_config.yaml ./
COPY configs ./configs
# Mount points owned by the app user, so fresh named volumes inherit that ownership.
RUN mkdir -p /data /tmp/ray && chown app:app /data /tmp/ray
USER 1000:1000
ENV FRAUD_DATA_DIR=/data
# 8000 API, 8265 Ray dashboard, 6390 Ray GCS (not Redis's 6379), 8080 Ray metrics export.
EXPOSE 8000 8265 6390 8080
CMD ["ray", "start", "--head", "--port=6390", "--dashboard-host=0.0.0.0", "--metrics-export-port=8080", "--disable-usage-stats", "--block"]
