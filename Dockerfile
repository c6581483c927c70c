# syntax=docker/dockerfile:1
# The pipeline image (CPU): this project with the dependencies pinned in pyproject.toml, as the pods of
# `python -m pipeline.k8s` run it (its default --image). Build it at the repository root:
#   docker build -t maas-pipeline:latest .
# Dockerfile.gpu builds the same image for NVIDIA GPUs.
FROM python:3.11.13-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    TF_USE_LEGACY_KERAS=1 \
    TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /opt/maas
COPY pyproject.toml README.md ./
COPY repository/ repository/
COPY models/ models/
COPY pipeline/ pipeline/
COPY serving/ serving/
COPY localhost/ localhost/
# The wheel cache survives rebuilds (BuildKit) without ending up in the image.
RUN --mount=type=cache,target=/root/.cache/pip pip install .

# A non-root user with a numeric id, so that Kubernetes' runAsNonRoot can check it (pipeline.k8s runs
# pods as 1000). runs/ and model_repository/, the config's relative defaults, go in its home.
RUN useradd --uid 1000 --create-home maas
USER 1000:1000
WORKDIR /home/maas
CMD ["python", "-m", "pipeline.run"]
