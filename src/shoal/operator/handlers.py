"""The kopf handlers of ShoalCluster, one per concern.

- ``cluster_created``: validate, create the scheduler Service + Deployment and
  the first workers (idempotent: children have fixed names or are counted);
- ``cluster_spec_changed``: validate, update the scheduler, roll workers;
- ``cluster_observed`` (every event, including the initial listing after an
  operator restart): keep one :class:`ClusterLoop` per cluster, which
  replaces dead workers, follows ``kubectl scale``, autoscales, enforces
  ``idleTimeout`` and writes status, every ``reconcile_interval`` or as soon
  as something is nudged;
- ``worker_pod_changed``: nudge the loop of the pod's cluster.

Every round starts with the cluster's credentials (``credentials.py``): the
Secrets are made or rotated first, so that the scheduler and the workers
created or rolled after them always find the ones they are built for.

None of these handlers needs a finalizer (no on.delete, no kopf daemons or
timers): Kubernetes' garbage collector deletes the children through their
ownerReferences, so deleting a ShoalCluster never waits for the operator.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Any

import kopf

from shoal.cluster.kube import api_path
from shoal.comm import wait_event
from shoal.operator import builders, credentials, kubeops, metrics, reconcile, scheduler_api
from shoal.operator.autoscale import Autoscaler, split_target
from shoal.operator.crds import API_VERSION, CLUSTER_PLURAL, GROUP, VERSION
from shoal.operator.spec import ClusterSpec, InvalidSpec, parse_cluster_spec
from shoal.operator.status import (
    condition_status,
    now_iso,
    parse_iso,
    phase_of,
    set_condition,
    write_status,
)

logger = logging.getLogger("shoal.operator")
ACTIVITY_STEP = 60.0  # status.lastActivity is refreshed at most this often
INSECURE_MESSAGE = (
    "spec.security.tls is false: the scheduler and the workers talk plain tcp:// and accept "
    "anyone who can reach them; any such pod can run code on the workers and read every "
    "result. Remove spec.security.tls (or set it true) to turn mutual TLS back on.")
autoscaler = Autoscaler()
STOP_TIMEOUT = 5.0  # a reconcile loop's stop: it is cancelled, and waited for this long


class ClusterLoop:
    """The periodic reconcile of one ShoalCluster (a plain asyncio task).

    It belongs to the operator run (event loop) that made it.  It waits between
    rounds through ``comm.wait_event``, which never loses a cancellation, so
    :meth:`stop` ends it; the ``stopped`` flag also ends it at its next round,
    and the stop waits at most ``STOP_TIMEOUT``.
    """

    def __init__(self, key: tuple[str, str]) -> None:
        self.namespace, self.name = key
        self.body: dict[str, Any] = {}
        self.lock = asyncio.Lock()
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.stopped = False
        self.owner = asyncio.get_running_loop()

    @property
    def phase(self) -> str:
        return str((self.body.get("status") or {}).get("phase") or "Pending")

    def start(self) -> None:
        if not self.stopped and (self.task is None or self.task.done()):
            self.task = self.owner.create_task(self._run(), name=f"loop of {self.namespace}/"
                                                                  f"{self.name}")

    def nudge(self) -> None:
        self.wakeup.set()

    async def stop(self) -> None:
        """Cancel the loop and wait until it has ended (at most ``STOP_TIMEOUT``)."""
        self.stopped = True
        task = self.task
        if task is None:
            return
        task.cancel()
        await asyncio.wait({task}, timeout=STOP_TIMEOUT)
        if not task.done():
            logger.error(f"{self.namespace}/{self.name}: the reconcile loop did not stop "
                         f"within {STOP_TIMEOUT}s; it ends at its next round")
            return
        if not task.cancelled() and task.exception() is not None:
            logger.error(f"{self.namespace}/{self.name}: the reconcile loop failed",
                         exc_info=task.exception())

    async def _run(self) -> None:
        while not self.stopped:
            self.wakeup.clear()
            delay: float | None = metrics.config.reconcile_interval
            try:
                async with self.lock:
                    await tick(self.body)
            except kopf.PermanentError as exc:
                # A bad spec stays bad until it is edited: wait for the nudge.
                logger.warning(f"{self.namespace}/{self.name}: {exc}")
                delay = None
            except kopf.TemporaryError as exc:
                metrics.ERRORS.labels("loop", type(exc).__name__).inc()
                logger.warning(f"{self.namespace}/{self.name}: {exc}")
                delay = min(metrics.config.reconcile_interval, metrics.config.error_delay)
            except Exception:  # the loop must outlive any one bad round
                metrics.ERRORS.labels("loop", "unexpected").inc()
                logger.exception(f"{self.namespace}/{self.name}: reconcile failed")
                delay = metrics.config.error_delay
            if not self.stopped:  # until nudged, or the delay (see comm.wait_event)
                await wait_event(self.wakeup, delay)


def plain(value: Any) -> Any:
    """A kopf body (nested mapping views) as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


loops: dict[tuple[str, str], ClusterLoop] = {}
metrics.watch_phases(lambda: [loop.phase for loop in list(loops.values())])


def loop_for(namespace: str, name: str) -> ClusterLoop:
    """The cluster's loop in this operator run; one of another run (event loop) is
    never reused: it is bound to that run, which has stopped or is stopping."""
    key = (namespace, name)
    loop = loops.get(key)
    if loop is None or loop.owner is not asyncio.get_running_loop():
        loop = loops[key] = ClusterLoop(key)
    return loop


async def refuse(body: Mapping[str, Any], reason: str, message: str) -> None:
    """Record a spec problem: SpecValid=False, phase Failed and one warning event."""
    meta = body["metadata"]
    status = body.get("status") or {}
    if status.get("phase") == "Failed" and status.get("message") == message:
        return  # already reported
    conditions = set_condition(status.get("conditions"), "SpecValid", False, reason, message)
    await write_status(API_VERSION, CLUSTER_PLURAL, meta["namespace"], meta["name"],
                       {"phase": "Failed", "message": message, "conditions": conditions})
    kopf.warn(plain(body), reason=reason, message=message)


async def validate(body: Mapping[str, Any], handler: str) -> ClusterSpec:
    """The parsed spec, or SpecValid=False + a warning event + PermanentError."""
    meta = body["metadata"]
    try:
        return parse_cluster_spec(meta["name"], meta["namespace"], body.get("spec"))
    except InvalidSpec as exc:
        metrics.ERRORS.labels(handler, "InvalidSpec").inc()
        await refuse(body, "InvalidSpec", str(exc))
        raise kopf.PermanentError(f"invalid spec: {exc}") from exc


def initial_desired(spec: ClusterSpec, status: Mapping[str, Any]) -> dict[str, int]:
    """Desired workers per group: the spec, or for autoscaled groups the last decision."""
    known = status.get("workerGroups") or {}
    result = {}
    for group in spec.groups:
        previous = (known.get(group.name) or {}).get("desired")
        base = previous if group.autoscaled and isinstance(previous, int) else group.replicas
        result[group.name] = group.clamp(base)
    return result


async def autoscaled_desired(spec: ClusterSpec, uid: str, desired: dict[str, int],
                             ready: bool) -> dict[str, int]:
    if not ready or not any(g.autoscaled for g in spec.groups):
        return desired
    target = await scheduler_api.adaptive_target(spec.name, spec.namespace)
    fixed = {g.name: desired[g.name] for g in spec.groups if not g.autoscaled}
    autoscaler.window = metrics.config.scale_down_window
    wanted = autoscaler.desired(uid, time.time(), split_target(target, spec.groups, fixed),
                                current=desired)
    return {**desired, **wanted}


async def check_idle(spec: ClusterSpec, ready: bool, status: dict[str, Any]) -> bool:
    """Record idleness in ``status``; True when the cluster was deleted for idling."""
    if spec.idle_timeout <= 0 or not ready:
        return False
    try:
        idle, since = await scheduler_api.idle(spec.name, spec.namespace)
    except scheduler_api.SchedulerUnavailable as exc:
        logger.warning(f"{spec.namespace}/{spec.name}: idleness unknown: {exc}")
        return False
    if not idle or since is None:
        last = status.get("lastActivity")
        if status.get("idleSince") or not last or time.time() - parse_iso(last) > ACTIVITY_STEP:
            status["lastActivity"] = now_iso()
        status["idleSince"] = None
        return False
    status["idleSince"] = now_iso(since)
    if time.time() - since < spec.idle_timeout:
        return False
    logger.info(f"{spec.namespace}/{spec.name}: idle for {spec.idle_timeout}s, deleting it")
    await kubeops.delete(api_path(API_VERSION, CLUSTER_PLURAL, spec.namespace, spec.name))
    return True


async def tick(body: Mapping[str, Any]) -> None:
    """One full reconcile of a cluster; the body of ClusterLoop and the handlers."""
    if not body or body.get("metadata", {}).get("deletionTimestamp"):
        return
    metrics.RECONCILES.labels("reconcile").inc()
    old = dict(body.get("status") or {})
    spec = await validate(body, "reconcile")
    try:
        creds = await credentials.ensure(spec, body)
        spec = dataclasses.replace(spec, credentials=creds.fingerprint)
        scheduler_api.use_credentials(spec.name, spec.namespace, scheduler_api.Credentials(
            creds.token, ca_pem=creds.ca_pem if spec.security.tls else None))
        await reconcile.ensure_scheduler(spec, body)
        ready = await reconcile.scheduler_ready(spec)
        desired = initial_desired(spec, old)
        try:
            desired = await autoscaled_desired(spec, body["metadata"].get("uid", ""),
                                               desired, ready)
        except scheduler_api.SchedulerUnavailable as exc:
            logger.warning(f"{spec.namespace}/{spec.name}: keeping the worker counts: {exc}")
        groups = await reconcile.reconcile_workers(spec, body, desired, logger)
    except kubeops.ObjectRefused as exc:
        await refuse(body, "ObjectRefused", f"Kubernetes refused a child object: {exc}")
        raise
    status = summarise(spec, old, groups, ready, creds)
    if await check_idle(spec, ready, status):
        return
    if any(status.get(k) != old.get(k) for k in status):
        await write_status(API_VERSION, CLUSTER_PLURAL, spec.namespace, spec.name, status)
    warn_if_insecure(spec, body, old)


_warned: set[str] = set()  # uids of the clusters warned about since they opted out


def warn_if_insecure(spec: ClusterSpec, body: Mapping[str, Any], old: Mapping[str, Any]) -> None:
    """One warning event per opt-out, not one per round: remembered here, and in the
    Secured=False condition across operator restarts (``body`` may lag a round)."""
    uid = str(body["metadata"].get("uid", ""))
    if spec.security.tls:
        _warned.discard(uid)
        return
    if uid in _warned or condition_status(old.get("conditions"), "Secured") == "False":
        _warned.add(uid)
        return
    _warned.add(uid)
    kopf.warn(plain(body), reason="InsecureCluster", message=INSECURE_MESSAGE)


def summarise(spec: ClusterSpec, old: Mapping[str, Any], groups: dict[str, dict[str, int]],
              ready: bool, creds: credentials.Credentials) -> dict[str, Any]:
    conditions = set_condition(old.get("conditions"), "SpecValid", True, "Valid")
    if spec.security.tls:
        conditions = set_condition(conditions, "Secured", True, "MutualTLS",
                                   f"mutual TLS with the cluster's own CA {creds.fingerprint}; "
                                   f"client credentials in Secret "
                                   f"{builders.client_secret_name(spec.name)}")
    else:
        conditions = set_condition(conditions, "Secured", False, "TLSDisabled",
                                   INSECURE_MESSAGE)
    conditions = set_condition(conditions, "SchedulerReady", ready,
                               "DeploymentReady" if ready else "DeploymentNotReady")
    all_ready = all(g["ready"] >= g["desired"] for g in groups.values())
    conditions = set_condition(conditions, "WorkersReady", all_ready,
                               "AllReady" if all_ready else "Waiting",
                               ", ".join(f"{n}: {g['ready']}/{g['desired']}"
                                         for n, g in groups.items()))
    first = spec.groups[0].name
    return {
        "phase": phase_of(conditions),
        "message": None if ready else "waiting for the scheduler",
        "conditions": conditions,
        "schedulerAddress": builders.scheduler_address(spec.name, spec.namespace,
                                                       spec.security.tls),
        "dashboardAddress": builders.dashboard_address(spec.name, spec.namespace,
                                                       spec.security.tls),
        "security": {"tls": spec.security.tls,
                     "clientSecret": builders.client_secret_name(spec.name),
                     "credentials": creds.fingerprint,
                     "notAfter": now_iso(creds.not_after.timestamp())},
        "workerGroups": groups,
        "replicas": groups[first]["desired"],
        "selector": builders.worker_selector(spec.name, first),
        "desiredWorkers": sum(g["desired"] for g in groups.values()),
        "readyWorkers": sum(g["ready"] for g in groups.values()),
        "lastActivity": old.get("lastActivity") or now_iso(),
        "idleSince": old.get("idleSince"),
    }


@kopf.on.create(GROUP, VERSION, CLUSTER_PLURAL)
async def cluster_created(body: kopf.Body, name: str, namespace: str | None,
                          **_: Any) -> None:
    metrics.RECONCILES.labels("create").inc()
    loop = loop_for(namespace or "", name)
    loop.body = plain(body)
    async with loop.lock:
        await tick(loop.body)
    loop.start()


@kopf.on.update(GROUP, VERSION, CLUSTER_PLURAL, field="spec")
async def cluster_spec_changed(body: kopf.Body, name: str, namespace: str | None,
                               **_: Any) -> None:
    metrics.RECONCILES.labels("update").inc()
    loop = loop_for(namespace or "", name)
    loop.body = plain(body)
    try:
        async with loop.lock:
            await tick(loop.body)
    finally:
        loop.start()
        loop.nudge()  # the loop may be parked on an earlier, invalid spec


@kopf.on.event(GROUP, VERSION, CLUSTER_PLURAL)
async def cluster_observed(event: kopf.RawEvent, name: str, namespace: str | None,
                           **_: Any) -> None:
    key = (namespace or "", name)
    if event.get("type") == "DELETED":
        gone = loops.pop(key, None)
        scheduler_api.use_credentials(name, namespace or "", None)
        if gone is not None:
            autoscaler.forget(gone.body.get("metadata", {}).get("uid", ""))
            _warned.discard(gone.body.get("metadata", {}).get("uid", ""))
            if gone.owner is asyncio.get_running_loop():
                await gone.stop()
        return
    loop = loop_for(*key)
    first = not loop.body
    loop.body = plain(event["object"])
    loop.start()
    if first:
        loop.nudge()


@kopf.on.event("", "v1", "pods", labels={builders.LABEL_COMPONENT: "worker"})
async def worker_pod_changed(labels: Mapping[str, str], namespace: str | None,
                             **_: Any) -> None:
    loop = loops.get((namespace or "", labels.get(builders.LABEL_CLUSTER, "")))
    if loop is not None and loop.owner is asyncio.get_running_loop():
        loop.nudge()


@kopf.on.cleanup()
async def stop_loops(**_: Any) -> None:
    """Stop this run's loops (those of another run are that run's to stop)."""
    current = asyncio.get_running_loop()
    for key, loop in list(loops.items()):
        if loop.owner is current:
            del loops[key]
            await loop.stop()
