# gradloop job service. CPU torch by default; for CUDA:
#   docker build --build-arg BASE=nvidia/cuda:12.4.1-runtime-ubuntu22.04 \
#                --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 .
# (a CUDA base image needs python3 and pip; the slim Python image has them.)
ARG BASE=python:3.11-slim
FROM ${BASE}

ARG TORCH=torch==2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    GRADLOOP_DATA_ROOT=/data

WORKDIR /app
# torch first, from the chosen index, so the project's torch range keeps this build.
RUN python3 -m pip install --index-url "${TORCH_INDEX}" "${TORCH}"
COPY pyproject.toml README.md ./
COPY service ./service
COPY plugins ./plugins
RUN python3 -m pip install ".[postgres]"

RUN useradd --create-home --uid 10001 gradloop \
    && mkdir -p /state /data && chown gradloop:gradloop /state /data
USER gradloop

# Job store, job logs, run directories and the MLflow store all live on the volume.
VOLUME ["/state"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python3 -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"

ENTRYPOINT ["gradloop"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--state-dir", "/state", "--data-root", "/data", "--tracking-uri", "sqlite:////state/mlflow.db"]
