"""Webhook fuzz: hostile input at the callback listener changes nothing and breaks nothing.

The listener (``TaskCore.webhook_app()`` served by ``start_listener``, its timeouts shortened)
runs on loopback in a thread of its own with a real SQLite store and a task core whose loops are
not started, holding one task in each interesting state (queued, submitted, processing,
delivered). Hypothesis throws at it, over raw sockets:

* tokens: random text, unicode, near-misses of the real tokens (one character changed, cut,
  extended, case-flipped), path traversal (``../``, ``%2e%2e%2f``, NUL, backslashes) and the
  real tokens themselves (with bodies that are not theirs);
* bodies: random JSON, random bytes, deep nesting, huge numbers, wrong types in task fields,
  the valid task objects of other tasks, stale statuses of the right task;
* headers: content types, bogus, duplicated, negative or missing ``Content-Length``, chunked
  bodies; sizes up to and over ``WEBHOOK_MAX_BODY``;
* compressed bodies: a task's own news gzipped or deflated, gzip bombs, noise, plain JSON, each
  under a ``Content-Encoding`` (gzip, br, zstd, lists...);
* slow and half-open clients: a task's own news cut short in the head or the body, sent at
  once, trickled, or followed by a half-close.

Properties: a forged or mismatched request never changes state (the tasks' rows with their
claims and poll times, the core's in-memory state, Kling calls), never gets a 2xx that accepts
it, never a 5xx; the server stays up (``/healthz`` answers after every example); nothing is
logged at ERROR. Then the positive control: only a real token with its task's body changes
state. A compressed body is refused (415) even when it is the task's own news; a request cut
short is never taken, and the server lets its client go within the timeouts (408 when the body
stopped). And memory: many hostile requests later, traced memory has not grown beyond a small
bound.

Parameters (environment): ``FUZZ_EXAMPLES`` (default 150 per property), ``FUZZ_SLOW_EXAMPLES``
(default 30, for the property that waits for timeouts), ``FUZZ_MEMORY_REQUESTS`` (default
1500). Hypothesis is derandomized: the same examples every run.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import random
import socket
import threading
import time
import tracemalloc
import zlib
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp.http_exceptions import HttpProcessingError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.kling.client import KlingClient
from bot.kling.models import TaskKind
from bot.tasks.core import TaskCore
from bot.tasks.models import Origin, TaskRecord, TaskState
from bot.tasks.store import open_store
from bot.tasks.webhook import CALLBACK_PATH, ListenerLimits, callback_token, start_listener
from kling_sim.simulator import KlingSimulator, SimulatorConfig
from testing.callbacks import gzip_bomb
from testing.settings import settings_for

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
SLOW_EXAMPLES = int(os.environ.get("FUZZ_SLOW_EXAMPLES", "30"))  # each waits for a timeout
MEMORY_REQUESTS = int(os.environ.get("FUZZ_MEMORY_REQUESTS", "1500"))
MAX_BODY = 8192
SECRET = "fuzz-webhook-secret-0123456789abcdef"
MEMORY_BOUND = 1024 * 1024  # bytes of traced growth allowed over MEMORY_REQUESTS requests
# The production limits, shortened so that slow examples take a fraction of a second.
LIMITS = ListenerLimits(head_timeout=0.5, body_timeout=0.5, linger=0.2)

FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
SLOW = settings(FUZZ, max_examples=SLOW_EXAMPLES)


# --- the listener, in a thread of its own ------------------------------------------------------


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []
        self.bad_http = 0

    def emit(self, record: logging.LogRecord) -> None:
        # aiohttp logs every request it cannot even parse (answered 400), and a body it could
        # not decode while draining it after the answer, at ERROR with a traceback: that is the
        # library's policy, not a failure of the listener. Anything else at ERROR (the
        # handler's own "callback handling failed", a 500) is.
        exc = record.exc_info[1] if record.exc_info else None
        if record.name == "aiohttp.server" and _client_error(exc):
            self.bad_http += 1
            return
        self.records.append(record)


def _client_error(exc: BaseException | None) -> bool:
    """An HTTP-level client error (answered 400 by aiohttp, or met while aiohttp drained a
    body nobody read after the answer), anywhere in the exception's chain."""
    while exc is not None:
        if isinstance(exc, HttpProcessingError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@dataclass
class Listener:
    """The callback listener on 127.0.0.1:``port``; ``call`` runs a coroutine on its loop."""

    tmp: Path
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    port: int = 0
    tasks: dict[str, TaskRecord] = field(default_factory=dict)  # by state name
    errors: _Errors = field(default_factory=_Errors)

    def call(self, work: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout)

    def start(self) -> None:
        threading.Thread(target=self.loop.run_forever, name="fuzz-listener", daemon=True).start()
        self.call(self._open())
        logging.getLogger().addHandler(self.errors)

    def close(self) -> None:
        logging.getLogger().removeHandler(self.errors)
        self.call(self._close())

        async def cancel_rest() -> None:
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        self.call(cancel_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)

    async def _open(self) -> None:
        self.sim = KlingSimulator(SimulatorConfig(submitted_seconds=30, processing_seconds=30))
        await self.sim.start()
        self.settings = settings_for(
            self.sim,
            public_base_url="http://127.0.0.1:9",  # only used to build callback URLs
            webhook_secret=SECRET,
            webhook_max_body=MAX_BODY,
            data_dir=self.tmp / "data",
            database_url=f"sqlite:///{self.tmp / 'bot.db'}",
        )
        self.session = aiohttp.ClientSession()
        self.stores = open_store(self.settings.database_url)
        await self.stores.open()
        self.store = self.stores.tasks
        client = KlingClient.from_settings(self.settings, self.session)
        self.core = TaskCore(
            settings=self.settings,
            store=self.store,
            guild_settings=self.stores.guild_settings,
            client=client,
        )
        for state in ("queued", "submitted", "processing", "delivered"):
            self.tasks[state] = await self._task(state)
        self.runner = await start_listener(self.core.webhook_app(), "127.0.0.1", 0, LIMITS)
        self.port = self.runner.addresses[0][1]

    async def _task(self, state: str) -> TaskRecord:
        external = f"ext-{state}-{random.Random(state).randrange(10**9)}"
        record = await self.store.create(
            kind=TaskKind.IMAGE,
            provider="simulator",
            simulated=True,
            external_task_id=external,
            params={"prompt": "fuzz"},
            input_labels=["subject1"],
            slots=1,
            origin=Origin(channel_id=1, user_id=1, guild_id=1),
            callback_token=callback_token(SECRET, external),
        )
        path = {
            "queued": [],
            "submitted": [TaskState.SUBMITTED],
            "processing": [TaskState.SUBMITTED, TaskState.PROCESSING],
            "delivered": [TaskState.SUBMITTED, TaskState.SUCCEED, TaskState.DELIVERED],
        }[state]
        current = TaskState.QUEUED
        for target in path:
            fields: dict[str, Any] = {}
            if target is TaskState.SUBMITTED:
                fields = {"kling_task_id": f"9{record.id}00000", "kling_status": "submitted"}
            elif target is TaskState.PROCESSING:
                fields = {"kling_status": "processing"}
            elif target is TaskState.SUCCEED:
                fields = {"kling_status": "succeed"}
            assert await self.store.transition(record.id, [current], target, **fields)
            current = target
        fresh = await self.store.get(record.id)
        assert fresh is not None
        return fresh

    async def _close(self) -> None:
        await self.runner.cleanup()
        await self.core.close()
        await self.stores.close()
        await self.session.close()
        await self.sim.close()

    # --- what must not change

    def snapshot(self) -> Any:
        async def take() -> Any:
            # The rows hold the coordination too (claims, each task's next poll); the core's
            # memory is its early statuses, its background jobs and admission's book.
            rows = await self.store.list_tasks(limit=100)
            core = self.core
            book = core.admission.book
            return (
                rows,
                {row.id: core.early.peek(row.id) for row in rows},
                len(core.jobs.running),
                (dict(book.attempts), list(book.wakeups), dict(book.caps)),
                dict(self.sim.calls),
            )

        return self.call(take())

    @property
    def tokens(self) -> list[str]:
        return [t.callback_token or "" for t in self.tasks.values()]


@pytest.fixture(scope="module")
def listener(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Listener]:
    server = Listener(tmp_path_factory.mktemp("fuzz"))
    server.start()
    try:
        yield server
    finally:
        server.close()


# --- raw HTTP ------------------------------------------------------------------------------------


RESET = -1  # the server answered and closed before reading everything sent: the kernel reset
HUNG_UP = -2  # the server waited for more than was sent, until the client gave up (a failure)
PATIENCE = 1.0  # seconds to wait for an answer before hanging up (a real client would too)


def raw_request(port: int, data: bytes) -> tuple[int, bytes]:
    """Send ``data`` as is and return (status, whole answer), like a plain HTTP/1.1 client.

    Status 0: closed without a word. ``RESET``: the connection was reset because the server
    stopped reading early (a 413 before the body, a request line too long), which on Linux
    discards the answer it had sent. ``HUNG_UP``: no answer within PATIENCE, so the client
    closed its side (the server was still waiting, longer than its timeouts allow)."""
    status_override = 0
    with socket.create_connection(("127.0.0.1", port), timeout=PATIENCE) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            status_override = RESET
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                status_override = status_override or RESET
                break
            except TimeoutError:
                if status_override == HUNG_UP:
                    break
                status_override = HUNG_UP
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
                continue
            if not chunk:
                break
            chunks.append(chunk)
    answer = b"".join(chunks)
    return (final_status(answer) or status_override), answer


def final_status(answer: bytes) -> int:
    """The status of the final answer, past interim ones (100 Continue); 0 if there is none."""
    status, rest = 0, answer
    while rest:
        head = rest.split(b"\r\n", 1)[0].split()
        status = int(head[1]) if len(head) >= 2 and head[1].isdigit() else 0
        if not 100 <= status < 200 or b"\r\n\r\n" not in rest:
            break
        rest = rest.split(b"\r\n\r\n", 1)[1]
    return 0 if 100 <= status < 200 else status


# The latest the server may close a client that stopped mid-request: head, body, lingering.
LET_GO = LIMITS.head_timeout + LIMITS.body_timeout + LIMITS.linger + 1.0


def partial_request(port: int, data: bytes, how: str) -> bytes:
    """Send ``data``, part of a request, then wait for the server to close the connection.

    ``how``: "stall" sends it at once, "trickle" in three pieces a little apart, "half-close"
    at once and then shuts the client's side (a half-open connection). Returns what the server
    answered before closing; fails if it kept the connection open beyond ``LET_GO``."""
    deadline = time.monotonic() + LET_GO
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=LET_GO) as sock:
        if how == "trickle":
            step = max(1, len(data) // 3)
            for i in range(0, len(data), step):
                sock.sendall(data[i : i + step])
                time.sleep(0.05)
        else:
            sock.sendall(data)
        if how == "half-close":
            sock.shutdown(socket.SHUT_WR)
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            except TimeoutError:
                raise AssertionError(f"a {how} client was kept open over {LET_GO} s") from None
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def build(
    path: bytes,
    body: bytes,
    *,
    content_type: bytes | None = b"application/json",
    length: bytes | None = None,
    extra: list[bytes] = (),  # type: ignore[assignment]
    chunked: bool = False,
) -> bytes:
    lines = [b"POST " + path + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    if content_type is not None:
        lines.append(b"Content-Type: " + content_type)
    if chunked:
        lines.append(b"Transfer-Encoding: chunked")
        body = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    elif length is None:
        lines.append(f"Content-Length: {len(body)}".encode())
    elif length != b"":
        lines.append(b"Content-Length: " + length)
    lines.extend(extra)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def health(port: int) -> tuple[int, bytes]:
    return raw_request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")


# --- strategies ----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=25,
)
wrong_types = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3), st.text(max_size=20),
)  # fmt: skip
statuses = st.sampled_from(["submitted", "processing", "succeed", "failed", "SUCCEED", "", "x"])


def task_body(task_id: Any, external: Any, status: Any, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"task_id": task_id, "task_status": status}
    if external is not _ABSENT:
        body["task_info"] = {"external_task_id": external}
    body.update(extra)
    return body


_ABSENT = object()


@st.composite
def hostile_bodies(draw: st.DrawFn, listener: Listener, target: TaskRecord | None) -> bytes:
    """A body that is not ``target``'s own news: noise, other tasks' objects, wrong types..."""
    others = [t for t in listener.tasks.values() if target is None or t.id != target.id]
    other = draw(st.sampled_from(others))
    kind = draw(
        st.sampled_from(
            ["json", "bytes", "deep", "number", "types", "other", "half", "empty", "stale", "big"]
        )
    )
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=2048))
    if kind == "deep":
        depth = draw(st.integers(1, 200_000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        return (opener * depth + "1" + closer * depth).encode()
    if kind == "number":
        number = draw(
            st.sampled_from(["1" * 5000, "1e999", "-1e400", "9" * 400 + ".5e-99999", str(2**200)])
        )
        field_name = draw(st.sampled_from(["task_id", "created_at", "final_unit_deduction", "x"]))
        return f'{{"{field_name}": {number}, "task_status": "succeed"}}'.encode()
    if kind == "types":
        base = task_body(other.kling_task_id, other.external_task_id, "succeed")
        base[draw(st.sampled_from(["task_id", "task_status", "task_info", "task_result"]))] = draw(
            wrong_types
        )
        return json.dumps(base).encode()
    if kind == "other":  # another task's valid object, every status
        return json.dumps(
            task_body(other.kling_task_id or "123", other.external_task_id, draw(statuses))
        ).encode()
    if kind == "half" and target is not None:  # right on one id, wrong on the other
        if target.kling_task_id is None:
            # Before the create answer only the external id identifies the task: a body with
            # the right one IS the task's own (early) callback, so only a wrong one is hostile.
            body = task_body(target.external_task_id + "x", other.external_task_id, "failed")
        elif draw(st.booleans()):
            body = task_body(target.kling_task_id, other.external_task_id, draw(statuses))
        else:
            body = task_body(other.kling_task_id or "5", target.external_task_id, draw(statuses))
        return json.dumps(body).encode()
    if kind == "stale" and target is not None and target.kling_task_id is not None:
        # The right task, but nothing new: the status it already has (or an older one).
        status = draw(st.sampled_from(["submitted", target.kling_status or "submitted"]))
        return json.dumps(task_body(target.kling_task_id, target.external_task_id, status)).encode()
    if kind == "big":  # a valid-looking object padded past the limit
        size = draw(st.sampled_from([MAX_BODY - 1, MAX_BODY, MAX_BODY + 1, 3 * MAX_BODY]))
        core = json.dumps(task_body(other.kling_task_id, other.external_task_id, "succeed"))
        return (core + " " * max(0, size - len(core))).encode()
    return b""


TRAVERSALS = [
    "..", "../healthz", "../../metrics", "..%2F..%2Fhealthz", "%2e%2e%2fmetrics", "%00", "a%00b",
    "..\\..\\", "%252e%252e", "./", "%2F", "/", "?x=1", "#frag",
]  # fmt: skip
CONTENT_TYPES = [
    b"application/json", b"application/json; charset=utf-8", b"text/plain", None,
    b"multipart/form-data; boundary=xyz", b"application/x-www-form-urlencoded", b"\xff\xfe",
    b"application/json; charset=klingon",
]  # fmt: skip
LENGTHS = [
    None, None, None, b"", b"0", b"1", b"-1", b"abc", b"99999999999999999999", b"1e3",
    str(MAX_BODY + 1).encode(), b"10, 20",
]  # fmt: skip
EXTRA_HEADERS = [
    b"Content-Length: 3", b"X-Forwarded-For: 1.2.3.4", b"Expect: 100-continue",
    b"Content-Encoding: gzip", b"Transfer-Encoding: identity",
]  # fmt: skip


@st.composite
def forged_tokens(draw: st.DrawFn, real: list[str]) -> bytes:
    """A callback path whose token is not any task's: raw bytes for the request line."""
    kind = draw(st.sampled_from(["text", "hex", "near", "traversal", "unicode", "long"]))
    if kind == "text":
        token = draw(st.text(min_size=1, max_size=64))
    elif kind == "hex":
        token = draw(st.from_regex(r"[0-9a-f]{32}", fullmatch=True))
    elif kind == "near":
        base = draw(st.sampled_from(real))
        i = draw(st.integers(0, len(base) - 1))
        how = draw(st.sampled_from(["flip", "cut", "extend", "upper", "insert", "drop"]))
        if how == "flip":
            token = base[:i] + ("0" if base[i] != "0" else "1") + base[i + 1 :]
        elif how == "cut":
            token = base[:i] or "x"
        elif how == "extend":
            token = base + draw(st.text(alphabet="0123456789abcdef/%.", min_size=1, max_size=4))
        elif how == "upper":
            token = base.upper() if base.upper() != base else base + "A"
        elif how == "insert":
            token = base[:i] + draw(st.sampled_from(["/", "%00", " ", "..", "\\"])) + base[i:]
        else:
            token = base[:i] + base[i + 1 :]
    elif kind == "traversal":
        token = draw(st.sampled_from(TRAVERSALS)) + draw(st.sampled_from(["", real[0]]))
    elif kind == "unicode":
        token = draw(st.text(alphabet=st.characters(min_codepoint=0x80), min_size=1, max_size=16))
    else:
        token = draw(st.sampled_from(real)) * draw(st.integers(2, 400))
    raw = draw(st.booleans())
    if raw and all(0x21 <= ord(c) < 0x7F for c in token):
        path = CALLBACK_PATH + token  # as is: dots, slashes and percent escapes unquoted
    else:
        path = CALLBACK_PATH + quote(token, safe=draw(st.sampled_from(["", "/", "%"])))
    return path.encode("utf-8", "surrogatepass")


BOMB = gzip_bomb(5)  # 5 MiB of zeros in about 5 KiB: under MAX_BODY, so its head is taken
ENCODINGS = [
    "gzip", "GZIP", "x-gzip", "deflate", "br", "zstd", "compress", "gzip, identity",
    "identity, gzip", "identity,deflate", "aes128gcm",
]  # fmt: skip


@st.composite
def compressed(draw: st.DrawFn, plain: bytes) -> tuple[bytes, str]:
    """(body, Content-Encoding): ``plain`` packed as declared, a bomb, noise, or not packed."""
    encoding = draw(st.sampled_from(ENCODINGS))
    kind = draw(st.sampled_from(["packed", "bomb", "noise", "plain"]))
    if kind == "packed":
        packer = zlib.compressobj(wbits=31 if "gzip" in encoding.lower() else 15)
        return packer.compress(plain) + packer.flush(), encoding
    if kind == "bomb":
        return BOMB, encoding
    if kind == "noise":
        return draw(st.binary(min_size=1, max_size=512)), encoding
    return plain, encoding


headers = st.fixed_dictionaries(
    {
        "content_type": st.sampled_from(CONTENT_TYPES),
        "length": st.sampled_from(LENGTHS),
        "extra": st.lists(st.sampled_from(EXTRA_HEADERS), max_size=2),
        "chunked": st.booleans(),
    }
)

NOT_ACCEPTED = frozenset({RESET, 400, 404, 405, 408, 411, 413, 414, 415, 417, 431})


def promised_more(hdrs: dict[str, Any], body: bytes) -> bool:
    """Whether the headers announce more body bytes than were sent."""
    values = [hdrs["length"], *(h.split(b":", 1)[1] for h in hdrs["extra"] if b"Length" in h)]
    declared = [int(v) for v in values if v is not None and v.strip().isdigit()]
    return not hdrs["chunked"] and any(n > len(body) for n in declared)


def check_unchanged(listener: Listener, before: Any, status: int, answer: bytes) -> None:
    assert status != 0, f"closed without an answer: {answer[:200]!r}"
    assert status < 500, f"HTTP {status}: {answer[:300]!r}"
    check_nothing_changed(listener, before)


def check_nothing_changed(listener: Listener, before: Any) -> None:
    after = listener.snapshot()
    assert after == before, "a hostile request changed state"
    alive = health(listener.port)
    assert alive[0] == 200, f"the listener stopped answering /healthz: {alive}"
    errors = [r.getMessage() for r in listener.errors.records]
    listener.errors.records.clear()  # one example's finding must not fail the next ones
    assert not errors, errors


# --- properties ----------------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_forged_tokens_change_nothing(listener: Listener, data: st.DataObject) -> None:
    path = data.draw(forged_tokens(listener.tokens), label="path")
    body = data.draw(hostile_bodies(listener, None), label="body")
    if data.draw(st.booleans(), label="valid body of another task"):
        task = data.draw(st.sampled_from(list(listener.tasks.values())))
        body = json.dumps(
            task_body(task.kling_task_id or "1", task.external_task_id, "succeed")
        ).encode()
    hdrs = data.draw(headers, label="headers")
    before = listener.snapshot()
    status, answer = raw_request(listener.port, build(path, body, **hdrs))
    check_unchanged(listener, before, status, answer)
    assert status in NOT_ACCEPTED, (status, answer[:300])


@FUZZ
@given(data=st.data())
def test_real_tokens_with_bodies_not_their_own_change_nothing(
    listener: Listener, data: st.DataObject
) -> None:
    state = data.draw(st.sampled_from(sorted(listener.tasks)), label="task")
    task = listener.tasks[state]
    body = data.draw(hostile_bodies(listener, task), label="body")
    hdrs = data.draw(headers, label="headers")
    path = (CALLBACK_PATH + (task.callback_token or "")).encode()
    before = listener.snapshot()
    status, answer = raw_request(listener.port, build(path, body, **hdrs))
    check_unchanged(listener, before, status, answer)
    if status == 200:  # only "nothing new" may be answered 200, and it must say so
        assert b'"ignored"' in answer, answer[-300:]
    elif status == 408:  # the body the headers promised never came, and it was said in time
        assert promised_more(hdrs, body), (hdrs, len(body))
    else:
        assert status in NOT_ACCEPTED, (status, answer[:300])


def own_news(task: TaskRecord) -> bytes:
    """A body the task would take as news: its own ids, a status it has not reached."""
    return json.dumps(
        task_body(task.kling_task_id or "kling-not-yet", task.external_task_id, "failed")
    ).encode()


@FUZZ
@given(data=st.data())
def test_compressed_bodies_are_refused_without_inflating(
    listener: Listener, data: st.DataObject
) -> None:
    """Even a task's own news is refused (415) when compressed, and bombs stall nothing."""
    task = listener.tasks[data.draw(st.sampled_from(sorted(listener.tasks)), label="task")]
    real = data.draw(st.booleans(), label="real token")
    path = (
        (CALLBACK_PATH + (task.callback_token or "")).encode()
        if real
        else data.draw(forged_tokens(listener.tokens), label="path")
    )
    body, encoding = data.draw(compressed(own_news(task)), label="body")
    request = build(
        path,
        body,
        extra=[b"Content-Encoding: " + encoding.encode()],
        chunked=data.draw(st.booleans(), label="chunked"),
    )
    before = listener.snapshot()
    status, answer = raw_request(listener.port, request)
    check_unchanged(listener, before, status, answer)
    if real:
        assert status == 415, (status, answer[:300])
    else:  # a path too odd to route may be refused before the handler sees the encoding
        assert status in {400, 404, 415, RESET}, (status, answer[:300])


@SLOW
@given(data=st.data())
def test_slow_and_half_open_clients_change_nothing_and_are_let_go(
    listener: Listener, data: st.DataObject
) -> None:
    """A genuine callback cut short, however it is sent, is never taken and never held."""
    task = listener.tasks[data.draw(st.sampled_from(sorted(listener.tasks)), label="task")]
    path = (CALLBACK_PATH + (task.callback_token or "")).encode()
    request = build(path, own_news(task), chunked=data.draw(st.booleans(), label="chunked"))
    head = request.index(b"\r\n\r\n") + 4
    where = data.draw(st.sampled_from(["nothing", "head", "body"]), label="stops in")
    if where == "nothing":
        cut = 0
    elif where == "head":
        cut = data.draw(st.integers(1, head - 1), label="cut")
    else:
        cut = data.draw(st.integers(head, len(request) - 1), label="cut")
    how = data.draw(st.sampled_from(["stall", "trickle", "half-close"]), label="how")
    before = listener.snapshot()
    answer = partial_request(listener.port, request[:cut], how)
    status = final_status(answer)
    if where == "body" and how != "half-close":  # the rest of the body never came: said so
        assert status == 408, (status, answer[:300])
    else:  # no complete head, or the client's EOF mid-body: closed, at most told it is malformed
        assert status in {0, 400}, (status, answer[:300])
    check_nothing_changed(listener, before)


def test_only_the_real_token_with_its_own_body_changes_state(tmp_path: Path) -> None:
    """The positive control: the listener does act on a genuine callback."""
    server = Listener(tmp_path)
    server.start()
    try:
        submitted, queued = server.tasks["submitted"], server.tasks["queued"]
        good = task_body(submitted.kling_task_id, submitted.external_task_id, "processing")
        path = (CALLBACK_PATH + (submitted.callback_token or "")).encode()
        # The same body under a near-miss token is refused, and changes nothing.
        before = server.snapshot()
        near = (CALLBACK_PATH + (submitted.callback_token or "")[:-1] + "0").encode()
        status, answer = raw_request(server.port, build(near, json.dumps(good).encode()))
        check_unchanged(server, before, status, answer)
        assert status == 404
        status, answer = raw_request(server.port, build(path, json.dumps(good).encode()))
        assert status == 200 and b'"accepted"' in answer, answer

        async def processing() -> TaskState | None:
            for _ in range(200):
                record = await server.store.get(submitted.id)
                if record is not None and record.state is TaskState.PROCESSING:
                    return record.state
                await asyncio.sleep(0.01)
            return None

        assert server.call(processing()) is TaskState.PROCESSING
        # A callback that beats the create answer: held in memory for the task, by external id.
        early = task_body("kling-unknown-yet", queued.external_task_id, "processing")
        path = (CALLBACK_PATH + (queued.callback_token or "")).encode()
        status, answer = raw_request(server.port, build(path, json.dumps(early).encode()))
        assert status == 200 and b'"accepted"' in answer, answer
        assert server.core.early.peek(queued.id) is not None
        assert not [r.getMessage() for r in server.errors.records]
    finally:
        server.close()


def test_memory_stays_bounded_under_hostile_requests(listener: Listener) -> None:
    rng = random.Random(99)
    real = listener.tokens
    deep = b"[" * 50_000 + b"]" * 50_000
    task = listener.tasks["submitted"]
    other = json.dumps(task_body("1", "nope", "succeed")).encode()
    requests = [
        lambda: build(CALLBACK_PATH.encode() + os.urandom(16).hex().encode(), b"{}"),
        lambda: build((CALLBACK_PATH + rng.choice(real)).encode(), os.urandom(rng.randrange(600))),
        lambda: build((CALLBACK_PATH + (task.callback_token or "")).encode(), deep),
        lambda: build((CALLBACK_PATH + rng.choice(real)).encode(), other),
        lambda: build((CALLBACK_PATH + rng.choice(real)).encode(), b" " * (MAX_BODY + 10)),
        lambda: build((CALLBACK_PATH + "\u00e9" * 50).encode(), b"x", length=b"-5"),
    ]

    def burst(n: int) -> None:
        for _ in range(n):
            status, answer = raw_request(listener.port, rng.choice(requests)())
            assert 0 < status < 500, (status, answer[:200])

    # Log records would pile up in pytest's log capture, not in the listener: measure without.
    logging.disable(logging.CRITICAL)
    tracemalloc.start(8)
    try:
        burst(300)  # warm-up: caches, pools, interned strings, metric series
        listener.call(asyncio.sleep(0.1))
        gc.collect()
        start, _ = tracemalloc.get_traced_memory()
        first = tracemalloc.take_snapshot()
        burst(MEMORY_REQUESTS)
        listener.call(asyncio.sleep(0.1))  # let the server finish its last connection
        gc.collect()
        end, peak = tracemalloc.get_traced_memory()
        grown = tracemalloc.take_snapshot().compare_to(first, "traceback")[:8]
    finally:
        tracemalloc.stop()
        logging.disable(logging.NOTSET)
    growth = end - start
    print(
        f"\nwebhook fuzz memory: {MEMORY_REQUESTS} hostile requests, traced memory "
        f"{start / 1024:.0f} KiB -> {end / 1024:.0f} KiB (growth {growth / 1024:.0f} KiB, "
        f"peak {peak / 1024:.0f} KiB)"
    )
    where = "\n".join(str(stat) + "\n" + "\n".join(stat.traceback.format()) for stat in grown)
    assert growth < MEMORY_BOUND, f"grew by {growth} bytes in {MEMORY_REQUESTS} requests:\n{where}"
    assert health(listener.port)[0] == 200
