"""The ShoalCluster and ShoalJob CustomResourceDefinitions, built in Python.

The CRDs are the contract between users, the operator and the Helm chart, so
they live in one place: this module builds them as plain dicts and
``python -m shoal.operator.crds DIR`` writes ``manifests/crds/*.yaml`` from
them (a test checks the files are up to date). The operator reuses the same
constants (group, version, plural) so nothing can drift.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

GROUP = "shoal.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CLUSTER_KIND = "ShoalCluster"
CLUSTER_PLURAL = "shoalclusters"
JOB_KIND = "ShoalJob"
JOB_PLURAL = "shoaljobs"

Schema = dict[str, Any]

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# Kubernetes' quantity grammar (a number with an optional SI, binary or
# exponent suffix), as the API server's own schemas state it.
QUANTITY_PATTERN = (r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
                    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
# A pod is named CLUSTER-GROUP-XXXXX; keeping names short keeps it a DNS label.
MAX_GROUP_NAME = 20


def _str(description: str, **extra: Any) -> Schema:
    return {"type": "string", "description": description, **extra}


def _int(description: str, **extra: Any) -> Schema:
    return {"type": "integer", "description": description, **extra}


def _quantity(description: str) -> Schema:
    return {"anyOf": [{"type": "integer"}, {"type": "string"}], "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True, "description": description}


def resources_schema(what: str) -> Schema:
    quantities = {"type": "object", "additionalProperties": _quantity("A quantity.")}
    return {
        "type": "object",
        "description": f"Kubernetes resource requests and limits of the {what} container "
        "(a core/v1 ResourceRequirements: `requests` and `limits`).",
        "properties": {
            "requests": {**quantities, "description": "Minimum resources, e.g. {cpu: 1}."},
            "limits": {**quantities, "description": "Maximum resources, e.g. {memory: 4Gi}."},
        },
    }


def env_schema(what: str) -> Schema:
    return {
        "type": "array",
        "description": f"Extra environment variables of the {what} container "
        "(core/v1 EnvVar: name plus value or valueFrom).",
        "items": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": _str("Variable name.", minLength=1, pattern=ENV_NAME_PATTERN),
                "value": _str("Literal value."),
                "valueFrom": {
                    "type": "object",
                    "description": "A core/v1 EnvVarSource (secretKeyRef, fieldRef, ...).",
                    "x-kubernetes-preserve-unknown-fields": True,
                },
            },
        },
    }


def template_schema(what: str) -> Schema:
    return {
        "type": "object",
        "description": f"Pod spec overrides merged into the generated {what} pod spec "
        "(nodeSelector, tolerations, affinity, serviceAccountName, priorityClassName, "
        "volumes, securityContext, ...). Mappings merge recursively; `containers`, "
        "`initContainers`, `volumes`, `volumeMounts` and `env` merge item by item by `name` "
        f"with the generated ones (the main container is named `{what}`); any other list "
        "replaces the generated value.",
        "x-kubernetes-preserve-unknown-fields": True,
    }


def scheduler_schema() -> Schema:
    return {
        "type": "object",
        "description": "The scheduler: one Deployment (1 replica) and one Service.",
        "properties": {
            "image": _str("Image of the scheduler container; defaults to spec.image."),
            "serviceType": _str(
                "Type of the scheduler's Service (comm port 8786, HTTP port 8787).",
                enum=["ClusterIP", "NodePort", "LoadBalancer"],
                default="ClusterIP",
            ),
            "resources": resources_schema("scheduler"),
            "env": env_schema("scheduler"),
            "template": template_schema("scheduler"),
        },
    }


def worker_group_schema() -> Schema:
    return {
        "type": "object",
        "description": "A group of identical workers; each worker is one Pod whose name is "
        "the worker's name. With both minReplicas and maxReplicas set, the operator "
        "autoscales the group from the scheduler's adaptive target.",
        "required": ["name"],
        "properties": {
            "name": _str(
                "Group name, unique in the cluster (a DNS label).",
                pattern=DNS_LABEL_PATTERN,
                minLength=1,
                maxLength=MAX_GROUP_NAME,
            ),
            "replicas": _int(
                "Desired number of workers: 1 by default, minReplicas when autoscaling "
                "(then only the starting point). For the first group spec.replicas wins "
                "when set.",
                minimum=0,
            ),
            "minReplicas": _int("Autoscaling lower bound.", minimum=0),
            "maxReplicas": _int("Autoscaling upper bound.", minimum=0),
            "nthreads": _int("Threads per worker (shoal worker --nthreads).", minimum=1,
                             default=1),
            "memory": _quantity(
                "Memory limit of each worker, a Kubernetes quantity such as 4Gi: passed as "
                "--memory-limit and used as the container's memory limit and request "
                "unless resources say otherwise."
            ),
            "resources": resources_schema("worker"),
            "workerResources": {
                "type": "object",
                "description": "Abstract resources the worker advertises to the scheduler for "
                "task restrictions (shoal worker --resources), e.g. {GPU: 1}. Defaults to "
                "GPU=N when the container limits request nvidia.com/gpu: N.",
                "additionalProperties": {"type": "number"},
            },
            "image": _str("Image of this group's workers; defaults to spec.image."),
            "env": env_schema("worker"),
            "template": template_schema("worker"),
        },
    }


def security_schema() -> Schema:
    return {
        "type": "object",
        "description": "Who may talk to the cluster. Secure by default: the operator makes a "
        "CA, certificates and an HTTP token in Secrets owned by the cluster, every link is "
        "mutual TLS (tls://), HTTP mutations need the token, and a NetworkPolicy admits "
        "only the cluster's pods, the operator and pods labelled shoal.dev/client-of: NAME.",
        "properties": {
            "tls": {"type": "boolean", "default": True,
                    "description": "Mutual TLS between every pod and client. false: plain "
                    "tcp://, anyone who can reach the pods can run code on the workers; "
                    "reported by the Secured=False condition and a warning event."},
            "networkPolicy": {"type": "boolean", "default": True,
                              "description": "Create the cluster's NetworkPolicy."},
            "rotation": _str("Change to any new value to rotate the credentials: a new CA, "
                             "certificates and token, and every pod restarted (the "
                             "scheduler too: results held in the cluster are lost)."),
        },
    }


def cluster_spec_schema() -> Schema:
    return {
        "type": "object",
        "description": "Desired state of a shoal cluster: a scheduler and worker groups.",
        "properties": {
            "image": _str(
                "Default image of every pod (scheduler, workers); the operator's "
                "SHOAL_DEFAULT_IMAGE when empty."
            ),
            "imagePullPolicy": _str(
                "Pull policy of every container.",
                enum=["Always", "IfNotPresent", "Never"],
                default="IfNotPresent",
            ),
            "idleTimeout": _int(
                "Delete the cluster after the scheduler reported it idle for this many "
                "seconds; 0 means never.",
                minimum=0,
                default=0,
            ),
            "replicas": _int(
                "Desired workers of the FIRST worker group; overrides "
                "workerGroups[0].replicas when set. This is the scale subresource's path, "
                "so `kubectl scale shoalcluster/NAME --replicas=N` sets it.",
                minimum=0,
            ),
            "scheduler": scheduler_schema(),
            "security": security_schema(),
            "workerGroups": {
                "type": "array",
                "description": "Worker groups; at least one, names unique. When absent, one "
                "group named `default` with one worker.",
                "minItems": 1,
                "items": worker_group_schema(),
                # Keyed by name: the API server refuses two groups of the same name.
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
            },
        },
    }


def condition_schema() -> Schema:
    return {
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": _str("SpecValid, SchedulerReady, WorkersReady, Secured or Idle."),
            "status": _str("Condition status.", enum=["True", "False", "Unknown"]),
            "reason": _str("One-word CamelCase reason."),
            "message": _str("Human-readable details."),
            "lastTransitionTime": _str("When the status last changed.", format="date-time"),
        },
    }


def conditions_schema() -> Schema:
    return {
        "type": "array",
        "description": "Latest observations, one per type.",
        "items": condition_schema(),
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    }


def cluster_status_schema() -> Schema:
    group_status = {
        "type": "object",
        "properties": {
            "desired": _int("Workers the operator wants in this group."),
            "ready": _int("Worker pods of this group that are ready."),
        },
    }
    return {
        "type": "object",
        "description": "Observed state, written by the operator. Unknown fields are kept "
        "for the operator framework's own bookkeeping.",
        "x-kubernetes-preserve-unknown-fields": True,
        "properties": {
            "phase": _str("Pending, Running or Failed.", enum=["Pending", "Running", "Failed"]),
            "message": _str("Why the cluster is in this phase."),
            "conditions": conditions_schema(),
            "schedulerAddress": _str("In-cluster comm address, tls://NAME-scheduler.NS.svc."
                                     "cluster.local:8786 (tcp:// when spec.security.tls is "
                                     "false)."),
            "dashboardAddress": _str("In-cluster HTTP address of the scheduler (dashboard, "
                                     "API, metrics); https:// with TLS."),
            "security": {
                "type": "object",
                "description": "The credentials the operator made for this cluster.",
                "properties": {
                    "tls": {"type": "boolean", "description": "Mutual TLS is on."},
                    "clientSecret": _str("Secret holding a client's credentials: ca.crt, "
                                         "tls.crt, tls.key and the HTTP token."),
                    "credentials": _str("Fingerprint of the current CA (changes on "
                                        "rotation)."),
                    "notAfter": _str("When the certificates expire (renewed before).",
                                     format="date-time"),
                },
            },
            "workerGroups": {
                "type": "object",
                "description": "Desired and ready workers per group name.",
                "additionalProperties": group_status,
            },
            "replicas": _int("Workers of the first group (scale subresource)."),
            "readyWorkers": _int("Ready workers over all groups."),
            "desiredWorkers": _int("Desired workers over all groups."),
            "selector": _str("Label selector of the first group's pods (scale subresource)."),
            "lastActivity": _str("Last time the scheduler was seen busy.", format="date-time"),
            "idleSince": _str("Since when the scheduler reports idle.", format="date-time"),
            "observedGeneration": _int("The spec generation this status describes."),
        },
    }


def job_spec_schema() -> Schema:
    return {
        "type": "object",
        "description": "A runner pod plus a cluster made for it; the cluster is deleted "
        "when the runner finishes.",
        "required": ["runner"],
        "properties": {
            "runner": {
                "type": "object",
                "description": "The runner container; SHOAL_SCHEDULER_ADDRESS holds the "
                "scheduler's address in its environment.",
                "properties": {
                    "image": _str("Runner image; defaults to cluster.image."),
                    "command": {"type": "array", "items": {"type": "string"},
                                "description": "Container command (entrypoint)."},
                    "args": {"type": "array", "items": {"type": "string"},
                             "description": "Container arguments."},
                    "env": env_schema("runner"),
                    "resources": resources_schema("runner"),
                    "template": template_schema("runner"),
                },
            },
            "cluster": cluster_spec_schema(),
        },
    }


def job_status_schema() -> Schema:
    return {
        "type": "object",
        "description": "Observed state of the job, written by the operator.",
        "x-kubernetes-preserve-unknown-fields": True,
        "properties": {
            "phase": _str("Job phase.", enum=["Pending", "Running", "Succeeded", "Failed"]),
            "startTime": _str("When the runner started.", format="date-time"),
            "endTime": _str("When the runner finished.", format="date-time"),
            "clusterName": _str("Name of the ShoalCluster made for this job."),
            "runnerPod": _str("Name of the runner pod."),
            "message": _str("Details, e.g. why the job failed."),
            "conditions": conditions_schema(),
        },
    }


def _column(name: str, path: str, kind: str = "string", **extra: Any) -> Schema:
    return {"name": name, "type": kind, "jsonPath": path, **extra}


def _crd(kind: str, plural: str, short: list[str], spec: Schema, status: Schema,
         columns: list[Schema], subresources: Schema, description: str) -> Schema:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}",
                     "labels": {"app.kubernetes.io/name": "shoal"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural,
                      "singular": kind.lower(), "shortNames": short,
                      "categories": ["shoal"]},
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": description,
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec,
                        "status": status,
                    },
                    "required": ["spec"],
                }},
                "subresources": subresources,
                "additionalPrinterColumns": columns,
            }],
        },
    }


def cluster_crd() -> Schema:
    columns = [
        _column("Phase", ".status.phase"),
        _column("Workers", ".status.readyWorkers", "integer",
                description="Ready workers over all groups"),
        _column("Desired", ".status.desiredWorkers", "integer"),
        _column("Scheduler", ".status.schedulerAddress", priority=1),
        _column("TLS", ".status.security.tls", "boolean", priority=1),
        _column("Age", ".metadata.creationTimestamp", "date"),
    ]
    scale = {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
             "labelSelectorPath": ".status.selector"}
    return _crd(CLUSTER_KIND, CLUSTER_PLURAL, ["shc"], cluster_spec_schema(),
                cluster_status_schema(), columns, {"status": {}, "scale": scale},
                "A shoal cluster: a scheduler and groups of workers, managed by the shoal "
                "operator.")


def job_crd() -> Schema:
    columns = [
        _column("Phase", ".status.phase"),
        _column("Cluster", ".status.clusterName"),
        _column("Started", ".status.startTime", "date"),
        _column("Finished", ".status.endTime", "date"),
        _column("Age", ".metadata.creationTimestamp", "date"),
    ]
    return _crd(JOB_KIND, JOB_PLURAL, ["shj"], job_spec_schema(), job_status_schema(),
                columns, {"status": {}},
                "A batch job: a runner pod with a ShoalCluster made for it and deleted "
                "when the runner finishes.")


def all_crds() -> dict[str, Schema]:
    """File name (in manifests/crds/) to CRD."""
    return {f"{CLUSTER_PLURAL}.yaml": cluster_crd(), f"{JOB_PLURAL}.yaml": job_crd()}


def render(crd: Schema) -> str:
    import yaml

    header = "# Generated by `python -m shoal.operator.crds manifests/crds`; do not edit.\n"
    return header + yaml.safe_dump(crd, sort_keys=False, width=100)


def main(argv: list[str]) -> int:
    target = Path(argv[0] if argv else "manifests/crds")
    target.mkdir(parents=True, exist_ok=True)
    for filename, crd in all_crds().items():
        (target / filename).write_text(render(crd))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
