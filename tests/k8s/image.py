"""The project's container image, built once for the real-cluster tests.

Pods on the test node run the image the Dockerfile makes, never one pulled
from a registry. ``tests/k8s/build-image.sh`` builds it with podman on a
debootstrap base and keeps it, as an OCI archive, in a cache outside the
checkout; this module runs that script (a warm run takes a second) and tells
the tests what it made: the name the image has in the archive, which is the
name ``ctr -n k8s.io images import`` gives it on the node.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BUILD_SCRIPT", "ImageBuildError", "ImageInfo", "build_image", "in_ci",
           "missing_prerequisite"]

BUILD_SCRIPT = Path(__file__).with_name("build-image.sh")
# A cold build (debootstrap, then pip through the proxy) takes 2-3 minutes on
# two idle cores; this bound leaves room for a busy machine.
BUILD_TIMEOUT = 1200.0
_REF_ANNOTATION = "org.opencontainers.image.ref.name"


class ImageBuildError(RuntimeError):
    """build-image.sh failed; the message ends with the tail of its log."""


@dataclass(frozen=True)
class ImageInfo:
    """What the build made: the image's name and the archive holding it."""

    ref: str
    archive: Path


def in_ci() -> bool:
    """Under CI the image tests must run: nothing may skip them."""
    return os.environ.get("CI", "").lower() == "true"


def missing_prerequisite() -> str | None:
    """Why the image cannot be built here, or None when it can.

    The script installs podman itself (as root, with apt); a local run on a
    machine without podman skips instead of installing system packages.
    """
    if shutil.which("podman") is None:
        return "podman is not installed (tests/k8s/build-image.sh installs it, as root)"
    return None


@functools.cache
def build_image() -> ImageInfo:
    """Build (or reuse) the image and return its name and OCI archive."""
    try:
        done = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ImageBuildError(f"{BUILD_SCRIPT} took more than {BUILD_TIMEOUT:.0f}s") from exc
    if done.returncode != 0:
        tail = "\n".join(done.stderr.splitlines()[-40:])
        raise ImageBuildError(f"{BUILD_SCRIPT} exited with {done.returncode}:\n{tail}")
    archive = Path(done.stdout.strip().splitlines()[-1])
    return ImageInfo(ref=archive_ref(archive), archive=archive)


def archive_ref(archive: Path) -> str:
    """The image name recorded in an OCI archive's index (one image per archive)."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        if member is None:
            raise ImageBuildError(f"{archive} has no index.json: not an OCI archive")
        index = json.load(member)
    refs = [m.get("annotations", {}).get(_REF_ANNOTATION) for m in index["manifests"]]
    if len(refs) != 1 or not refs[0]:
        raise ImageBuildError(f"{archive} should name exactly one image, names {refs}")
    return refs[0]
