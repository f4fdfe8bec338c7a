# One image for every shoal process on Kubernetes: the operator, the scheduler
# and the workers. The manifests and the operator set each container's command
# (`shoal operator ...`, `shoal scheduler ...`, `shoal worker ...`), so the image
# has no entrypoint of its own; `docker run IMAGE` only prints the CLI help.
#
#   docker build -t ghcr.io/shoal-dev/shoal:0.1.0 .
#
# Needs BuildKit (Docker's default builder since 23.0) or podman/buildah for
# `RUN --mount`. BASE is any Debian-like image with python3 >= 3.11 and its
# venv module; tests/k8s/build-image.sh passes a base made with debootstrap so
# that nothing is pulled. pip trusts an extra CA bundle (e.g. a TLS proxy's)
# when it is passed as the build secret `pip-ca`; the bundle is mounted only
# while pip runs and never lands in a layer:
#
#   docker build --secret id=pip-ca,src=/etc/ssl/certs/ca-certificates.crt .
#
# Runtime: the image runs as uid/gid 10001 with a read-only root filesystem.
# Nothing under / is written at run time except:
#   /tmp          tempfile's directory and the workers' spill files
#                 (mount an emptyDir; size it for spilling on workers);
#   /home/shoal   HOME; shoal itself writes nothing there, user code may
#                 (mount an emptyDir if it does).
ARG BASE=python:3.11-slim

# The dependency list (the core ones and the Kubernetes extra), read from
# pyproject.toml in a stage of its own: the layer that installs them is
# rebuilt when the list changes, not on every edit of pyproject.toml.
FROM ${BASE} AS requirements
COPY pyproject.toml /pyproject.toml
RUN python3 -c "import tomllib; p = tomllib.load(open('/pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['kubernetes']))" \
    > /requirements.txt

FROM ${BASE} AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/shoal \
    PATH=/opt/shoal/bin:${PATH} \
    HOME=/home/shoal

# A fixed numeric uid/gid so that pods can check `runAsNonRoot` and use the
# same ids in their securityContext.
RUN groupadd --system --gid 10001 shoal \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/shoal \
       --create-home --shell /usr/sbin/nologin shoal

# The dependencies first, so that a change to the sources alone reuses this
# layer.
COPY --from=requirements /requirements.txt /tmp/shoal-requirements.txt
RUN --mount=type=secret,id=pip-ca \
    if [ -f /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && python3 -m venv /opt/shoal \
    && pip install -r /tmp/shoal-requirements.txt \
    && rm /tmp/shoal-requirements.txt

# The package itself is built in a stage of its own; only the files pip
# installed for it (its RECORD: modules, bytecode, metadata, the `shoal`
# script) are copied into the final image, never the build tree.
FROM runtime AS package
COPY pyproject.toml README.md /build/
COPY src /build/src
RUN --mount=type=secret,id=pip-ca \
    if [ -f /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && pip install --no-deps /build \
    && pip check \
    && mkdir /staging \
    && python -c "import importlib.metadata as m, os; print('\n'.join(os.path.relpath(os.path.normpath(f.locate()), '/') for f in m.files('shoal')))" \
       | tar -C / -cf - -T - | tar -C /staging -xf -

FROM runtime
COPY --from=package /staging/ /

WORKDIR /home/shoal
USER 10001:10001

# 8786 scheduler comm, 8787 scheduler HTTP (dashboard, API, metrics),
# 8788 worker HTTP, 8080 operator metrics, 8081 operator health.
EXPOSE 8786 8787 8788 8080 8081

CMD ["shoal", "--help"]
