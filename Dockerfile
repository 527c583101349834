# syntax=docker/dockerfile:1
# The fastgw image (docs/kubernetes.md#the-image). Two stages: `build` compiles the wheel with gcc exactly
# as CI does (`python -m build`: the sdist, then the wheel from the sdist; tests/packaging tests that wheel),
# and `runtime` installs that wheel into a slim Python with no compiler. CPython 3.11 on Debian bookworm is
# what CI builds and tests the wheel with. tests/deploy/test_dockerfile.py checks what this file promises.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev libnghttp2-dev \
 && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir 'build>=1.0'
WORKDIR /src
COPY . .
RUN python -m build --outdir /dist .

FROM ${PYTHON_IMAGE} AS runtime
# tini as PID 1 forwards SIGTERM to the supervisor (which then drains) and reaps any orphan a plugin leaves.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini libnghttp2-14 \
 && rm -rf /var/lib/apt/lists/*
# --only-binary: every dependency comes as a wheel, so nothing needs a compiler here.
RUN --mount=type=bind,from=build,source=/dist,target=/dist \
    pip install --no-cache-dir --only-binary=:all: /dist/fastgw-*.whl
# A read-only root filesystem: bytecode was compiled at install, nothing else is written but standard
# output and error (the logs) and /tmp, which Kubernetes mounts as an emptyDir.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY deploy/docker/fastgw.yaml /etc/fastgw/fastgw.yaml
RUN groupadd --system --gid 10001 fastgw \
 && useradd --system --uid 10001 --gid fastgw --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin fastgw
USER 10001:10001
WORKDIR /tmp
# 8080: HTTP; 8443: HTTPS (TLS listeners); 9901: the Admin API (/healthz, /readyz, /metrics). Unprivileged
# ports, so the gateway binds them as a non-root user with no capability.
EXPOSE 8080 8443 9901
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "fastgw", "run"]
CMD ["-c", "/etc/fastgw"]
