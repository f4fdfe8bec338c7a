"""Shipped functions: what a notebook changes between two submits is what runs,
and the client keeps no function (nor what it captured) alive."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import weakref

from shoal import Client
from shoal.client._tokenize import FunctionCache

SCRIPT = textwrap.dedent("""
    from shoal import Client, LocalCluster

    FACTOR = 3

    def scaled(x):
        return x * FACTOR

    with LocalCluster(n_workers=1, processes=True, dashboard_address=None) as cluster, \\
            Client(cluster, timeout=20) as client:
        print("first", client.submit(scaled, 1).result())
        FACTOR = 30
        print("changed-global", client.submit(scaled, 1).result())

        def scaled(x):
            return -x

        print("redefined", client.submit(scaled, 1).result())
        print("lambda", client.submit(lambda x: x + FACTOR, 1).result())
""")


def test_a_changed_global_or_redefined_function_in_main_is_seen_by_the_next_submit(tmp_path):
    script = tmp_path / "notebook.py"
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script)], check=False, capture_output=True,
                         text=True,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.split(" ")[0] in
             ("first", "changed-global", "redefined", "lambda")]
    assert lines == ["first 3", "changed-global 30", "redefined -1", "lambda 31"]


class Payload:
    """A big captured value, weakly referenceable so the test can see it go."""

    def __init__(self) -> None:
        self.data = bytearray(20 * 2**20)


def test_lambdas_and_what_they_capture_are_not_kept_once_their_futures_are_gone(proc_cluster):
    with Client(proc_cluster, timeout=20) as client:
        refs = []
        for i in range(5):
            payload = Payload()
            refs.append(weakref.ref(payload))
            future = client.submit(lambda x, p=payload: x + len(p.data), i)
            assert future.result() == i + 20 * 2**20
            del future, payload
        assert all(ref() is None for ref in refs)
        assert client._functions.nbytes < 2**20


def test_importable_functions_are_cached_by_identity_and_bounded_in_bytes():
    cache = FunctionCache(max_bytes=4096)
    call = cache.get(len)
    assert cache.get(len) is call and len(cache) == 1  # one call, shared by its tasks' recipes
    assert list(call[0]) == ["func"] and call[0]["func"].startswith("len-")
    for func in (abs, min, max, sorted, repr, hash, id, iter, next, print):
        cache.get(func)
    assert cache.nbytes <= 4096

    def local(x):
        return x

    cache.get(local)
    first, again = cache.get(local), cache.get(local)
    assert first is not again and first == again  # pickled anew each time, content-named: stable
    assert len(cache) <= 11  # a function pickled by value is never remembered

