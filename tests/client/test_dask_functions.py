"""Shipped functions: what a notebook changes between two submits is what runs,
and the client keeps no function (nor what it captured) alive."""

from __future__ import annotations

import gc
import importlib
import subprocess
import sys
import textwrap
import weakref
from typing import Any

import cloudpickle

from shoal import Client
from shoal.client._fingerprint import fingerprint
from shoal.client._tokenize import FunctionCache
from shoal.protocol import deserialize

SCRIPT = textwrap.dedent("""
    from shoal import Client, LocalCluster

    FACTOR = 3
    TABLE = [1, 2]
    LIMITS = (1, (2, "x"))

    def scaled(x):
        return x * FACTOR

    def helper(x):
        return x + 1

    def uses_helper(x):
        return helper(x) * 2

    def looks_up(i):
        return TABLE[i]

    def limited(x):
        return LIMITS[1][0] + x

    def make(k):
        return lambda x: x + k

    def counter():
        count = 0

        def bump(x):
            return x + count

        def set_to(n):
            nonlocal count
            count = n
        return bump, set_to

    with LocalCluster(n_workers=1, processes=True, dashboard_address=None) as cluster, \\
            Client(cluster, timeout=20) as client:
        def run(name, func, *args):
            for _ in range(2):  # the second submit is answered from the client's cache
                result = client.submit(func, *args, pure=False).result()
            print(name, result)

        run("first", scaled, 1)
        FACTOR = 30
        run("changed-global", scaled, 1)
        FACTOR = 3.0
        run("same-value-other-type", scaled, 1)

        def scaled(x):
            return -x

        run("redefined", scaled, 1)
        run("lambda", lambda x: x + FACTOR, 1)
        run("helper", uses_helper, 1)

        def helper(x):
            return x + 100

        run("redefined-helper", uses_helper, 1)
        run("table", looks_up, 1)
        TABLE[1] = 20  # changed in place: a list is pickled every time
        run("table-in-place", looks_up, 1)
        run("nested-tuple", limited, 1)
        LIMITS = (1, (5, "x"))
        run("new-tuple", limited, 1)
        run("closure-5", make(5), 1)
        run("closure-7", make(7), 1)
        bump, set_to = counter()
        run("cell-0", bump, 1)
        set_to(9)
        run("cell-9", bump, 1)
        scaled.__defaults__ = None
        helper.__defaults__ = (50,)
        run("defaults", uses_helper, 1)
        uses_helper.tag = [1]  # an attribute that can change in place
        run("attribute", uses_helper, 1)
""")

EXPECTED = ["first 3", "changed-global 30", "same-value-other-type 3.0", "redefined -1",
            "lambda 4.0", "helper 4", "redefined-helper 202", "table 2", "table-in-place 20",
            "nested-tuple 3", "new-tuple 6", "closure-5 6", "closure-7 8", "cell-0 1",
            "cell-9 10", "defaults 202", "attribute 202"]


def test_a_changed_global_or_redefined_function_in_main_is_seen_by_the_next_submit(tmp_path):
    script = tmp_path / "notebook.py"
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script)], check=False, capture_output=True,
                         text=True,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    names = {line.split(" ")[0] for line in EXPECTED}
    lines = [line for line in out.stdout.splitlines() if line.split(" ")[0] in names]
    assert lines == EXPECTED


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

    assert cache.get(local) is cache.get(local)  # pickled by value, remembered by its fingerprint
    assert cache.nbytes <= 4096


def _main_function(source: str) -> tuple[Any, dict[str, Any]]:
    """A function as a notebook defines it: in ``__main__``, its code held by it alone."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(source, "<cell>", "exec"), namespace)  # noqa: S102 - the test's own source
    return namespace["f"], namespace


def test_a_function_pickled_by_value_is_pickled_again_only_when_what_it_is_made_of_changes():
    cache = FunctionCache()
    f, namespace = _main_function("K = 2\ndef f(x):\n    return x * K\n")
    call = cache.get(f)
    assert cache.get(f) is call
    namespace["K"] = 3
    changed = cache.get(f)
    assert changed[0] != call[0] and cache.get(f) is changed
    assert deserialize(changed[1])(2) == 6

    g, namespace = _main_function("T = [1]\ndef f(x):\n    return x + T[0]\n")
    first = cache.get(g)
    namespace["T"][0] = 5  # a list may change in place: it is pickled every time
    again = cache.get(g)
    assert again is not first and deserialize(again[1])(1) == 6

    bump, set_to = _closure()
    before = cache.get(bump)
    set_to(4)
    assert deserialize(cache.get(bump)[1])(1) == 5 and cache.get(bump)[0] != before[0]


def test_a_global_whose_attributes_raise_leaves_its_function_without_fingerprint():
    class Hostile(type):
        def __getattribute__(cls, name: str) -> Any:
            if name in ("__module__", "__qualname__"):
                raise RuntimeError("no")
            return super().__getattribute__(name)

    f, namespace = _main_function("def f(x):\n    return x + 1 + len([Odd])\n")
    namespace["Odd"] = Hostile("Odd", (), {})
    assert fingerprint(f) is None  # not an error of its own: pickling it says what is wrong
    namespace["Odd"] = int
    assert fingerprint(f) is not None


def _closure() -> tuple[Any, Any]:
    count = 0

    def bump(x: int) -> int:
        return x + count

    def set_to(n: int) -> None:
        nonlocal count
        count = n
    return bump, set_to


def test_a_remembered_function_pickled_by_value_goes_with_its_code():
    cache = FunctionCache()
    f, namespace = _main_function("BIG = b'x' * 100_000\ndef f(x):\n    return x + len(BIG)\n")
    cache.get(f)
    assert len(cache) == 1 and cache.nbytes > 100_000
    ref = weakref.ref(f)
    del f, namespace
    gc.collect()
    assert ref() is None
    assert len(cache) == 0 and cache.nbytes == 0


def test_a_function_of_a_module_registered_to_pickle_by_value_travels_by_value(tmp_path,
                                                                               monkeypatch):
    """cloudpickle.register_pickle_by_value: workers need not have the module, and
    what the module's globals hold when it is submitted is what runs."""
    name = "shoal_by_value_module"
    (tmp_path / f"{name}.py").write_text("K = 1\n\ndef f(x):\n    return x + K\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    cloudpickle.register_pickle_by_value(module)
    try:
        cache = FunctionCache()
        first = cache.get(module.f)
        module.K = 10
        second = cache.get(module.f)
        assert second[0] != first[0]
    finally:
        cloudpickle.unregister_pickle_by_value(module)
        del sys.modules[name]
    monkeypatch.undo()  # the module is no longer importable: the pickles carry it
    assert deserialize(first[1])(1) == 2 and deserialize(second[1])(1) == 11
