"""Clusters: ``LocalCluster`` (the embedded default) and ``KubeCluster``."""

from ._adapt import Adaptive
from ._local import LocalCluster


def __getattr__(name: str) -> object:
    if name == "KubeCluster":  # needs the optional kubernetes extra
        from .kube import KubeCluster

        return KubeCluster
    raise AttributeError(name)


__all__ = ["Adaptive", "KubeCluster", "LocalCluster"]
