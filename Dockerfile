# syntax=docker/dockerfile:1.7
# The image every Ray node of the cluster runs (cluster/aws-gpu.yaml, cluster/local-onprem.yaml, cluster/kuberay/).
# Build and push (the name is declared once, in cluster/IMAGE):
#
#   docker build -t "$(cat cluster/IMAGE)" . && docker push "$(cat cluster/IMAGE)"
#
# Base: rayproject/ray:2.60.0-py311-cu128 = the official Ray 2.60.0 image, CPython 3.11, on NVIDIA's CUDA 12.8 Ubuntu
# image (conda env /home/ray/anaconda3, non-root user "ray" uid 1000 / gid 100). Ray must be the same version on every
# node and on the machine that submits (cluster/constraints.txt pins ray==2.60.0). The CUDA base also sets the
# NVIDIA_* variables the NVIDIA container runtime needs to expose the GPUs. PyTorch (torch==2.14.1 from PyPI, pinned
# in cluster/constraints.txt) brings its own CUDA 13 runtime libraries as nvidia-* wheels: the GPU nodes need an
# NVIDIA driver that supports CUDA 13 (R580 or newer), e.g. the AWS Deep Learning Base OSS Nvidia Driver AMI.
#
# Weights are NOT baked in by default: the job downloads them on first use into $FINEDETAIL_CACHE=/cache (a volume:
# mount a disk or a shared filesystem there to keep them across containers). To bake them in, pass e.g.
#   --build-arg SAM_CHECKPOINT_URL=https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth
#   --build-arg SEGGPT_CHECKPOINT=BAAI/seggpt-vit-large
# and run the job with --sam-checkpoint /opt/finedetail/weights/sam_vit_h_4b8939.pth
# --seggpt-checkpoint /opt/finedetail/weights/seggpt (they live outside /cache so a mounted volume cannot hide them).
ARG BASE_IMAGE=rayproject/ray:2.60.0-py311-cu128

# --- stage 1: build every wheel of the pinned closure (compilers live only here) -----------------------------------
FROM ${BASE_IMAGE} AS build
USER root
# g++ for pydensecrf2 (the `crf` extra ships as an sdist only)
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cluster/constraints.txt cluster/constraints.txt
COPY finedetail finedetail
COPY job job
# The package set is pyproject.toml's: the project itself with the `crf` extra; constraints.txt only pins versions
# (generated from the project's environment by cluster/make_constraints.py; tests/test_cluster.py checks it).
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --wheel-dir /wheels -c cluster/constraints.txt ".[crf]"

# --- stage 2: the runtime image: wheels installed from stage 1, nothing downloaded, no compilers ------------------
FROM ${BASE_IMAGE}
USER root
RUN mkdir -p /cache /opt/finedetail/weights \
    && chown -R 1000:100 /cache /opt/finedetail
USER 1000:100
COPY --chown=1000:100 cluster/constraints.txt /opt/finedetail/constraints.txt
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels -c /opt/finedetail/constraints.txt "finedetail[crf]" \
    && python -m job run --help > /dev/null \
    && python -c "import finedetail, job, cv2, torch, transformers, segment_anything, pydensecrf.densecrf, ray; \
assert ray.__version__ == '2.60.0', ray.__version__"

# Optional: bake checkpoints in (see the header). Empty by default: no weights in the image.
ARG SAM_CHECKPOINT_URL=""
ARG SAM_CHECKPOINT_SHA256=""
ARG SEGGPT_CHECKPOINT=""
COPY --chown=1000:100 cluster/bake_weights.py /opt/finedetail/bake_weights.py
RUN if [ -n "$SAM_CHECKPOINT_URL$SEGGPT_CHECKPOINT" ]; then \
        python /opt/finedetail/bake_weights.py --dest /opt/finedetail/weights \
            ${SAM_CHECKPOINT_URL:+--sam "$SAM_CHECKPOINT_URL"} \
            ${SAM_CHECKPOINT_SHA256:+--sam-sha256 "$SAM_CHECKPOINT_SHA256"} \
            ${SEGGPT_CHECKPOINT:+--seggpt "$SEGGPT_CHECKPOINT"}; \
    fi

# Weights cache (checkpoint downloads, SegGPT Hub files under /cache/huggingface): mount a volume here.
ENV FINEDETAIL_CACHE=/cache
VOLUME ["/cache"]
WORKDIR /home/ray
LABEL org.opencontainers.image.title="finedetail" \
      org.opencontainers.image.description="Fine-detail segmentation of image archives on Ray Data (SegGPT + SAM)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="rayproject/ray:2.60.0-py311-cu128"
USER 1000:100
CMD ["python", "-m", "job", "--help"]
