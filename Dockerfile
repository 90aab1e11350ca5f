# promptswap: one frozen base model, many PEFT soft prompts, one OpenAI/TGI-compatible server.
#
# CPU image (the default):
#   docker build -t promptswap .
#   docker run -p 8000:8000 -v promptswap-cache:/var/cache/promptswap -v promptswap-store:/var/lib/promptswap \
#              -e PROMPTSWAP_ADMIN_TOKEN=change-me-please promptswap
#
# NVIDIA GPU image: take torch from a CUDA wheel index and add Triton for the kernels, then run with `--gpus all`
# (the host needs the NVIDIA container toolkit):
#   docker build -t promptswap:cuda \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 --build-arg EXTRAS="[triton]" .
#
# N replicas behind one endpoint on Ray Serve, on a shared S3 store (docs/deployment.md): build with the extra
# `cluster` (`--build-arg EXTRAS="[cluster]"`, or "[cluster,triton]" for CUDA) and run the other command:
#   docker run -p 8000:8000 --shm-size=1g -e PROMPTSWAP_S3_ENDPOINT=http://s3.internal:9000 \
#              -e AWS_ACCESS_KEY_ID=... -e AWS_SECRET_ACCESS_KEY=... -e PROMPTSWAP_ADMIN_TOKEN=change-me-please \
#              promptswap serve-cluster --replicas 2 --store s3://BUCKET/PREFIX --host 0.0.0.0 --port 8000
#
# The default model (SmolLM2-135M-Instruct) is fetched and converted on first start into the cache volume;
# --build-arg PRELOAD_MODEL=1 bakes it into the image instead (a new named volume starts with the image's copy).
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG EXTRAS=""
ARG PRELOAD_MODEL=0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PROMPTSWAP_CACHE_DIR=/var/cache/promptswap \
    PROMPTSWAP_STORE=/var/lib/promptswap/store \
    HF_HOME=/var/cache/promptswap/huggingface

RUN useradd --create-home --uid 10001 promptswap \
    && mkdir -p /var/cache/promptswap /var/lib/promptswap/store \
    && chown -R promptswap:promptswap /var/cache/promptswap /var/lib/promptswap

WORKDIR /app
# torch first, from its own index, in a layer of its own: it is most of the image and changes least.
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0
COPY pyproject.toml README.md ./
COPY common ./common
COPY server ./server
COPY prompt_store ./prompt_store
COPY kernels ./kernels
COPY loadtest ./loadtest
RUN pip install ".${EXTRAS}"

USER promptswap
RUN if [ "${PRELOAD_MODEL}" = "1" ]; then \
        python -c "from pathlib import Path; from server.model.default_model import ensure_default_model; ensure_default_model(Path('/var/cache/promptswap'))"; \
    fi

VOLUME ["/var/cache/promptswap", "/var/lib/promptswap"]
EXPOSE 8000
# /health is 200 as soon as the process is up (also while the model loads); /ready says when it serves.
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"]
# SIGTERM drains: requests in flight finish (PROMPTSWAP_DRAIN_TIMEOUT_S, default 30 s), new ones get 503.
# Give `docker stop` at least that long: docker stop --time 40.
STOPSIGNAL SIGTERM
ENTRYPOINT ["promptswap"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
