"""Scaling on the real cluster: kubectl scale, autoscaling, idleTimeout, rolling updates.

Results are held by a Client in the test process (the host routes the pod
range, so it reaches the scheduler's and the workers' pod IPs). Each result
remembers the pod that computed it, so a result that was lost and
recomputed shows up (see shoal_tier.HeldResults); the scheduler's
``shoal_scheduler_tasks_recomputed_total`` must stay 0 as well.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest

from tests.k8s import shoal_tier as tier
from tests.k8s.cluster import KubeNode
from tests.polling import wait_for


@pytest.fixture
def operator(kube_node: KubeNode, request: pytest.FixtureRequest) -> Iterator[tier.Operator]:
    with tier.operator_fixture(kube_node, request) as op:
        yield op


def scale(node: KubeNode, namespace: str, name: str, replicas: int) -> None:
    node.kubectl("scale", f"shoalcluster/{name}", f"--replicas={replicas}", "-n", namespace)


def test_kubectl_scale_up_and_down_loses_nothing(kube_node: KubeNode, kube_namespace: str,
                                                  operator: tier.Operator) -> None:
    ns, name = kube_namespace, "scaled"
    tier.start_cluster(kube_node, ns, name, workers=2)
    url = tier.scheduler_http(kube_node, ns, name)
    with tier.client_for(kube_node, ns, name) as client:
        first = tier.HeldResults(client, 10)
        scale(kube_node, ns, name, 3)
        tier.wait_running(kube_node, ns, name, workers=3)
        before = tier.wait_scheduler_knows(kube_node, ns, name)
        assert len(before) == 3 and first.lost() == []
        held = tier.HeldResults(client, 30, spread_over=sorted(before))  # 10 on each
        scale(kube_node, ns, name, 1)
        status = tier.wait_running(kube_node, ns, name, workers=1)
        after = tier.wait_scheduler_knows(kube_node, ns, name)
        retired = before - after
        # Exactly the retired workers' pods are gone, the survivor was never replaced.
        assert len(after) == 1 and after < before and len(retired) == 2
        assert status["replicas"] == 1 and status["workerGroups"]["default"]["desired"] == 1
        moved = held.on(retired)
        assert moved == 20, held.made_on
        assert held.lost() == [] and first.lost() == []
        assert tier.recomputed(url) == 0
        tier.log(f"scale 2->3->1: {moved} of 40 held results moved off the retired workers, "
                 "0 lost")


def test_autoscaling_follows_load_and_waits_the_window(kube_node: KubeNode, kube_namespace: str,
                                                       operator: tier.Operator) -> None:
    ns, name = kube_namespace, "auto"
    tier.apply(kube_node, ns, tier.cluster_spec(name, minReplicas=1, maxReplicas=3))
    tier.wait_running(kube_node, ns, name, workers=1)
    url = tier.scheduler_http(kube_node, ns, name)
    with tier.client_for(kube_node, ns, name) as client:
        made_here = tier._made_here()

        def slow(i: int) -> tuple[int, str, bytes]:
            time.sleep(1.0)
            return made_here(i, 1000)

        futures = client.map(slow, range(60), pure=False)
        scaled_up = tier.wait_running(kube_node, ns, name, workers=3)
        assert scaled_up["workerGroups"]["default"] == {"desired": 3, "ready": 3}
        last_high = time.monotonic()
        while not all(f.done() for f in futures):  # bounded by the client's own timeout
            if tier.http_json(f"{url}/api/v1/adaptive_target")["workers"] >= 3:
                last_high = time.monotonic()
            wait_for(lambda: True, timeout=1)
            assert time.monotonic() - last_high < 300, "the work never finished"
        results = client.gather(futures)
        drained = time.monotonic()

        def scaled_down() -> float | None:
            desired = tier.status(kube_node, ns, name)["workerGroups"]["default"]["desired"]
            return time.monotonic() if desired < 3 else None

        down_at = wait_for(scaled_down, timeout=tier.SCALE_DOWN_WINDOW + 90, interval=0.25,
                           what="the autoscaler to scale down after the window")
        # The operator samples every RECONCILE_INTERVAL; allow two samples of slack.
        assert down_at >= last_high + tier.SCALE_DOWN_WINDOW - 2 * tier.RECONCILE_INTERVAL - 1, (
            f"scaled down {down_at - last_high:.1f}s after the last high target, "
            f"window {tier.SCALE_DOWN_WINDOW}s")
        tier.wait_running(kube_node, ns, name, workers=1)
        tier.wait_scheduler_knows(kube_node, ns, name)
        regathered = client.gather(futures)
        assert [r[1] for r in regathered] == [r[1] for r in results]
        assert tier.recomputed(url) == 0
        tier.log(f"autoscaling: 1->3 under load; down {down_at - drained:.1f}s after the work "
                 f"drained, {down_at - last_high:.1f}s after the last high target "
                 f"(window {tier.SCALE_DOWN_WINDOW:g}s)")


def test_idle_timeout_deletes_only_the_idle_cluster(kube_node: KubeNode, kube_namespace: str,
                                                    operator: tier.Operator) -> None:
    ns, timeout = kube_namespace, 10
    idle = tier.cluster_spec("idle", workers=1)
    idle["spec"]["idleTimeout"] = timeout
    tier.apply(kube_node, ns, idle)
    # "busy" gets its timeout only once its work is queued: its idle clock starts with
    # its scheduler, and its worker may take longer than the timeout to start here.
    tier.apply(kube_node, ns, tier.cluster_spec("busy", workers=1))
    tier.wait_running(kube_node, ns, "busy", workers=1)
    with tier.client_for(kube_node, ns, "busy") as client:
        # One task running for longer than the timeout, and one queued behind it.
        futures = [client.submit(time.sleep, 3 * timeout, pure=False),
                   client.submit(time.sleep, 1, pure=False)]
        url = tier.scheduler_http(kube_node, ns, "busy")
        wait_for(lambda: not tier.http_json(f"{url}/api/v1/idle")["idle"], timeout=30,
                 interval=tier.POLL, what="the busy scheduler has the work")
        patch(kube_node, ns, "busy", [{"op": "add", "path": "/spec/idleTimeout",
                                       "value": timeout}])
        started = time.monotonic()
        tier.wait_gone(kube_node, ns, "shoalcluster", "idle", timeout=timeout + 120)
        idle_deleted_after = time.monotonic() - started
        while not all(f.done() for f in futures):
            assert tier.get(kube_node, ns, "shoalcluster", "busy") is not None, (
                "a cluster with work queued was deleted")
            assert time.monotonic() - started < 300
            wait_for(lambda: True, timeout=1)
        assert time.monotonic() - started > 2 * timeout  # the check above ran long enough
    # The client is gone and nothing is queued: now it is idle, and deleted.
    tier.wait_gone(kube_node, ns, "shoalcluster", "busy", timeout=timeout + 120)
    tier.log(f"idleTimeout {timeout}s: the idle cluster went after {idle_deleted_after:.0f}s; "
             "the busy one lived until its work was done")


def patch(node: KubeNode, namespace: str, name: str, ops: list[dict]) -> None:
    node.kubectl("patch", "shoalcluster", name, "-n", namespace, "--type=json",
                 "-p", json.dumps(ops))


def wait_rolled(node: KubeNode, namespace: str, name: str, old: set[str],
                what: str, check: Callable[[dict], bool]) -> set[str]:
    """Wait until no pod of ``old`` is left and every worker pod passes ``check``."""
    def rolled() -> set[str] | None:
        current = tier.worker_pods(node, namespace, name)
        names = {p["metadata"]["name"] for p in current}
        ok = (len(current) == 2 and not names & old and all(tier.pod_ready(p) for p in current)
              and all(check(p["spec"]["containers"][0]) for p in current))
        return names if ok else None
    return wait_for(rolled, timeout=tier.POD_START, interval=tier.POLL,
                    what=f"the workers of {namespace}/{name} rolled ({what})")


def test_spec_change_rolls_the_workers_and_keeps_every_result(
        kube_node: KubeNode, kube_namespace: str, operator: tier.Operator) -> None:
    ns, name = kube_namespace, "rolling"
    spec = tier.cluster_spec(name, workers=2, image=tier.IMAGE)
    tier.apply(kube_node, ns, spec)
    tier.wait_running(kube_node, ns, name, workers=2)
    scheduler = tier.scheduler_pod(kube_node, ns, name)["metadata"]["uid"]
    url = tier.scheduler_http(kube_node, ns, name)
    with tier.client_for(kube_node, ns, name) as client:
        held = tier.HeldResults(client, 30)
        first = tier.pod_names(kube_node, ns, name)
        patch(kube_node, ns, name, [{"op": "replace", "path": "/spec/workerGroups/0/image",
                                     "value": tier.ROLLED_IMAGE}])
        second = wait_rolled(kube_node, ns, name, first, "new image tag",
                             lambda c: c["image"] == tier.ROLLED_IMAGE)
        tier.wait_running(kube_node, ns, name, workers=2)
        tier.wait_scheduler_knows(kube_node, ns, name)
        assert held.lost() == []
        patch(kube_node, ns, name, [{"op": "replace",
                                     "path": "/spec/workerGroups/0/resources/requests/cpu",
                                     "value": "60m"}])
        wait_rolled(kube_node, ns, name, second, "new CPU request",
                    lambda c: c["resources"]["requests"]["cpu"] == "60m")
        tier.wait_running(kube_node, ns, name, workers=2)
        tier.wait_scheduler_knows(kube_node, ns, name)
        assert held.lost() == []
        assert tier.recomputed(url) == 0
    # Only the workers rolled: the scheduler (and with it every result) stayed.
    assert tier.scheduler_pod(kube_node, ns, name)["metadata"]["uid"] == scheduler
