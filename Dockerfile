# One image for every shoal process on Kubernetes: the operator, the scheduler
# and the workers. The manifests and the operator set each container's command
# (`shoal operator ...`, `shoal scheduler ...`, `shoal worker ...`), so the image
# has no entrypoint of its own; `docker run IMAGE` only prints the CLI help.
#
#   docker build -t ghcr.io/shoal-dev/shoal:0.1.0 .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed numeric uid/gid so that pods can check `runAsNonRoot` and use the
# same ids in their securityContext.
RUN groupadd --system --gid 10001 shoal \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/shoal \
       --create-home --shell /usr/sbin/nologin shoal

# Install the package with the Kubernetes extra (kopf, kubernetes client), then
# drop the build tree: the image only needs what pip installed.
WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install ".[kubernetes]" \
    && cd / && rm -rf /build

WORKDIR /home/shoal
USER 10001:10001

# 8786 scheduler comm, 8787 scheduler HTTP (dashboard, API, metrics),
# 8788 worker HTTP, 8080 operator metrics, 8081 operator health.
EXPOSE 8786 8787 8788 8080 8081

CMD ["shoal", "--help"]
