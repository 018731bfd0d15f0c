# shmpiped container image.
#
#   docker build -t shmpiped .                                       # NVIDIA CUDA 12 image, cupy-cuda12x
#   docker build -t shmpiped --build-arg WHEELHOUSE=wheelhouse .     # offline: wheels from ./wheelhouse/
#   docker build -t shmpiped-cpu --build-arg BASE_IMAGE=debian:bookworm-slim --build-arg GPU=0 .
#
# Build arguments
#   BASE_IMAGE     the runtime base.  Default: NVIDIA's CUDA 12 runtime image (cudart and the CUDA
#                  math libraries; the host only needs the driver and the NVIDIA container toolkit).
#                  Any Debian/Ubuntu-like image works; one without Python gets the distribution's
#                  python3 (and tini) from apt, which needs the network.
#   BUILDER_IMAGE  where the wheels are built; defaults to BASE_IMAGE.  Its python3 must be the
#                  same interpreter at the same path as the runtime's: the venv is copied over.
#   WHEELHOUSE     a folder of the build context with prebuilt wheels.  Default: docker/no-wheelhouse
#                  (empty): wheels come from PyPI and shmpiped is compiled here (gcc and the Python
#                  headers are installed in the builder only).  A non-empty wheelhouse makes the
#                  build offline (pip --no-index): it must hold shmpiped's wheel (or setuptools and
#                  wheel plus a compiler in the builder), numpy, pyyaml, click, prometheus-client,
#                  and for GPU=1 cupy-cuda12x with its dependencies (CuPy 14: cuda-pathfinder;
#                  CuPy 13: fastrlock), all for the image's Python.  `pip download 'cupy-cuda12x>=13'`
#                  with that Python fetches them.
#   GPU            1 (default): install cupy-cuda12x (the `gpu` extra), fail if it cannot be had;
#                  auto: install it when the wheelhouse or the network has it; 0: NumPy only (CPU
#                  image, about 300 MB smaller: CuPy is most of the venv).
#   SHMPIPED_UID   the non-root user's uid and gid (default 10001).
#   VERSION, REVISION, CREATED, SOURCE
#                  the OCI labels org.opencontainers.image.version (shmpiped's version), .revision
#                  (the commit), .created (RFC 3339, UTC) and .source (where the source is); their
#                  defaults say "unknown" (CREATED: 1970-01-01T00:00:00Z), so pass them.  The label
#                  .base.name is BASE_IMAGE.  A release build, from the checkout:
#
#   docker build -t shmpiped \
#     --build-arg VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)" \
#     --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
#     --build-arg SOURCE="$(git remote get-url origin)" .
#   docker image inspect --format '{{json .Config.Labels}}' shmpiped
#
# GPUs (GPU=1)
#   The image holds CuPy for CUDA 12, so pipelines with `storage: gpu` streams and `gpu.*` kernels run
#   in it; CPU pipelines run in it unchanged.  CuPy needs the CUDA 12 libraries (the default base
#   has them; on another base they must be added) and, at run time, the host's NVIDIA driver and
#   GPUs: `docker run --gpus all` (or `--gpus device=0`) asks the NVIDIA container toolkit, which
#   must be installed on the host and registered with Docker (`nvidia-ctk runtime configure
#   --runtime=docker`), to mount the driver's libraries and the GPU device nodes into the
#   container.  Without `--gpus`, or on a host without a GPU, `import cupy` still works, the `gpu.*`
#   kinds are not offered, and a pipeline that needs a CUDA device exits 78 (EX_CONFIG) with
#   "no CUDA device is usable" and the device it asked for.
#
# Run (see the README, "Containers"):
#   docker run --ipc=host --gpus all -v ./pipeline.yaml:/etc/shmpiped/pipeline.yaml -p 9750:9750 shmpiped
# The pipeline is /etc/shmpiped/pipeline.yaml when that file exists, else the embedded demo.
# PID 1 is tini when the image has it (bases without Python get it with Python from apt), else the
# daemon itself, which handles SIGTERM and reaps its workers; add `docker run --init` for an init
# that also reaps stray grandchildren.

ARG BASE_IMAGE=nvidia/cuda:12.4.1-runtime-ubuntu22.04
ARG BUILDER_IMAGE=${BASE_IMAGE}

# ---------------------------------------------------------------------------------------- builder
FROM ${BUILDER_IMAGE} AS builder
ARG GPU=1
ARG WHEELHOUSE=docker/no-wheelhouse
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
COPY ${WHEELHOUSE}/ /wheelhouse/
COPY pyproject.toml setup.py README.md /src/
COPY shmpiped /src/shmpiped
COPY docker/build-wheels.sh /src/docker/build-wheels.sh
# Fills /wheelhouse (kept in this stage: `docker build --target builder` and copy it out to
# prepare an air-gapped site's wheelhouse) and installs from it into the venv /opt/shmpiped.
RUN GPU="${GPU}" sh /src/docker/build-wheels.sh /src /wheelhouse /opt/shmpiped

# ---------------------------------------------------------------------------------------- runtime
FROM ${BASE_IMAGE} AS runtime
ARG SHMPIPED_UID=10001
COPY docker/entrypoint.sh /usr/local/bin/shmpiped-entrypoint
COPY docker/healthcheck.py /usr/local/lib/shmpiped/healthcheck.py
COPY docker/prepare-runtime.sh /usr/local/lib/shmpiped/prepare-runtime.sh
RUN SHMPIPED_UID="${SHMPIPED_UID}" sh /usr/local/lib/shmpiped/prepare-runtime.sh
COPY --from=builder /opt/shmpiped /opt/shmpiped


ENV PATH=/opt/shmpiped/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    SHMPIPED_HTTP_ADDRESS=0.0.0.0:9750 \
    SHMPIPED_CONTROL_SOCKET=/run/shmpiped/control.sock

USER ${SHMPIPED_UID}:${SHMPIPED_UID}
WORKDIR /var/lib/shmpiped
EXPOSE 9750
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["/opt/shmpiped/bin/python", "/usr/local/lib/shmpiped/healthcheck.py"]
ENTRYPOINT ["/usr/local/bin/shmpiped-entrypoint"]
CMD ["run"]

# The OCI annotations, last: a new revision or date rebuilds only this step.
ARG BASE_IMAGE
ARG VERSION=unknown
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="shmpiped" \
      org.opencontainers.image.description="Real-time shared-memory pipeline daemon" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
