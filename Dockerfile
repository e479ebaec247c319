# One image for every role: `mtl migrate` (one-shot), `mtl serve --no-worker` (API) and
# `mtl worker` (GPU training). CUDA wheels of torch come from PyTorch's index.
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cu124
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    MTL_DATA_DIR=/data

WORKDIR /srv/mtl
RUN pip install --index-url "$TORCH_INDEX" torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY models ./models
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations
COPY alembic.ini ./
RUN pip install -e . \
    && useradd --system --uid 10001 --home /srv/mtl mtl \
    && mkdir -p /data && chown mtl /data
USER mtl
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)" || exit 1
CMD ["mtl", "serve", "--host", "0.0.0.0", "--port", "8000"]
