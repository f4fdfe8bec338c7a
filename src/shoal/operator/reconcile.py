"""Bringing a cluster's children to the desired state.

Called by the create and spec-change handlers and by each cluster's
periodic loop; always under the cluster's lock, and always starting from a
fresh listing of the pods, which is what makes it idempotent: a retry or an
operator restart recounts instead of recreating.

Per worker group, the pods are sorted into *dead* (their worker exited:
deleted and replaced), *stale* (built from an older spec: replaced first,
then retired through the scheduler) and *current*. Scale-down removes pods
that never became ready first (they hold nothing), and otherwise only the
workers the scheduler's ``POST /api/v1/retire_workers`` answered with.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import kopf

from shoal.cluster.kube import api_path
from shoal.operator import builders, kubeops, metrics, scheduler_api
from shoal.operator.spec import ClusterSpec, WorkerGroup
from shoal.operator.status import pod_finished, pod_ready, terminating

Pod = dict[str, Any]
logger = logging.getLogger("shoal.operator")


@dataclass
class GroupPods:
    current: list[Pod] = field(default_factory=list)
    stale: list[Pod] = field(default_factory=list)
    dead: list[Pod] = field(default_factory=list)

    @property
    def ready(self) -> int:
        return sum(pod_ready(p) for p in self.current + self.stale)


def pod_name(pod: Mapping[str, Any]) -> str:
    return str(pod["metadata"]["name"])


def _pod_path(namespace: str, name: str) -> str:
    return api_path("v1", "pods", namespace, name)


async def ensure_child(obj: dict[str, Any], owner: Mapping[str, Any]) -> None:
    """Create ``obj`` if absent; patch it when its spec hash changed."""
    kopf.adopt(obj, owner=kopf.Body(cast(kopf.RawBody, dict(owner))))
    if await kubeops.create(obj):
        return
    existing = await kubeops.get(kubeops.object_path(obj)) or {}
    wanted = obj["metadata"]["annotations"][builders.ANNOTATION_SPEC_HASH]
    if existing and existing["metadata"].get("annotations", {}).get(
            builders.ANNOTATION_SPEC_HASH) != wanted:
        await kubeops.patch(kubeops.object_path(obj),
                            {"metadata": {"annotations": obj["metadata"]["annotations"]},
                             "spec": obj["spec"]})


async def ensure_scheduler(spec: ClusterSpec, owner: Mapping[str, Any]) -> None:
    """The scheduler's Service and Deployment (and the NetworkPolicy), created or updated."""
    policy = builders.network_policy(spec)
    if spec.security.network_policy:
        await ensure_child(policy, owner)
    else:  # switched off: remove ours (never a policy of that name someone else made)
        existing = await kubeops.get(kubeops.object_path(policy)) or {}
        owners = existing.get("metadata", {}).get("ownerReferences") or []
        if any(ref.get("uid") == owner["metadata"].get("uid") for ref in owners):
            await kubeops.delete(kubeops.object_path(policy))
    for build in (builders.scheduler_service, builders.scheduler_deployment):
        await ensure_child(build(spec), owner)


async def scheduler_ready(spec: ClusterSpec) -> bool:
    path = api_path("apps/v1", "deployments", spec.namespace,
                    builders.scheduler_service_name(spec.name))
    deployment = await kubeops.get(path)
    return bool(deployment and (deployment.get("status") or {}).get("readyReplicas"))


async def list_workers(spec: ClusterSpec) -> list[Pod]:
    labels = {builders.LABEL_CLUSTER: spec.name, builders.LABEL_COMPONENT: "worker"}
    pods = await kubeops.list_labelled("v1", "pods", spec.namespace, labels)
    return [p for p in pods if not terminating(p)]


def sort_pods(spec: ClusterSpec, pods: list[Pod]) -> tuple[dict[str, GroupPods], list[Pod]]:
    """Pods by group, plus the pods of groups no longer in the spec."""
    groups = {g.name: GroupPods() for g in spec.groups}
    hashes = {g.name: builders.worker_hash(spec, g) for g in spec.groups}
    orphans = []
    for pod in pods:
        group = pod["metadata"].get("labels", {}).get(builders.LABEL_GROUP)
        if group not in groups:
            orphans.append(pod)
        elif pod_finished(pod):
            groups[group].dead.append(pod)
        elif pod["metadata"].get("annotations", {}).get(builders.ANNOTATION_SPEC_HASH) \
                != hashes[group]:
            groups[group].stale.append(pod)
        else:
            groups[group].current.append(pod)
    return groups, orphans


async def create_workers(spec: ClusterSpec, group: WorkerGroup, owner: Mapping[str, Any],
                         count: int, action: str) -> None:
    for _ in range(count):
        pod = builders.worker_pod(spec, group, builders.new_worker_name(spec.name, group.name))
        kopf.adopt(pod, owner=kopf.Body(cast(kopf.RawBody, dict(owner))))
        if await kubeops.create(pod):
            logger.info(f"{spec.namespace}/{spec.name}: {action}: created worker pod "
                        f"{pod['metadata']['name']}")
            metrics.SCALING.labels(action).inc()


async def delete_pods(spec: ClusterSpec, names: list[str], action: str) -> None:
    for name in names:
        if await kubeops.delete(_pod_path(spec.namespace, name)):
            logger.info(f"{spec.namespace}/{spec.name}: {action}: deleted worker pod {name}")
            metrics.SCALING.labels(action).inc()


async def retire(spec: ClusterSpec, pods: list[Pod], count: int | None, action: str,
                 only_group: bool) -> None:
    """Retire ``count`` of ``pods`` (all of them when None) and delete exactly those retired.

    With ``count`` None (rollout, removed groups) pods unknown to the scheduler
    are deleted directly: they never joined, so they hold nothing.
    """
    ours = {pod_name(p) for p in pods}
    if count is not None and only_group:
        retired = await scheduler_api.retire_workers(spec.name, spec.namespace, n=count)
    else:
        known = await scheduler_api.workers(spec.name, spec.namespace)
        candidates = sorted((w for w in known if w.get("name") in ours),
                            key=lambda w: w.get("memory") or 0)
        if count is None:
            # Pods the scheduler does not know as workers hold no data.
            strangers = ours - {str(w.get("name")) for w in known}
            await delete_pods(spec, sorted(strangers), action)
        chosen = [str(w["name"]) for w in candidates][:count]
        retired = (await scheduler_api.retire_workers(spec.name, spec.namespace, names=chosen)
                   if chosen else [])
    await delete_pods(spec, [name for name in retired if name in ours], action)


async def scale_down(spec: ClusterSpec, pods: GroupPods, excess: int, only_group: bool,
                     logger: logging.Logger) -> None:
    unready = [pod_name(p) for p in pods.current if not pod_ready(p)][:excess]
    await delete_pods(spec, unready, "retire")
    remaining = excess - len(unready)
    if remaining > 0:
        logger.info(f"{spec.namespace}/{spec.name}: retiring {remaining} worker(s) through "
                    "the scheduler")
        await retire(spec, pods.current, remaining, "retire", only_group)


async def reconcile_group(spec: ClusterSpec, group: WorkerGroup, pods: GroupPods,
                          desired: int, owner: Mapping[str, Any], only_group: bool,
                          logger: logging.Logger) -> None:
    await delete_pods(spec, [pod_name(p) for p in pods.dead], "replace")
    missing = desired - len(pods.current)
    if missing > 0:
        await create_workers(spec, group, owner, missing, "create" if not pods.stale else
                             "rollout")
    elif missing < 0:
        await scale_down(spec, pods, -missing, only_group and not pods.stale, logger)
    if pods.stale:
        # Stale pods that never became ready hold nothing; the others hand their
        # data over once the replacements are ready.
        await delete_pods(spec, [pod_name(p) for p in pods.stale if not pod_ready(p)],
                          "rollout")
        ready_stale = [p for p in pods.stale if pod_ready(p)]
        if ready_stale and sum(pod_ready(p) for p in pods.current) >= desired:
            await retire(spec, ready_stale, None, "rollout", only_group=False)


async def reconcile_workers(spec: ClusterSpec, owner: Mapping[str, Any], desired: dict[str, int],
                            logger: logging.Logger) -> dict[str, dict[str, int]]:
    """One pass over every group; answers {group: {desired, ready}} as seen before acting."""
    groups, orphans = sort_pods(spec, await list_workers(spec))
    if orphans:
        await retire(spec, [p for p in orphans if pod_ready(p)], None, "retire", False)
        await delete_pods(spec, [pod_name(p) for p in orphans if not pod_ready(p)], "retire")
    only_group = len(spec.groups) == 1
    for group in spec.groups:
        await reconcile_group(spec, group, groups[group.name], desired[group.name], owner,
                              only_group, logger)
    return {name: {"desired": desired[name], "ready": pods.ready}
            for name, pods in groups.items()}
