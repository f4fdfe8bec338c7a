"""The operator test bench: kmock's Kubernetes emulator, the real kopf
operator, a simulated kubelet, and a scheduler HTTP test double.

Everything asynchronous runs in one event loop on a background thread (the
``Harness``), so tests stay synchronous and talk to the emulator over HTTP
the way kubectl would, through :class:`shoal.cluster.kube.KubeApi`.

The emulator stores objects but runs no controllers, so two small parts of
Kubernetes are played here, openly: a kubelet (marks pods Running/Ready and
deployments ready; a retired worker's pod exits) and, on request, the
garbage collector (deletes objects whose owner is gone).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import copy
import datetime
import itertools
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, ClassVar

import kmock
import kubernetes_validate
import tornado.httpserver
import tornado.netutil
import tornado.web

from shoal.cluster.kube import API_VERSION, KubeApi, KubeApiError, api_path
from shoal.operator import builders, cli, kubeops, scheduler_api
from shoal.operator.crds import all_crds
from tests import polling

NAMESPACE = "team-a"
OTHER_NAMESPACE = "team-b"
VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}
TIMEOUT = 15.0


VALIDATED = ("Pod", "Service", "Deployment", "Secret", "NetworkPolicy")
K8S_VERSION = "1.33.0"


def invalid(obj: dict[str, Any]) -> str | None:
    """Why the upstream schema rejects ``obj``, or None."""
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return f"{obj['kind']} {obj.get('metadata', {}).get('name')} is invalid: {exc}"
    return None


class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator plus what the API server adds: uid, timestamps, resourceVersion."""

    _versions = itertools.count(1)
    watches: ClassVar[collections.Counter[str]] = collections.Counter()  # by plural

    crds_installed = True

    async def _handle(self, request: Any) -> Any:
        if request.resource is not None and request.resource.group == "shoal.dev" \
                and not self.crds_installed:
            return await self._render_error(kmock.KubernetesResourceNotFoundError())
        if request.resource is not None and request.action == kmock.action.WATCH:
            self.watches[request.resource.plural] += 1
        writes = (kmock.action.CREATE, kmock.action.UPDATE)
        if request.resource is not None and request.action in writes \
                and isinstance(request.data, dict):
            if request.action == kmock.action.CREATE and request.data.get("kind") in VALIDATED:
                problem = invalid(request.data)
                if problem:  # the API server refuses what its schema does not allow
                    return await self._render_error(kmock.KubernetesError(
                        status=422, reason="Invalid", message=problem))
            meta = request.data.setdefault("metadata", {})
            meta["resourceVersion"] = str(next(self._versions))
            if request.action == kmock.action.CREATE:
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", datetime.datetime.now(datetime.UTC)
                                .strftime("%Y-%m-%dT%H:%M:%SZ"))
                meta.setdefault("generation", 1)
        return await super()._handle(request)


def declare_resources(emulator: kmock.KubernetesEmulator, with_crds: bool = True) -> None:
    info = kmock.ResourceInfo
    emulator.resources["v1/namespaces"] = info(kind="Namespace", namespaced=False, verbs=VERBS)
    emulator.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = info(
        kind="CustomResourceDefinition", namespaced=False, verbs=VERBS)
    emulator.resources["v1/pods"] = info(kind="Pod", namespaced=True, verbs=VERBS,
                                         subresources={"status", "log"})
    emulator.resources["v1/services"] = info(kind="Service", namespaced=True, verbs=VERBS)
    emulator.resources["v1/events"] = info(kind="Event", namespaced=True, verbs=VERBS)
    emulator.resources["v1/secrets"] = info(kind="Secret", namespaced=True, verbs=VERBS)
    emulator.resources["networking.k8s.io/v1/networkpolicies"] = info(
        kind="NetworkPolicy", namespaced=True, verbs=VERBS)
    emulator.resources["apps/v1/deployments"] = info(kind="Deployment", namespaced=True,
                                                     verbs=VERBS, subresources={"status"})
    if with_crds:
        emulator.resources["shoal.dev/v1alpha1/shoalclusters"] = info(
            kind="ShoalCluster", singular="shoalcluster", namespaced=True, verbs=VERBS,
            subresources={"status", "scale"})
        emulator.resources["shoal.dev/v1alpha1/shoaljobs"] = info(
            kind="ShoalJob", singular="shoaljob", namespaced=True, verbs=VERBS,
            subresources={"status"})


class FakeScheduler:
    """A test double of the scheduler's HTTP API (docs/http-api.md) with bookkeeping.

    Like the real scheduler, it answers a mutation without the bearer token
    ``expected_token()`` returns (the cluster's token Secret) with 401; when
    that is None (no Secret), it is an open scheduler.
    """

    def __init__(self) -> None:
        self.expected_token: Callable[[], str | None] = lambda: None
        self.refused: list[str] = []  # paths of requests refused for their token
        self.tokens: list[str | None] = []  # the token each mutation came with
        self.workers: dict[str, dict[str, Any]] = {}
        self.retired: list[str] = []
        self.target = 1
        self.idle_since: float | None = None
        self.requests: list[tuple[str, str, Any]] = []
        self.answers: list[tuple[float, int]] = []  # (when, adaptive target answered)
        self.url = ""
        self._server: tornado.httpserver.HTTPServer | None = None

    def connect(self, name: str, memory: int = 0) -> None:
        if name not in self.workers and name not in self.retired:
            self.workers[name] = {"address": f"tcp://10.0.0.{len(self.workers) + 1}:4000",
                                  "name": name, "nthreads": 1, "memory_limit": 0,
                                  "memory": memory, "executing": 0, "ready": 0,
                                  "in_memory": 0, "status": "running", "last_seen": time.time()}

    def retire(self, body: dict[str, Any]) -> list[dict[str, str]]:
        if "n" in body:
            chosen = sorted(self.workers.values(), key=lambda w: (w["memory"], w["name"]))
            names = [w["name"] for w in chosen[: int(body["n"])]]
        else:
            names = [n for n in body["workers"] if n in self.workers]
        out = [{"address": self.workers[n]["address"], "name": n} for n in names]
        for name in names:
            del self.workers[name]
            self.retired.append(name)
        return out

    def app(self) -> tornado.web.Application:
        double = self

        class Handler(tornado.web.RequestHandler):
            def get(self, path: str) -> None:
                double.requests.append(("GET", path, None))
                if path == "health":
                    self.write("ok")
                elif path == "api/v1/workers":
                    self.write({"workers": list(double.workers.values())})
                elif path == "api/v1/adaptive_target":
                    double.answers.append((time.monotonic(), double.target))
                    self.write({"workers": double.target})
                elif path == "api/v1/idle":
                    self.write({"idle": double.idle_since is not None,
                                "idle_since": double.idle_since})
                else:
                    self.send_error(404)

            def post(self, path: str) -> None:
                import json

                body = json.loads(self.request.body or b"{}")
                double.requests.append(("POST", path, body))
                given = self.request.headers.get("Authorization", "")
                token = given.removeprefix("Bearer ") if given.startswith("Bearer ") else None
                double.tokens.append(token)
                expected = double.expected_token()
                if expected is not None and token != expected:
                    double.refused.append(path)
                    self.send_error(401)
                    return
                if path != "api/v1/retire_workers":
                    self.send_error(404)
                    return
                self.write({"retired": double.retire(body)})

        return tornado.web.Application([(r"/(.*)", Handler)])

    async def start(self) -> None:
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        self._server = tornado.httpserver.HTTPServer(self.app())
        self._server.add_sockets(sockets)
        self.url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            await self._server.close_all_connections()


class Harness:
    """The background event loop with the emulator, the operator and the doubles."""

    def __init__(self, with_crds: bool = True) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.schedulers: dict[str, FakeScheduler] = {}
        self._operator: OperatorThread | None = None
        self._stack: Any = None
        self.url = self.run(self._start_emulator(with_crds))
        self.api = KubeApi.for_host(self.url)
        if with_crds:
            for crd in all_crds().values():
                self.api.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
        kubeops.configure(KubeApi.for_host(self.url))
        scheduler_api.set_url_resolver(self._scheduler_url)
        scheduler_api.set_credentials_resolver(plain_http_credentials)
        self.kubelet = Kubelet(self)

    def run(self, coro: Any, timeout: float = TIMEOUT) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start_emulator(self, with_crds: bool) -> str:
        import contextlib

        self._stack = contextlib.AsyncExitStack()
        self.emulator = await self._stack.enter_async_context(Emulator())
        server = await self._stack.enter_async_context(kmock.Server(self.emulator))
        declare_resources(self.emulator, with_crds)
        self.emulator.crds_installed = with_crds
        return str(server.url).rstrip("/")

    def _scheduler_url(self, cluster: str, namespace: str) -> str:
        double = self.schedulers.get(cluster)
        return double.url if double is not None else "http://127.0.0.1:9"

    def scheduler(self, cluster: str, namespace: str = NAMESPACE) -> FakeScheduler:
        if cluster not in self.schedulers:
            double = FakeScheduler()
            double.expected_token = lambda: self.secret_value(
                builders.token_secret_name(cluster), "token", namespace)
            self.run(double.start())
            self.schedulers[cluster] = double
        return self.schedulers[cluster]

    def secret_value(self, name: str, key: str, namespace: str = NAMESPACE) -> str | None:
        """One value of a stored Secret, decoded; None when there is no such Secret."""
        # Also called by the doubles, which run in the harness loop itself.
        stored = (self._stored("secrets", namespace) if threading.current_thread() is self.thread
                  else self.objects("secrets", namespace))
        found = next((o for o in stored if o["metadata"]["name"] == name), None)
        if found is None:
            return None
        return base64.b64decode(found["data"][key]).decode()

    def start_operator(self, *args: str) -> None:
        """Run the operator like ``shoal operator ARGS`` in its own thread and loop."""
        argv = list(args) or ["--namespace", NAMESPACE, "--namespace", OTHER_NAMESPACE]
        before = self.emulator.watches["shoalclusters"]
        self._operator = OperatorThread([*argv, "--metrics-port", "0", "--health-port", "0"])
        # Started means watching: stopping kopf in the middle of its discovery stalls it.
        wait_for(lambda: self.emulator.watches["shoalclusters"] > before,
                 message="the operator to watch ShoalClusters")

    def stop_operator(self) -> None:
        if self._operator is not None:
            self._operator.stop()
            self._operator = None

    def close(self) -> None:
        try:
            self.kubelet.stop()
            self.stop_operator()
        finally:  # even when the operator did not stop: the next test starts clean
            self._operator = None
            for double in self.schedulers.values():
                self.run(double.stop())
            self.run(self._stack.aclose())
            kubeops.configure(None)
            scheduler_api.set_url_resolver(None)
            scheduler_api.set_credentials_resolver(None)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(TIMEOUT)
            self.loop.close()

    # -- kubectl-like helpers -------------------------------------------------------------

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        namespace = obj["metadata"].setdefault("namespace", NAMESPACE)
        plural = "shoalclusters" if obj["kind"] == "ShoalCluster" else "shoaljobs"
        return dict(self.api.create(api_path(API_VERSION, plural, namespace), obj))

    def objects(self, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Stored objects, read from the emulator's memory (HTTP reads cost CPU in kmock)."""
        return list(self.run(self._objects(plural, namespace)))

    async def _objects(self, plural: str, namespace: str | None) -> list[dict[str, Any]]:
        return self._stored(plural, namespace)

    def _stored(self, plural: str, namespace: str | None) -> list[dict[str, Any]]:
        """The emulator's objects; call in the harness loop's thread only."""
        return [copy.deepcopy(obj.raw) for (resource, ns, _), obj in self.emulator.objects.items()
                if resource.plural == plural and namespace in (None, ns) and not obj.deleted]

    def get(self, plural: str, name: str, namespace: str = NAMESPACE,
            api_version: str = API_VERSION) -> dict[str, Any] | None:
        del api_version  # plurals are unique in this emulator
        found = [o for o in self.objects(plural, namespace) if o["metadata"]["name"] == name]
        return found[0] if found else None

    def pods(self, cluster: str, component: str = "worker",
             namespace: str = NAMESPACE) -> list[dict[str, Any]]:
        return [p for p in self.objects("pods", namespace)
                if p["metadata"].get("labels", {}).get(builders.LABEL_CLUSTER) == cluster
                and p["metadata"]["labels"].get(builders.LABEL_COMPONENT) == component]

    def all_objects(self) -> list[dict[str, Any]]:
        return [obj for plural in ("pods", "services", "deployments", "shoalclusters", "secrets",
                                   "networkpolicies")
                for obj in self.objects(plural)]

    def collect_garbage(self) -> None:
        """Play Kubernetes' garbage collector: delete objects whose owner is gone."""
        alive = {o["metadata"]["uid"] for o in self.all_objects() + self.objects("shoaljobs")}
        for obj in self.all_objects():
            owners = obj["metadata"].get("ownerReferences") or []
            if owners and not any(o["uid"] in alive for o in owners):
                self.api.delete(kubeops.object_path(obj))


def plain_http_credentials(cluster: str, namespace: str) -> scheduler_api.Credentials:
    """The token the operator registered for a cluster, without its CA: the
    FakeScheduler doubles speak plain HTTP (test_e2e_processes runs real TLS)."""
    return scheduler_api.Credentials(scheduler_api.registered_credentials(cluster, namespace).token)


def _no_namespace_scanning(settings: Any) -> None:
    # kmock cannot serve the cluster-scoped /api/v1/namespaces collection, so the
    # namespaces given to the operator are taken as existing (kopf's restricted mode).
    settings.scanning.disabled = True


class OperatorThread:
    """One operator process, played by a thread with its own event loop."""

    def __init__(self, argv: list[str]) -> None:
        self.args = cli.build_parser().parse_args(argv)
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.stop_flag: asyncio.Event | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()
        if not self.ready.wait(TIMEOUT):
            raise AssertionError("the operator did not start")

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._run())
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc
            self.ready.set()
        finally:
            self.loop.close()

    async def _run(self) -> None:
        self.stop_flag = asyncio.Event()
        ready = asyncio.Event()
        asyncio.get_running_loop().create_task(self._signal_ready(ready))
        await cli.run_operator(self.args, stop_flag=self.stop_flag, ready_flag=ready,
                               configure=_no_namespace_scanning)

    async def _signal_ready(self, ready: asyncio.Event) -> None:
        await ready.wait()
        self.ready.set()

    def stop(self) -> None:
        if self.stop_flag is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.stop_flag.set)
        self.thread.join(TIMEOUT)
        if self.thread.is_alive():
            dump_stuck(self.loop)
            # Halt it (its tasks are dropped), so that it cannot go on acting on the
            # emulators of the tests after this one; this test fails all the same.
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(TIMEOUT)
            raise AssertionError("the operator did not stop (its threads and tasks are "
                                 "in the captured stderr)")
        if self.error is not None:
            raise self.error


def dump_stuck(loop: asyncio.AbstractEventLoop) -> None:
    """Print every thread's stack and every task of ``loop``: what a stop waits for."""
    import sys
    import traceback

    out = sys.stderr
    names = {t.ident: t.name for t in threading.enumerate()}
    print("--- the operator did not stop; the threads of this process:", file=out)
    for ident, frame in sys._current_frames().items():
        print(f"thread {names.get(ident, ident)}:", file=out)
        traceback.print_stack(frame, file=out)
    listed = threading.Event()

    def tasks() -> None:  # in the operator's own thread, so the list is consistent
        print("--- the operator loop's tasks, each with what it awaits, outermost first:",
              file=out)
        for task in asyncio.all_tasks(loop):
            print(f"{task.get_name()}:", file=out)
            for line in awaiting(task.get_coro()):
                print(f"    {line}", file=out)
        listed.set()

    loop.call_soon_threadsafe(tasks)
    if not listed.wait(TIMEOUT / 3):
        print("--- the operator loop does not run a callback: it is blocked in its thread "
              "(its stack is above)", file=out)
    out.flush()


def awaiting(coro: Any) -> list[str]:
    """The chain of awaits of a suspended coroutine, down to the future it waits for
    (a task's own stack shows its outermost frame only)."""
    lines = []
    while coro is not None:
        frame = (getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
                 or getattr(coro, "ag_frame", None))
        if frame is None:
            lines.append(f"awaits {coro!r}"[:300])
            break
        lines.append(f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        coro = (getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
                or getattr(coro, "ag_await", None))
    return lines


class Kubelet:
    """Plays the kubelet and the deployment controller in a background thread."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.api = KubeApi.for_host(harness.url)
        self.paused = False
        self.crash_scheduler = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            if not self.paused:
                try:
                    self.step()
                except KubeApiError:
                    pass  # an object vanished between list and patch; next round

    def step(self) -> None:
        for dep in self.harness.objects("deployments"):
            if not (dep.get("status") or {}).get("readyReplicas") and not self.crash_scheduler:
                self.api.patch(kubeops.object_path(dep), {"status": {"readyReplicas": 1}})
        for pod in self.harness.objects("pods"):
            self._pod(pod)

    def _pod(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        labels = meta.get("labels", {})
        double = self.harness.schedulers.get(labels.get(builders.LABEL_CLUSTER, ""))
        phase = (pod.get("status") or {}).get("phase")
        if labels.get(builders.LABEL_COMPONENT) == "worker" and double is not None:
            if meta["name"] in double.retired and phase == "Running":
                self.set_phase(pod, "Succeeded", ready=False, exit_code=0)
                return
            if phase == "Running":
                double.connect(meta["name"])
        if phase is None and labels.get(builders.LABEL_COMPONENT) != "scheduler":
            self.set_phase(pod, "Running", ready=True)

    def set_phase(self, pod: dict[str, Any], phase: str, ready: bool,
                  exit_code: int | None = None) -> None:
        status: dict[str, Any] = {"phase": phase, "conditions": [
            {"type": "Ready", "status": "True" if ready else "False"}]}
        if exit_code is not None:
            status["containerStatuses"] = [{
                "name": "c", "ready": False, "restartCount": 0, "image": "", "imageID": "",
                "state": {"terminated": {"exitCode": exit_code,
                                         "reason": "Completed" if exit_code == 0 else "Error"}},
            }]
        self.api.patch(kubeops.object_path(pod), {"status": status})


def wait_for(predicate: Callable[[], Any], timeout: float = TIMEOUT,
             message: str = "condition") -> Any:
    """The shared bounded poll, with this harness's default timeout."""
    return polling.wait_for(predicate, timeout, message)


def cluster_body(name: str, **spec: Any) -> dict[str, Any]:
    spec.setdefault("image", "shoal:test")
    spec.setdefault("workerGroups", [{"name": "default", "replicas": 2}])
    return {"apiVersion": API_VERSION, "kind": "ShoalCluster",
            "metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec}


current: dict[str, str] = {}  # the URL of the emulator the running test uses (kopf login)
