# One image for the ingress, the worker and the operator; the command picks the process:
#   email-service api (the default) | email-service worker | email-service operator
#
#   scripts/build-image.sh                 # buildah, base made with debootstrap: no registry needed
#   docker build -t email-service .        # python:3.11-slim-bookworm from a registry
#
# BASE_IMAGE: any image with Python 3.11 and its venv module on PATH as python3. Builder and
# runtime use the same one, so the virtualenv's interpreter link stays valid in the runtime stage.
# Dependencies come only from the hash-pinned, wheels-only locks (scripts/lock.sh regenerates
# them); nothing is compiled, and the runtime stage has no compiler and no pip. dkimpy publishes
# no wheel: its pinned pure-Python sdist is built into a wheel here (scripts/lock.sh SOURCE_ONLY).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS builder
WORKDIR /src
# The build backend (hatchling) lives in its own virtualenv, which stays in this stage.
COPY requirements-build.lock ./
RUN python3 -m venv /opt/build \
    && /opt/build/bin/pip install --no-cache-dir --disable-pip-version-check \
        --require-hashes --only-binary=:all: -r requirements-build.lock
# Runtime dependencies (a layer cached until the lock changes), installed by the build
# virtualenv's pip into a virtualenv without pip.
COPY requirements.lock ./
RUN python3 -m venv --without-pip /opt/venv \
    && /opt/build/bin/pip --python /opt/venv/bin/python install --no-cache-dir \
        --disable-pip-version-check --require-hashes --only-binary=:all: --no-binary=dkimpy \
        -r requirements.lock
# The project itself: a wheel (templates/ and operator/ included by pyproject's force-include),
# installed for /opt/venv but staged under /staging, so the runtime stage copies it as a small
# layer of its own and the big dependency layer stays cached when only the code changes. The
# staging tree also holds the empty working directory /app (not every builder creates WORKDIR's
# directory, and with a read-only root filesystem it must already exist).
COPY pyproject.toml README.md ./
COPY mailcore/ mailcore/
COPY service/ service/
COPY workers/ workers/
COPY bounces/ bounces/
COPY email_service/ email_service/
COPY templates/ templates/
COPY operator/ operator/
RUN /opt/build/bin/pip wheel --no-cache-dir --disable-pip-version-check --no-deps \
        --no-build-isolation --wheel-dir /tmp/dist . \
    && /opt/build/bin/pip --python /opt/venv/bin/python install --no-cache-dir \
        --disable-pip-version-check --no-deps --root /staging /tmp/dist/email_service-*.whl \
    && mkdir -p /staging/app

FROM ${BASE_IMAGE} AS runtime
ARG BASE_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="email-service" \
      org.opencontainers.image.description="Transactional email: JWT ingress, Dramatiq workers, MJML templates, kopf operator" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /staging/ /

# Ready for a read-only root filesystem with /tmp writable: bytecode is precompiled at install,
# the worker's metrics go to /tmp/email-service-metrics (PROMETHEUS_MULTIPROC_DIR, set by the
# worker command only: in the ingress it would switch prometheus_client to multiprocess mode).
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp

WORKDIR /app
USER 10001:10001

# 8000 ingress HTTP · 9191 worker metrics · 9192 operator metrics · 8080 operator liveness
EXPOSE 8000 9191 9192 8080

# The ingress's liveness endpoint by default; a worker or operator container sets HEALTHCHECK_URL
# (http://127.0.0.1:9191/metrics, http://127.0.0.1:8080/healthz). Kubernetes ignores this and
# uses the chart's probes. No curl in the image: Python's urllib (non-2xx raises, exit 1).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; r.urlopen(os.environ.get('HEALTHCHECK_URL') or 'http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=4)"]

ENTRYPOINT ["email-service"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]
