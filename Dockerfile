# One image, two entry points: `mace api` (default) and `mace worker`.
# TORCH_INDEX selects the torch build: CPU by default, e.g. https://download.pytorch.org/whl/cu124 for GPUs.
FROM python:3.11-slim AS base

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    MACE_DATA_DIR=/data HF_HUB_OFFLINE=1

RUN useradd --create-home --uid 1000 mace && mkdir -p /data && chown mace /data
WORKDIR /app

RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations
RUN pip install ".[worker]"

USER mace
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"
ENTRYPOINT ["mace"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]
