"""One Helm action against the real test cluster, with the real Helm library.

helm-sdkpy (Helm's Go code behind a Python API) needs Python >= 3.12, so the
tier runs this script with ``.venv-helm/bin/python`` (see shoal_tier.helm).
It reads one JSON request on stdin::

    {"kubeconfig": "<file content>", "action": "install" | "uninstall",
     "release": NAME, "namespace": NS, "chart": DIR, "values": {...},
     "create_namespace": true}

and prints the release Helm answered as JSON on stdout. Helm does here what
``helm install`` does: discovery, the kubeVersion check against the server,
the values schema, the CRDs from ``crds/`` first, then every object.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import helm_sdkpy

TIMEOUT = 240  # seconds Helm may take for one action


async def run(request: dict[str, Any]) -> Any:
    config = helm_sdkpy.Configuration(namespace=request["namespace"],
                                      kubeconfig=request["kubeconfig"])
    if request["action"] == "install":
        return await helm_sdkpy.Install(config).run(
            request["release"], request["chart"], values=request.get("values") or None,
            create_namespace=bool(request.get("create_namespace")), wait=False,
            timeout=TIMEOUT)
    if request["action"] == "uninstall":
        return await helm_sdkpy.Uninstall(config).run(request["release"], wait=True,
                                                      timeout=TIMEOUT)
    raise SystemExit(f"unknown action {request['action']!r}")


def main() -> int:
    request = json.load(sys.stdin)
    answer = asyncio.run(asyncio.wait_for(run(request), TIMEOUT + 30))
    json.dump(answer if isinstance(answer, dict) else {"result": answer}, sys.stdout,
              default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
