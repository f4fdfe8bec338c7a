"""Publishing named data for other clients (``publish_dataset`` and friends),
and how any value with futures inside travels through the scheduler.

The data is pickled here with every Future inside it (also inside persisted
collections) recorded as its key, and sent on the client's ordered stream
(behind the graph that made those futures); the scheduler keeps the bytes,
holds the keys and confirms.  A client that receives such a value unpickles
it with fresh Futures of its own, takes its own hold on the keys, then lets
the scheduler drop the hold it kept for the transfer.  ``client.datasets``
is the datasets as a mutable mapping.  (Variables and queues use the same
path: ``_shared.py``.)
"""

from __future__ import annotations

import asyncio
import io
import pickle
from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any, cast

import cloudpickle

from ..protocol._serialize import refuse_memo_bombs
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
    refuse_memo_bombs(data)
    return _FuturesOf(io.BytesIO(data), client).load()


async def store(client: Client, op: str, name: str, value: Any, **extra: Any) -> None:
    """Send ``value`` (futures as keys) on the stream; wait for the scheduler's word."""
    data, keys = dumps(value)
    request = f"{op}-{next(client._counter)}"
    confirmed = asyncio.get_running_loop().create_future()
    client._confirmations[request] = confirmed
    client._send({"op": op, "name": name, "data": data, "keys": keys, "request": request,
                  **extra})
    error = await confirmed
    if error:
        raise ValueError(error)


def confirm(client: Client, msg: dict[str, Any]) -> None:
    """The scheduler's answer to :func:`store`, from the client's stream."""
    waiter = client._confirmations.pop(str(msg.get("request")), None)
    if waiter is not None and not waiter.done():
        waiter.set_result(msg.get("error"))


def abandon(client: Client, error: Exception) -> None:
    """The stream the requests went on is gone: no confirmation will come."""
    waiters, client._confirmations = client._confirmations, {}
    for waiter in waiters.values():
        if not waiter.done():
            waiter.set_exception(error)


def receive(client: Client, answer: dict[str, Any]) -> Any:
    """A value the scheduler handed out: our own futures, our own hold (on the loop)."""
    value = loads(answer["data"], client)
    if answer["keys"]:
        client._send({"op": "client-wants-keys", "keys": answer["keys"]})
    client._send({"op": "release-hold", "hold": answer["hold"]})
    return value


async def publish(client: Client, datasets: dict[str, Any], override: bool) -> None:
    for name, value in datasets.items():
        await store(client, "publish-dataset", name, value, override=override)


async def get(client: Client, name: str, default: Any = _MISSING) -> Any:
    answer = await client.ask_scheduler("get_dataset", name=name, client=client.id)
    if not answer["found"]:
        if default is not _MISSING:
            return default
        raise KeyError(f"no dataset named {name!r} is published")
    return receive(client, answer)


async def unpublish(client: Client, name: str) -> None:
    answer = await client.ask_scheduler("unpublish_dataset", name=name)
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


class DatasetCalls:
    """The Client methods of this module (a mixin of ``Client``)."""

    @property
    def _me(self) -> Client:
        return cast("Client", self)

    def publish_dataset(self, *args: Any, name: str | None = None, override: bool = False,
                        **kwargs: Any) -> Any:
        """Keep data (and the results its futures name) on the scheduler under a name."""
        if args and name is None:
            raise TypeError("publish_dataset needs name= for a positional dataset")
        named: dict[str, Any] = dict(kwargs)
        if args:
            named[str(name)] = args[0] if len(args) == 1 else list(args)
        client = self._me
        return client.sync(lambda: publish(client, named, override))

    def get_dataset(self, name: str, default: Any = _MISSING) -> Any:
        """A published dataset, its futures this client's own."""
        client = self._me
        return client.sync(lambda: get(client, name, default))

    def list_datasets(self) -> Any:
        client = self._me
        return client.sync(lambda: client.ask_scheduler("list_datasets"))

    def unpublish_dataset(self, name: str) -> Any:
        client = self._me
        return client.sync(lambda: unpublish(client, name))

    @property
    def datasets(self) -> Datasets:
        """The published datasets as a mapping: ``client.datasets["x"] = futures``."""
        return Datasets(self._me)
