"""The kopf handlers of ShoalJob: a runner pod with a cluster made for it.

The job's life is driven by events only, no timers and no finalizers:

1. ``job_created`` validates the cluster spec and creates the ShoalCluster
   ``JOB-cluster``, owned by the job (status Pending);
2. every event of that cluster or of the runner pod calls :func:`advance`,
   which starts the runner once the cluster is Running (status Running,
   startTime), and when the runner pod has finished records Succeeded or
   Failed with endTime and a message, then deletes the cluster.

:func:`advance` re-reads everything and is serialised per job, so replayed
events (an operator restart lists every object again) change nothing.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Mapping
from typing import Any, cast

import kopf

from shoal.cluster.kube import api_path
from shoal.operator import builders, kubeops, metrics
from shoal.operator.crds import (
    API_VERSION,
    CLUSTER_KIND,
    CLUSTER_PLURAL,
    GROUP,
    JOB_PLURAL,
    VERSION,
)
from shoal.operator.spec import InvalidSpec, parse_cluster_spec
from shoal.operator.status import now_iso, write_status

logger = logging.getLogger("shoal.operator")
TERMINAL = ("Succeeded", "Failed")
#: Per event loop (an operator run), a lock per job: its handlers advance it one at
#: a time.  Not one dict for the process: a lock of a run that has stopped (still
#: held by it, or bound to its loop) must never be waited for by the next run.
_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                  dict[tuple[str, str], asyncio.Lock]] = weakref.WeakKeyDictionary()


def _job_locks() -> dict[tuple[str, str], asyncio.Lock]:
    return _locks.setdefault(asyncio.get_running_loop(), {})


def cluster_name(job: str) -> str:
    return f"{job}-cluster"


def job_path(namespace: str, job: str) -> str:
    return api_path(API_VERSION, JOB_PLURAL, namespace, job)


async def set_job_status(namespace: str, job: str, **status: Any) -> None:
    await write_status(API_VERSION, JOB_PLURAL, namespace, job, status)


@kopf.on.create(GROUP, VERSION, JOB_PLURAL)
async def job_created(body: kopf.Body, spec: kopf.Spec, name: str, namespace: str | None,
                      **_: Any) -> None:
    metrics.RECONCILES.labels("job-create").inc()
    namespace = namespace or ""
    cluster_spec = dict(spec.get("cluster") or {})
    try:
        if not isinstance(spec.get("runner"), Mapping):
            raise InvalidSpec("spec.runner: a runner (image, command) is required")
        parse_cluster_spec(cluster_name(name), namespace, cluster_spec)
    except InvalidSpec as exc:
        metrics.ERRORS.labels("job-create", "InvalidSpec").inc()
        await set_job_status(namespace, name, phase="Failed", message=str(exc),
                             endTime=now_iso())
        kopf.warn(body, reason="InvalidSpec", message=str(exc))
        raise kopf.PermanentError(f"invalid spec: {exc}") from exc
    cluster = {"apiVersion": API_VERSION, "kind": CLUSTER_KIND,
               "metadata": {"name": cluster_name(name), "namespace": namespace,
                            "labels": {builders.LABEL_JOB: name}},
               "spec": cluster_spec}
    kopf.adopt(cluster, owner=body)
    await kubeops.create(cluster)
    await set_job_status(namespace, name, phase="Pending", clusterName=cluster_name(name),
                         message="waiting for the cluster")


def runner_outcome(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """(phase, message) once the runner pod has finished, else None."""
    status = pod.get("status") or {}
    phase = status.get("phase")
    if phase not in TERMINAL:
        return None
    for container in status.get("containerStatuses") or []:
        done = (container.get("state") or {}).get("terminated")
        if done:
            return phase, (f"runner exited with code {done.get('exitCode')}"
                           f" ({done.get('reason', '')})")
    return phase, f"runner {phase.lower()}"


async def start_runner(job: Mapping[str, Any], cluster: Mapping[str, Any]) -> None:
    meta = job["metadata"]
    spec = parse_cluster_spec(cluster["metadata"]["name"], meta["namespace"], cluster["spec"])
    pod = builders.runner_pod(meta["name"], meta["namespace"], spec, job["spec"]["runner"])
    kopf.adopt(pod, owner=kopf.Body(cast(kopf.RawBody, dict(job))))
    await kubeops.create(pod)
    await set_job_status(meta["namespace"], meta["name"], phase="Running",
                         startTime=now_iso(), runnerPod=pod["metadata"]["name"],
                         message="runner started")


async def finish(namespace: str, job: str, phase: str, message: str) -> None:
    await set_job_status(namespace, job, phase=phase, message=message, endTime=now_iso())
    await kubeops.delete(api_path(API_VERSION, CLUSTER_PLURAL, namespace, cluster_name(job)))


async def advance(namespace: str, job_name: str) -> None:
    """Move a job one step forward from what the API says now."""
    job = await kubeops.get(job_path(namespace, job_name))
    if job is None or (job.get("status") or {}).get("phase", "Pending") in TERMINAL:
        return
    if not (job.get("status") or {}).get("clusterName"):
        return  # job_created has not run (or failed) yet
    metrics.RECONCILES.labels("job-advance").inc()
    runner = await kubeops.get(api_path("v1", "pods", namespace, f"{job_name}-runner"))
    if runner is not None:
        outcome = runner_outcome(runner)
        if outcome is not None:
            await finish(namespace, job_name, *outcome)
        return
    cluster = await kubeops.get(api_path(API_VERSION, CLUSTER_PLURAL, namespace,
                                         cluster_name(job_name)))
    phase = ((cluster or {}).get("status") or {}).get("phase")
    if cluster is None or phase == "Failed":
        reason = "was deleted" if cluster is None else "failed"
        await finish(namespace, job_name, "Failed", f"the job's cluster {reason}")
    elif phase == "Running":
        await start_runner(job, cluster)


async def advance_serialised(namespace: str, job: str) -> None:
    locks = _job_locks()
    lock = locks.get((namespace, job))
    if lock is None:
        lock = locks[namespace, job] = asyncio.Lock()
    async with lock:
        try:
            await advance(namespace, job)
        except kopf.TemporaryError as exc:
            metrics.ERRORS.labels("job-advance", "TemporaryError").inc()
            logger.warning(f"job {namespace}/{job}: {exc}")


@kopf.on.event(GROUP, VERSION, CLUSTER_PLURAL, labels={builders.LABEL_JOB: kopf.PRESENT})
async def job_cluster_changed(labels: Mapping[str, str], namespace: str | None,
                              **_: Any) -> None:
    await advance_serialised(namespace or "", labels[builders.LABEL_JOB])


@kopf.on.event("", "v1", "pods", labels={builders.LABEL_JOB: kopf.PRESENT,
                                         builders.LABEL_COMPONENT: "runner"})
async def runner_pod_changed(labels: Mapping[str, str], namespace: str | None,
                             **_: Any) -> None:
    await advance_serialised(namespace or "", labels[builders.LABEL_JOB])


@kopf.on.event(GROUP, VERSION, JOB_PLURAL)
async def job_observed(event: kopf.RawEvent, name: str, namespace: str | None,
                       **_: Any) -> None:
    if event.get("type") == "DELETED":
        _job_locks().pop((namespace or "", name), None)
        return
    await advance_serialised(namespace or "", name)
