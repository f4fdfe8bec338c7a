"""Spec validation and the pure decisions: quantities, defaults, clear errors,
template merging, the autoscaling stabiliser and the split of the target."""

from __future__ import annotations

import pytest

from shoal.operator.autoscale import Autoscaler, Stabiliser, split_target
from shoal.operator.builders import merge_template
from shoal.operator.spec import InvalidSpec, parse_cluster_spec, parse_quantity


@pytest.mark.parametrize(("text", "value"), [
    ("4Gi", 4 * 2**30), ("512Mi", 512 * 2**20), ("1G", 10**9), ("2", 2), (3, 3),
    ("500m", 0.5), ("1.5Gi", 1.5 * 2**30), ("1e3", 1000),
])
def test_quantities(text: object, value: float) -> None:
    assert parse_quantity(text, "x") == value


@pytest.mark.parametrize("text", ["4GB", "lots", "", True, None, "-1Gi"])
def test_bad_quantities(text: object) -> None:
    with pytest.raises(InvalidSpec, match="x"):
        parse_quantity(text, "x")


def test_defaults() -> None:
    spec = parse_cluster_spec("c", "ns", {"image": "img"})
    (group,) = spec.groups
    assert (group.name, group.replicas, group.nthreads, group.image) == ("default", 1, 1, "img")
    assert spec.scheduler.service_type == "ClusterIP"
    assert spec.scheduler.image == "img"
    assert spec.idle_timeout == 0 and spec.image_pull_policy == "IfNotPresent"


def test_spec_replicas_overrides_the_first_group_only() -> None:
    spec = parse_cluster_spec("c", "ns", {"replicas": 7, "workerGroups": [
        {"name": "a", "replicas": 1}, {"name": "b", "replicas": 2}]})
    assert [g.replicas for g in spec.groups] == [7, 2]


def test_gpu_limits_imply_a_gpu_resource() -> None:
    spec = parse_cluster_spec("c", "ns", {"workerGroups": [
        {"name": "g", "resources": {"limits": {"nvidia.com/gpu": 2}}}]})
    assert spec.groups[0].worker_resources == {"GPU": 2}


@pytest.mark.parametrize(("spec", "message"), [
    ({"workerGroups": []}, "at least one worker group"),
    ({"workerGroups": [{"name": "a"}, {"name": "a"}]}, "duplicate group names a"),
    ({"workerGroups": [{"name": "A_b"}]}, "must be a DNS label"),
    ({"workerGroups": [{"name": "a", "minReplicas": 1}]}, "set both minReplicas"),
    ({"workerGroups": [{"name": "a", "minReplicas": 3, "maxReplicas": 1}]},
     r"minReplicas \(3\) is greater than maxReplicas \(1\)"),
    ({"workerGroups": [{"name": "a", "nthreads": 0}]}, "nthreads: must be at least 1"),
    ({"workerGroups": [{"name": "a", "memory": "huge"}]}, "not a Kubernetes quantity"),
    ({"workerGroups": [{"name": "a", "replicas": "2"}]}, "expected an integer"),
    ({"scheduler": {"serviceType": "Ingress"}}, "not one of ClusterIP"),
    ({"idleTimeout": -5}, "idleTimeout: must be at least 0"),
    ({"workerGroups": [{"name": "a", "env": [{"value": "x"}]}]}, "needs a string `name`"),
    ({"scheduler": {"resources": {"limit": {}}}}, "unknown key 'limit'"),
    ({"workerGroups": [{"name": "a", "template": []}]}, "template: expected a mapping"),
    ("nonsense", "spec: expected a mapping"),
])
def test_invalid_specs_say_what_is_wrong(spec: object, message: str) -> None:
    with pytest.raises(InvalidSpec, match=message):
        parse_cluster_spec("c", "ns", spec)


def test_names_must_fit_in_a_pod_name() -> None:
    with pytest.raises(InvalidSpec, match="too long"):
        parse_cluster_spec("c" * 50, "ns", {"workerGroups": [{"name": "workers"}]})


def test_merge_template_merges_by_name_and_replaces_other_lists() -> None:
    base = {"containers": [{"name": "worker", "image": "a", "env": [{"name": "X", "value": "1"}]}],
            "tolerations": [{"key": "a"}], "nodeSelector": {"a": "1"}}
    merged = merge_template(base, {
        "containers": [{"name": "worker", "env": [{"name": "Y", "value": "2"}]},
                       {"name": "sidecar", "image": "s"}],
        "tolerations": [{"key": "b"}], "nodeSelector": {"b": "2"}})
    assert merged["containers"][0] == {"name": "worker", "image": "a", "env": [
        {"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]}
    assert merged["containers"][1] == {"name": "sidecar", "image": "s"}
    assert merged["tolerations"] == [{"key": "b"}]
    assert merged["nodeSelector"] == {"a": "1", "b": "2"}
    assert base["nodeSelector"] == {"a": "1"}  # the input is not modified


def test_stabiliser_scales_up_at_once_and_down_after_the_window() -> None:
    s = Stabiliser(window=60)
    assert s.recommend(0, 2) == 2
    assert s.recommend(10, 8) == 8  # up: immediately
    assert s.recommend(20, 3) == 8  # down: not yet
    assert s.recommend(69, 3) == 8  # the 8 seen at t=10 is still within the window
    assert s.recommend(71, 3) == 3  # the lower target lasted a whole window
    assert s.recommend(72, 1) == 3
    assert s.recommend(140, 1) == 1


def test_autoscaler_keeps_groups_and_clusters_apart() -> None:
    a = Autoscaler(window=10)
    assert a.desired("u1", 0, {"g": 5}) == {"g": 5}
    assert a.desired("u2", 1, {"g": 1}) == {"g": 1}
    assert a.desired("u1", 2, {"g": 1}) == {"g": 5}
    a.forget("u1")
    assert a.desired("u1", 3, {"g": 1}) == {"g": 1}


def test_a_group_newly_autoscaled_waits_a_window_from_its_current_size() -> None:
    a = Autoscaler(window=10)
    assert a.desired("u", 0, {"g": 1}, current={"g": 4}) == {"g": 4}
    assert a.desired("u", 9, {"g": 1}, current={"g": 4}) == {"g": 4}
    assert a.desired("u", 11, {"g": 1}, current={"g": 4}) == {"g": 1}


def test_split_target_fills_autoscaled_groups_in_order() -> None:
    spec = parse_cluster_spec("c", "ns", {"workerGroups": [
        {"name": "fixed", "replicas": 2},
        {"name": "a", "minReplicas": 1, "maxReplicas": 3},
        {"name": "b", "minReplicas": 0, "maxReplicas": 10}]})
    assert split_target(10, spec.groups, {"fixed": 2}) == {"a": 3, "b": 5}
    assert split_target(2, spec.groups, {"fixed": 2}) == {"a": 1, "b": 0}
    assert split_target(100, spec.groups, {"fixed": 2}) == {"a": 3, "b": 10}
