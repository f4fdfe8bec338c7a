"""Plugins: user code run by the scheduler, the workers or the nannies at
points of their lives, as with dask.distributed's plugins.

``client.register_plugin(plugin)`` sends a pickled plugin where its kind
says: a :class:`SchedulerPlugin` to the scheduler, a :class:`WorkerPlugin`
to every worker (and to each worker that joins later), a
:class:`NannyPlugin` to every nanny before it starts its worker.  Every hook
is optional and may be a coroutine function; the servers call them from
their I/O shells, after the state machine has handled the event, so a plugin
sees what happened but cannot change it half-way.  A hook that raises is
logged and the server goes on serving (a ``setup`` that raises fails the
``register_plugin`` call instead).  Servers without plugins pay nothing.

The built-ins cover what dask users reach for most: :class:`PipInstall`,
:class:`UploadFile`, :class:`UploadDirectory` and :class:`Environ`.
"""

from __future__ import annotations

import asyncio
import importlib
import io
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Seconds a ``pip install`` of :class:`PipInstall` may take.
PIP_TIMEOUT = 600.0


class SchedulerPlugin:
    """Hooks on the scheduler; override those you need (all optional).

    ``start(scheduler)``, ``close()``, ``add_worker(scheduler, worker)``,
    ``remove_worker(scheduler, worker, *, stimulus_id)``,
    ``add_client(scheduler, client)``, ``remove_client(scheduler, client)``,
    ``update_graph(scheduler, *, client, keys, tasks, stimulus_id)``,
    ``transition(key, start, finish, *, stimulus_id)``.
    """

    name: str


class WorkerPlugin:
    """Hooks on each worker: ``setup(worker)``, ``teardown(worker)`` and
    ``transition(key, start, finish, *, stimulus_id)`` (all optional)."""

    name: str


class NannyPlugin:
    """Hooks on each nanny: ``setup(nanny)`` before its worker process starts
    (``nanny.env`` is that process's environment), ``teardown(nanny)``.

    With ``restart = True``, registering it restarts the workers of nannies
    already running, so that their new processes start after ``setup``.
    """

    name: str
    restart = False


def plugin_kind(plugin: Any) -> str:
    """``"scheduler"``, ``"worker"`` or ``"nanny"``: where ``plugin`` runs."""
    if isinstance(plugin, SchedulerPlugin):
        return "scheduler"
    if isinstance(plugin, NannyPlugin):
        return "nanny"
    if isinstance(plugin, WorkerPlugin):
        return "worker"
    raise TypeError(f"a plugin must be a SchedulerPlugin, WorkerPlugin or NannyPlugin, "
                    f"got {type(plugin).__name__}")


def plugin_name(plugin: Any, name: str | None) -> str:
    """The name it is registered under: given, its ``name`` attribute, or its class's."""
    chosen = name or getattr(plugin, "name", None) or f"{type(plugin).__name__}-{id(plugin):x}"
    if not isinstance(chosen, str):
        raise TypeError(f"a plugin's name must be a string, got {chosen!r}")
    return chosen


# ------------------------------------------------------------------ built-ins


class InstallPlugin(WorkerPlugin):
    """The base of plugins that install software on the workers (:class:`PipInstall`)."""


class PipInstall(InstallPlugin):
    """``pip install`` these packages on every worker, now and as they join.

    ``packages`` are pip requirement strings (names, version specifiers, or
    paths of local wheels); ``pip_options`` are passed before them (e.g.
    ``["--no-index", "--find-links", "/wheels"]``).  The install runs with
    the worker's own interpreter (``python -m pip``), once per worker; code
    already imported by the worker is not reloaded (dask's
    ``restart_workers=True`` is not offered: restart with ``client.restart()``).
    """

    def __init__(self, packages: list[str], pip_options: list[str] | None = None) -> None:
        self.packages = list(packages)
        self.pip_options = list(pip_options or [])
        self.name = f"pip-install-{'-'.join(sorted(self.packages))}"[:200]

    async def setup(self, worker: Any) -> None:
        command = [sys.executable, "-m", "pip", "install", "--quiet", *self.pip_options,
                   *self.packages]
        proc = await asyncio.create_subprocess_exec(
            *command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            _out, err = await asyncio.wait_for(proc.communicate(), PIP_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RuntimeError(f"pip install {' '.join(self.packages)} took longer than "
                               f"{PIP_TIMEOUT}s") from None
        if proc.returncode != 0:
            raise RuntimeError(f"pip install {' '.join(self.packages)} failed "
                               f"({proc.returncode}): {err.decode(errors='replace')[-2000:]}")
        importlib.invalidate_caches()
        logger.info("pip installed %s", ", ".join(self.packages))


def install_file(name: str, data: bytes, directory: str) -> str:
    """On a worker: save an uploaded file, make it importable, (re)import it."""
    import importlib.util

    os.makedirs(directory, exist_ok=True)
    path = _write_whole(Path(directory) / name, data)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    importlib.invalidate_caches()
    module = name.rsplit(".", 1)[0]
    if name.endswith(".py"):
        # bytecode cached from an earlier upload is checked by mtime and size
        # only: a same-sized file written within the same second would pass
        try:
            os.remove(importlib.util.cache_from_source(path))
        except FileNotFoundError:
            pass
        if module in sys.modules:
            importlib.reload(sys.modules[module])
        else:
            importlib.import_module(module)
    elif name.endswith((".zip", ".egg", ".whl")) and path not in sys.path:
        sys.path.insert(0, path)
    return path


def _write_whole(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path`` whole or not at all, for any reader (a reload of
    a half-written module keeps the old names)."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)
    return str(path)


def _upload_directory(worker: Any) -> Path:
    """A directory per process: workers on one host must not rewrite a file
    while another imports it."""
    base = getattr(worker, "directory", None) or tempfile.gettempdir()
    path = Path(base) / "uploads" / str(os.getpid())
    path.mkdir(parents=True, exist_ok=True)
    return path


class UploadFile(WorkerPlugin):
    """Put a file on every worker (now and as they join), importable there:
    a ``.py`` is imported (reloaded if it was), a ``.zip``/``.egg``/``.whl``
    goes on ``sys.path``."""

    def __init__(self, filepath: str | os.PathLike[str], load: bool = True) -> None:
        path = Path(filepath)
        self.filename = path.name
        self.data = path.read_bytes()
        self.load = load
        self.name = f"upload-file-{self.filename}"

    def setup(self, worker: Any) -> None:
        directory = str(_upload_directory(worker))
        if self.load:
            install_file(self.filename, self.data, directory)
        else:
            _write_whole(Path(directory) / self.filename, self.data)


class UploadDirectory(WorkerPlugin):
    """Copy a local directory to every worker; ``update_path=True`` puts its
    parent on ``sys.path`` (so a package directory becomes importable)."""

    def __init__(self, path: str | os.PathLike[str], update_path: bool = False,
                 skip_words: tuple[str, ...] = (".git", ".github", ".pytest_cache", "__pycache__",
                                                ".ipynb_checkpoints")) -> None:
        root = Path(path).resolve()
        self.dirname = root.name
        self.update_path = update_path
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(root.rglob("*")):
                relative = file.relative_to(root)
                if file.is_file() and not any(w in relative.parts for w in skip_words):
                    archive.write(file, str(Path(self.dirname) / relative))
        self.data = buffer.getvalue()
        self.name = f"upload-directory-{self.dirname}"

    def setup(self, worker: Any) -> None:
        target = _upload_directory(worker)
        with zipfile.ZipFile(io.BytesIO(self.data)) as archive:
            archive.extractall(target)
        if self.update_path and str(target) not in sys.path:
            sys.path.insert(0, str(target))


class Environ(NannyPlugin):
    """Environment variables for the worker processes (set before they start)."""

    restart = True

    def __init__(self, environ: dict[str, Any] | None = None) -> None:
        self.environ = {str(k): str(v) for k, v in (environ or {}).items()}
        self.name = "environ"

    def setup(self, nanny: Any) -> None:
        nanny.env.update(self.environ)


__all__ = [
    "Environ",
    "InstallPlugin",
    "NannyPlugin",
    "PipInstall",
    "SchedulerPlugin",
    "UploadDirectory",
    "UploadFile",
    "WorkerPlugin",
    "call_hook",
    "plugin_kind",
    "plugin_name",
]


def call_hook(plugin: Any, hook: str, *args: Any, **kwargs: Any) -> Any:
    """``plugin.hook(*args, **kwargs)`` if it has that hook; an error is logged, not raised.

    Returns what the hook returned (a coroutine for the caller to run), or None.
    """
    method = getattr(plugin, hook, None)
    if method is None:
        return None
    try:
        result = method(*args, **kwargs)
    except Exception:  # a plugin's bug must not stop the server that runs it
        logger.exception("plugin %r failed in %s", getattr(plugin, "name", plugin), hook)
        return None
    if hasattr(result, "__await__"):
        return _logged(result, plugin, hook)
    return None


async def _logged(awaitable: Any, plugin: Any, hook: str) -> None:
    try:
        await awaitable
    except Exception:  # a plugin's bug must not stop the server that runs it
        logger.exception("plugin %r failed in %s", getattr(plugin, "name", plugin), hook)


class TransitionTap:
    """Copies a state machine's recorded transitions for plugins, only while
    one of them has a ``transition`` hook (else the record call is the story
    log's own, and plugins cost nothing per transition)."""

    __slots__ = ("pending", "record_story", "state")

    def __init__(self) -> None:
        self.pending: list[Any] = []
        self.state: Any = None
        self.record_story: Any = None

    def wire(self, state: Any, plugins: Any) -> None:
        if self.state is not state:
            self.state, self.record_story = state, state._record
        if any(hasattr(p, "transition") for p in plugins):
            state._record = self._record_both
        else:
            state._record = self.record_story
            self.pending.clear()

    def _record_both(self, entry: Any) -> None:
        self.record_story(entry)
        self.pending.append(entry)

    def take(self) -> list[Any]:
        entries, self.pending = self.pending, []
        return entries


async def start_plugin(pickled: Any, name: str, hook: str, *args: Any,
                       **kwargs: Any) -> tuple[Any, dict[str, Any] | None]:
    """Unpickle a plugin and run its first hook (``start`` or ``setup``):
    ``(plugin, None)``, or ``(None, answer)`` with what it raised, pickled."""
    from .protocol import deserialize
    from .protocol._call import raised

    try:
        plugin = deserialize(pickled)
        method = getattr(plugin, hook, None)
        result: Any = method(*args, **kwargs) if method is not None else None
        if hasattr(result, "__await__"):
            await result
    except Exception as exc:  # noqa: BLE001 - the registering client re-raises it
        logger.warning("plugin %r failed in %s: %r", name, hook, exc)
        return None, raised(exc)
    return plugin, None
