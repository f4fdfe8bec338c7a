"""The container image the node runs: built from the Dockerfile, checked for real.

Every check starts the image with podman the way a locked-down pod does:
read-only root filesystem, uid 10001, no network, and only /tmp writable (the
path the Dockerfile says pods must mount). The archive is loaded into a real
containerd, as the node loads it. Under CI these tests never skip.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.k8s.image import ImageInfo, build_image, in_ci, missing_prerequisite
from tests.k8s.processes import Supervisor
from tests.polling import wait_for

pytestmark = [pytest.mark.kubernetes, pytest.mark.timeout(1500)]

SRC = Path(__file__).resolve().parents[2] / "src" / "shoal"
UID = "10001"
RUN_TIMEOUT = 120.0


def _skip_or_fail(reason: str) -> None:
    if in_ci():
        pytest.fail(f"CI=true, so the image tests may not skip: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def image() -> ImageInfo:
    reason = missing_prerequisite()
    if reason:
        _skip_or_fail(reason)
    return build_image()


def podman_run(image: ImageInfo, *argv: str, user: str | None = UID, tmp_volume: bool = True,
               check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in the image as a restricted pod would: read-only, offline.

    ``tmp_volume``: mount a fresh tmpfs on /tmp, as pods mount an emptyDir there.
    """
    cmd = ["podman", "run", "--rm", "--read-only", "--read-only-tmpfs=false",
           "--network", "none"]
    if tmp_volume:
        cmd += ["--tmpfs", "/tmp:rw,mode=1777"]
    if user is not None:
        cmd += ["--user", user]
    done = subprocess.run([*cmd, image.ref, *argv], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{argv} exited with {done.returncode}:\n{done.stdout}\n"
                             f"{done.stderr}")
    return done


def test_cli_help_runs(image: ImageInfo) -> None:
    out = podman_run(image, "shoal", "--help").stdout
    for command in ("scheduler", "worker", "operator"):
        assert command in out


def test_default_command_prints_help(image: ImageInfo) -> None:
    assert "usage: shoal" in podman_run(image).stdout


def test_package_and_kubernetes_extra_import_from_the_venv(image: ImageInfo) -> None:
    code = "import shoal, kopf, kubernetes, sys; print(shoal.__file__); print(sys.prefix)"
    module_file, prefix = podman_run(image, "python", "-c", code).stdout.split()
    assert module_file.startswith("/opt/shoal/lib/")
    assert prefix == "/opt/shoal"


def test_runs_as_uid_and_gid_10001_by_default(image: ImageInfo) -> None:
    # No --user: the image's own USER is what a pod without runAsUser gets.
    ids = podman_run(image, "sh", "-c", "id -u; id -g", user=None).stdout.split()
    assert ids == [UID, UID]


def test_root_filesystem_is_not_written(image: ImageInfo) -> None:
    # HOME and the venv are read-only in a pod; only the /tmp volume takes writes.
    code = (
        "import errno, os, tempfile\n"
        "for path in (os.path.expanduser('~/probe'), '/opt/shoal/probe'):\n"
        "    try:\n"
        "        open(path, 'w')\n"
        "    except OSError as exc:\n"
        "        assert exc.errno == errno.EROFS, exc\n"
        "    else:\n"
        "        raise SystemExit(path + ' is writable')\n"
        "with tempfile.NamedTemporaryFile() as f:\n"
        "    print(f.name)\n"
    )
    assert podman_run(image, "python", "-c", code).stdout.startswith("/tmp/")


# Scheduler and worker as separate processes of one container, talking TCP on
# its loopback; the container's own network namespace makes fixed ports safe.
# Its waits are bounded by the deadline (tests/polling.py is not in the image).
SCHEDULER_AND_WORKER = """
import os, socket, subprocess, tempfile, time
from shoal import Client

deadline = time.monotonic() + 90
def until(what, ready):
    while not ready():
        if time.monotonic() > deadline:
            raise SystemExit('timed out waiting for ' + what)
        time.sleep(0.1)

def listening():
    try:
        socket.create_connection(('127.0.0.1', 8786), timeout=1).close()
        return True
    except OSError:
        return False

def on_worker():
    with tempfile.NamedTemporaryFile(prefix='spill-') as f:
        f.write(b'x')
        return os.getuid(), f.name

procs = [subprocess.Popen(['shoal', 'scheduler', '--host', '127.0.0.1', '--port', '8786',
                           '--http-port', '8787'])]
try:
    until('the scheduler', listening)
    procs.append(subprocess.Popen(['shoal', 'worker', 'tcp://127.0.0.1:8786',
                                   '--host', '127.0.0.1', '--nthreads', '1',
                                   '--memory-limit', '1GiB', '--http-port', '8788']))
    with Client('tcp://127.0.0.1:8786', timeout=30) as client:
        until('a worker', lambda: client.scheduler_info()['workers'])
        print('RESULT', client.submit(sum, range(101)).result(timeout=60))
        print('WORKER', *client.submit(on_worker).result(timeout=60))
finally:
    for p in reversed(procs):
        p.terminate()
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
"""


def test_scheduler_and_worker_compute_inside_the_image(image: ImageInfo) -> None:
    out = podman_run(image, "python", "-c", SCHEDULER_AND_WORKER).stdout.splitlines()
    assert "RESULT 5050" in out
    worker_line = next(line for line in out if line.startswith("WORKER"))
    _, uid, spill = worker_line.split()
    assert uid == UID
    assert spill.startswith("/tmp/spill-")


def test_no_pip_cache_build_tree_or_sources(image: ImageInfo) -> None:
    # As root, to see every home directory, and with the image's own /tmp;
    # -xdev keeps find on the image's files.
    script = (
        "ls -d /build /staging /root/.cache /home/shoal/.cache 2>/dev/null;"
        " ls -A /tmp; find / -xdev \\( -name pyproject.toml -o -name '*.egg-info' -o -name pip-build-env \\)"
        " -print; true"
    )
    assert podman_run(image, "sh", "-c", script, user="0", tmp_volume=False).stdout == ""


def test_image_holds_this_checkout(image: ImageInfo) -> None:
    # The build is cached: prove the cache never serves stale sources.
    code = (
        "import hashlib, json, os, shoal\n"
        "root = os.path.dirname(shoal.__file__)\n"
        "print(json.dumps({os.path.relpath(os.path.join(d, f), root):"
        " hashlib.sha256(open(os.path.join(d, f), 'rb').read()).hexdigest()"
        " for d, _, fs in os.walk(root) if '__pycache__' not in d for f in fs}))\n"
    )
    installed = json.loads(podman_run(image, "python", "-c", code).stdout)
    here = {str(p.relative_to(SRC)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in SRC.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert installed == here


def test_bytecode_is_precompiled_and_current(image: ImageInfo) -> None:
    # A read-only root cannot cache bytecode: every module the venv holds must
    # come with a .pyc that matches its source, or each start recompiles it.
    code = (
        "import glob, importlib.util, os, struct, sys\n"
        "stale = []\n"
        "sources = glob.glob(sys.prefix + '/lib/python3*/site-packages/**/*.py', recursive=True)\n"
        "for src in sources:\n"
        "    pyc = importlib.util.cache_from_source(src)\n"
        "    try:\n"
        "        header = open(pyc, 'rb').read(16)\n"
        "    except OSError:\n"
        "        stale.append(src); continue\n"
        "    flags, mtime, size = struct.unpack('<III', header[4:16])\n"
        "    st = os.stat(src)\n"
        "    if flags == 0 and (mtime, size) != (int(st.st_mtime) & 0xFFFFFFFF,"
        " st.st_size & 0xFFFFFFFF):\n"
        "        stale.append(src)\n"
        "print(len(sources), stale[:20])\n"
    )
    checked, stale = podman_run(image, "python", "-c", code).stdout.split(maxsplit=1)
    assert int(checked) > 0
    assert stale.strip() == "[]"


def test_name_is_the_operators_default_image(image: ImageInfo) -> None:
    from shoal.operator.spec import DEFAULT_IMAGE

    assert image.ref == DEFAULT_IMAGE


@pytest.fixture
def containerd() -> Iterator[str]:
    """A containerd of the test's own (root, state, socket in a temp dir)."""
    for tool in ("containerd", "ctr"):
        if shutil.which(tool) is None:
            _skip_or_fail(f"{tool} is not installed (tests/k8s/build-kubernetes.sh installs it)")
    home = Path(tempfile.mkdtemp(prefix="shoal-ctrd-"))
    socket = home / "containerd.sock"
    config = home / "config.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{home}/root"\n'
        f'state = "{home}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{socket}"\n'
        f'[ttrpc]\n  address = "{socket}.ttrpc"\n'
    )
    processes = Supervisor(home)
    try:
        daemon = processes.start("containerd", ["containerd", "--config", str(config)])
        wait_for(lambda: socket.exists() or daemon.process.poll() is not None, timeout=30,
                 what="containerd's socket")
        daemon.check_alive()
        yield str(socket)
    finally:
        processes.stop_all()
        shutil.rmtree(home)


def test_archive_imports_into_containerd(image: ImageInfo, containerd: str) -> None:
    def ctr(*args: str) -> str:
        return subprocess.run(["ctr", "--address", containerd, "--namespace", "k8s.io", *args],
                              capture_output=True, text=True, check=True,
                              timeout=RUN_TIMEOUT).stdout

    ctr("images", "import", str(image.archive))
    assert ctr("images", "ls", "--quiet").split() == [image.ref]
    # Unpacked for this platform, so the kubelet can start it without a pull.
    (line,) = [row for row in ctr("images", "check").splitlines() if row.startswith(image.ref)]
    assert line.split()[-1] == "true", line
