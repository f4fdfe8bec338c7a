"""The shoal Kubernetes operator: kopf handlers that turn ShoalCluster and
ShoalJob resources into a scheduler Deployment + Service and worker pods.

Needs the ``kubernetes`` extra (``pip install shoal[kubernetes]``); nothing
here is imported by ``import shoal``. Submodules:

- ``crds``: the CustomResourceDefinitions (source of ``manifests/crds/``);
- ``spec``: validation and normalisation of a ShoalCluster spec;
- ``builders``: pure manifest builders (spec in, dict out);
- ``scheduler_api``: the client of the scheduler's HTTP API;
- ``autoscale``: the stabilised autoscaling decision;
- ``handlers``/``jobs``: the kopf handlers;
- ``metrics``: ``shoal_operator_*`` Prometheus metrics;
- ``cli``: ``shoal operator`` (``main(argv)``).
"""
