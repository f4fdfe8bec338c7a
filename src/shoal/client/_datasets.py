"""Publishing named data for other clients (``publish_dataset`` and friends).

The data is pickled here with every Future inside it (also inside persisted
collections) recorded as its key; the scheduler keeps the bytes and holds
those keys (see ``scheduler/_datasets.py``).  A client that gets the dataset
unpickles it with fresh Futures of its own and tells the scheduler it wants
those keys.  ``client.datasets`` is the same as a mutable mapping.
"""

from __future__ import annotations

import asyncio
import io
import pickle
from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

import cloudpickle

from ._future import Future

if TYPE_CHECKING:
    from ._client import Client

_MISSING = object()


class _KeysOfFutures(cloudpickle.Pickler):
    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=5)
        self.keys: dict[str, None] = {}

    def persistent_id(self, obj: Any) -> str | None:
        if type(obj) is Future:
            self.keys[obj.key] = None
            return obj.key
        return None


class _FuturesOf(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, client: Client) -> None:
        super().__init__(file)
        self.client = client

    def persistent_load(self, pid: Any) -> Future:
        return Future(str(pid), self.client)


def dumps(data: Any) -> tuple[bytes, list[str]]:
    """``data`` pickled with its futures as keys, and those keys."""
    buffer = io.BytesIO()
    pickler = _KeysOfFutures(buffer)
    pickler.dump(data)
    return buffer.getvalue(), list(pickler.keys)


def loads(data: bytes, client: Client) -> Any:
    return _FuturesOf(io.BytesIO(data), client).load()


async def publish(client: Client, datasets: dict[str, Any], override: bool) -> None:
    for name, value in datasets.items():
        data, keys = dumps(value)
        confirmed = asyncio.get_running_loop().create_future()
        client._dataset_confirmations[name] = confirmed
        client._send({"op": "publish-dataset", "name": name, "data": data, "keys": keys,
                      "override": override})
        error = await confirmed
        if error:
            raise ValueError(error)


def confirm(client: Client, msg: dict[str, Any]) -> None:
    """The scheduler's answer to a publish, from the client's stream."""
    waiter = client._dataset_confirmations.pop(str(msg.get("name")), None)
    if waiter is not None and not waiter.done():
        waiter.set_result(msg.get("error"))


async def get(client: Client, name: str, default: Any = _MISSING) -> Any:
    answer = await client.pool.request(client.scheduler_address, "get_dataset", name=name)
    if answer["status"] != "ok":
        if default is not _MISSING:
            return default
        raise KeyError(f"no dataset named {name!r} is published")
    value = loads(answer["data"], client)
    if answer["keys"]:
        client._send({"op": "client-wants-keys", "keys": answer["keys"]})
    return value


async def unpublish(client: Client, name: str) -> None:
    answer = await client.pool.request(client.scheduler_address, "unpublish_dataset", name=name)
    if answer["status"] != "ok":
        raise KeyError(f"no dataset named {name!r} is published")


class Datasets(MutableMapping):
    """``client.datasets``: the published datasets as a mapping."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def __getitem__(self, name: str) -> Any:
        return self.client.get_dataset(name)

    def __setitem__(self, name: str, value: Any) -> None:
        self.client.publish_dataset(value, name=name)

    def __delitem__(self, name: str) -> None:
        self.client.unpublish_dataset(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.client.list_datasets())

    def __len__(self) -> int:
        return len(self.client.list_datasets())
