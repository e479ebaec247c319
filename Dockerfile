# One image for every role: `mtl migrate` (one-shot), `mtl serve --no-worker` (API) and
# `mtl worker` (GPU training).
#
# torch 2.14.1 comes from PyPI by default: its Linux x86_64 wheel is PyPI's CUDA build, CUDA 13.0
# (torch.version.cuda '13.0', with nvidia-*-cu13 wheels; a GPU host needs a driver that supports
# CUDA 13). This file used to ask PyTorch's cu124 index for it; PyTorch's published builds for
# CUDA 12.4 end at torch 2.6, as far as its release notes say (the index itself could not be
# reached to check). For a smaller CPU-only image:
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu .
# (not verified: download.pytorch.org was unreachable where this was written; docs/service.md.)
FROM python:3.11-slim

ARG TORCH_INDEX=https://pypi.org/simple
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    MTL_DATA_DIR=/data

WORKDIR /srv/mtl
RUN pip install --index-url "$TORCH_INDEX" torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY clients/python ./clients/python
COPY models ./models
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations
COPY alembic.ini ./
RUN pip install ./clients/python && pip install -e . \
    && useradd --system --uid 10001 --home /srv/mtl mtl \
    && mkdir -p /data && chown mtl /data
USER mtl
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)" || exit 1
CMD ["mtl", "serve", "--host", "0.0.0.0", "--port", "8000"]
