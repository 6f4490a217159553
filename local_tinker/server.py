"""A server for the tinker SDK's HTTP protocol (tinker 0.38), computing on the local runtime.

Point the unmodified SDK at it with `tinker.ServiceClient(base_url=..., api_key=...)`: every SDK
behaviour (futures that double as clients, retries, `.done()`, `await`, context managers,
argument checks) is then the SDK's own. Work-creating calls answer at once with a request id;
the SDK polls `/api/v1/retrieve_future` until the result is ready, exactly as against Tinker.

Walls:
- Identity: the SDK sends its api_key (X-API-Key) with every request. Sessions, models,
  samplers, request ids and checkpoints belong to the key that made them (checkpoints record a
  SHA-256 of it), and another key is told they do not exist (404). On loopback with no operator
  key any `tml-` key is accepted and each is its own identity; with `api_keys` (which binding
  beyond loopback requires) only those are.
- Files: every path a request names resolves inside the root or is refused (runtime.Storage).
- Request ids carry a random prefix per server start, so that a client polling across a restart
  is told its request is unknown (at once) instead of receiving another request's result.
- Limits: request bodies (413), samples per request, prompt + max_tokens within the model's
  context; malformed payloads and bad parameters are 4xx naming the reason.

What the local backend cannot serve (custom losses run server-side, external weight export,
publishing, images, optimizers other than Adam, ...) fails with an error the SDK raises, naming
the feature and the SDK call that asked for it.

Test knobs, server-side so that the SDK's own retry logic is what recovers:
- `latency_s`: a result is handed out no earlier than this long after its request arrived,
  like a network round trip (round trips of concurrent calls overlap).
- `fault_rate`: the probability that a request (submission or poll) fails with HTTP 503 before
  it is processed; the SDK retries it, so results are identical to a run without faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import ipaddress
import itertools
import json
import logging
import math
import os
import random
import re
import secrets
import socket
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic
import torch
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from tinker import types

from . import engine, wire
from .models import UnknownModelError, available_models, load_base_model
from .runtime import (
    LOCAL_API_KEY,
    NotFound,
    Runtime,
    Sampler,
    StorageFailure,
    UserError,
    check_token_ids,
    context_length,
    default_root,
    key_owner,
)
from .scheduler import Job, Scheduler
from .threads import ThreadPolicy

__all__ = ["LOCAL_API_KEY", "LocalTinkerServer", "PortInUse", "SettingsError", "embedded",
           "local_service", "serve_forever"]

log = logging.getLogger("local_tinker")
POLL_WAIT_S = 20.0  # a poll waits this long for its result, then says "try again"
KEPT_RESULTS = 20_000  # finished results kept for (re)polling; the oldest are dropped
# The SDK heartbeats every 10 s while its ServiceClient lives; a session silent this long had
# its client closed or garbage-collected, and its models' memory is released.
SESSION_TIMEOUT_S = 120.0
PROTO_RESULTS = (types.SampleResponse, types.ForwardBackwardOutput)
# A body bigger than this is refused (413). The SDK is told to split forward_backward calls into
# requests of at most half of it, so that no batch it sends meets the limit.
MAX_BODY_BYTES = 128 * 2**20
MAX_NUM_SAMPLES = 256  # per sample call: rows x vocabulary floats per generated token
DEFAULT_MAX_TOKENS = 256  # for a sample call that gives none (or the rest of the context)
MIN_OPERATOR_KEY_CHARS = 20
ENVIRONMENT_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EIO}

# Routes of tinker 0.38's SDK that the local backend does not serve: path -> (methods, feature,
# the SDK call that uses it).
NOT_SERVED = {
    "/api/v1/create_custom_loss": (["POST"], "server-side custom losses",
                                   "ServiceClient.create_custom_loss; this server has the SDK "
                                   "run custom losses client-side"),
    "/api/v1/save_weights_external": (["POST"], "external weight export",
                                      "TrainingClient.save_weights_external"),
    "/api/v1/copy_weights": (["POST"], "copying checkpoints between projects",
                             "ServiceClient.copy_weights, RestClient.copy_weights"),
    "/api/v1/join_sampling_session": (["POST"], "joining sampling sessions",
                                      "SamplingClient with sample_join_sampling_session"),
    "/api/v1/retrieve_futures": (["POST"], "batched future polling",
                                 "SamplingClient with sample_use_retrieve_futures"),
    "/api/v1/auth/token": (["POST"], "token exchange (JWT auth)",
                           "ServiceClient with pjwt_auth_enabled; send the API key itself"),
    "/api/v1/training_runs": (["GET"], "listing training runs",
                              "RestClient.list_training_runs"),
    "/api/v1/training_runs/{run_id}": (["GET"], "training run records",
                                       "RestClient.get_training_run, "
                                       "RestClient.get_training_run_by_tinker_path"),
    "/api/v1/weights_info": (["POST"], "weights info",
                             "RestClient.get_weights_info_by_tinker_path"),
    "/api/v1/checkpoints": (["GET"], "listing every checkpoint of a user",
                            "RestClient.list_user_checkpoints; list a run's checkpoints with "
                            "RestClient.list_checkpoints"),
    "/api/v1/sessions": (["GET"], "session records", "RestClient.list_sessions"),
    "/api/v1/sessions/search": (["POST"], "session search", "RestClient.search_sessions"),
    "/api/v1/sessions/{session_id}": (["GET"], "session records", "RestClient.get_session"),
    "/api/v1/sessions/{session_id}/project": (["PUT"], "projects",
                                              "RestClient.assign_session_project"),
    "/api/v1/sessions/{session_id}/trace_export": (["GET"], "trace export",
                                                   "RestClient.export_session_trace"),
    "/api/v1/audit": (["GET"], "audit logs", "AdminClient.get_audit_log"),
    "/api/v1/billing/usage/events": (["GET"], "billing usage", "AdminClient.get_billing_usage"),
    "/api/v1/billing/usage/checkpoints/current": (
        ["GET"], "billing usage", "AdminClient.get_current_checkpoint_storage_usage"),
}
# .../checkpoints/<kind>/<name>/<action>: (method, action) -> (feature, SDK call)
CHECKPOINT_ACTIONS = {
    ("POST", "publish"): ("publishing checkpoints",
                          "RestClient.publish_checkpoint_from_tinker_path"),
    ("DELETE", "publish"): ("unpublishing checkpoints (none is ever published here)",
                            "RestClient.unpublish_checkpoint_from_tinker_path"),
    ("PUT", "ttl"): ("changing a checkpoint's ttl (pass ttl_seconds when saving instead)",
                     "RestClient.set_checkpoint_ttl_from_tinker_path"),
    ("GET", "external_weights_urls"): ("external weight URLs",
                                       "RestClient.get_external_weights_urls"),
}


class PortInUse(OSError):
    pass


class SettingsError(ValueError):
    """A server setting that cannot work (the serve command's user error: exit 2)."""


class EnvironmentFailure(OSError):
    """The machine fails the server (a read-only or full root): exit 1, one line."""


class Unauthorized(Exception):
    pass


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body over this server's limit of {limit} bytes")


class UnsupportedMedia(ValueError):
    pass


@dataclass
class _Pending:
    """One request's future, as the SDK polls it."""

    owner: str
    ready: asyncio.Event
    not_before: float
    result: Any = None
    error: str | None = None
    category: str = "user"


@dataclass
class _Session:
    owner: str
    models: list[str] = field(default_factory=list)
    samplers: list[str] = field(default_factory=list)
    last_seen: float = field(default_factory=time.monotonic)


class _BodyLimit:
    """ASGI wrapper: a request body over `limit` bytes raises BodyTooLarge as it is read, which
    the route wrapper answers with 413 (a declared Content-Length is checked there first)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise BodyTooLarge(self.limit)
            return message
        await self.app(scope, counted, send)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_api_keys(keys: Sequence[str]) -> list[str]:
    """The operator's keys, each checked usable: the SDK sends only keys starting `tml-`."""
    for key in keys:
        if not key.startswith("tml-"):
            raise SettingsError("an --api_key must start with 'tml-' (the tinker SDK sends no "
                                "other keys)")
        if key == LOCAL_API_KEY:
            raise SettingsError("--api_key is the public placeholder key "
                                "(local_tinker.LOCAL_API_KEY); choose a secret one")
        if len(key) < MIN_OPERATOR_KEY_CHARS:
            raise SettingsError(f"an --api_key must be at least {MIN_OPERATOR_KEY_CHARS} "
                                "characters long, so that it cannot be guessed")
    return list(keys)


def resolve_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, ValueError):
        raise SettingsError(f"--device {device!r} is not a torch device (cpu, cuda, cuda:N, "
                            "mps)") from None
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (chosen.index or 0) >= count:
            raise SettingsError(f"--device {device}: this machine has {count} CUDA device(s)")
    elif chosen.type == "mps":
        if not torch.backends.mps.is_available():
            raise SettingsError(f"--device {device}: MPS is not available on this machine")
    elif chosen.type != "cpu":
        raise SettingsError(f"--device {device}: the local backend runs on cpu, cuda or mps")
    return chosen


def prepare_root(root: Path) -> Path:
    """The checkpoint root, created and checked writable: a bad choice is a SettingsError, a
    machine that cannot write (read-only, full) an EnvironmentFailure."""
    if root.exists() and not root.is_dir():
        raise SettingsError(f"--root {root} is a file, not a directory")
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-probe-{os.getpid()}"
        with open(probe, "wb") as handle:
            handle.write(b"x")
            handle.flush()
            os.fsync(handle.fileno())
        probe.unlink()
    except OSError as exc:
        if exc.errno in ENVIRONMENT_ERRNOS:
            raise EnvironmentFailure(f"--root {root} cannot be written ({exc.strerror})") \
                from None
        raise SettingsError(f"--root {root} cannot be used ({exc.strerror})") from None
    return root


def _check_unit_interval(name: str, value: float) -> None:
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise SettingsError(f"{name} must be between 0 and 1, got {value}")


# How each refusal is answered, most specific first. The SDK raises 4xx other than 408, 409
# and 429 at once; it retries 5xx, so a failed disk (507) that is freed meanwhile recovers.
STATUS_OF: tuple[tuple[type[Exception] | tuple[type[Exception], ...], int], ...] = (
    (Unauthorized, 401), (BodyTooLarge, 413), (NotFound, 404), (UnsupportedMedia, 415),
    (StorageFailure, 507), ((UserError, wire.UnsupportedInput, wire.MalformedInput,
                             ValueError), 400))
REFUSALS = (Unauthorized, BodyTooLarge, StorageFailure, ValueError)


class LocalTinkerServer:
    """The Starlette app and its state; `app` is an ASGI application.

    `api_keys`: the only keys served (None or empty: any `tml-` key, for loopback use).
    `any_model_path`: serve a base model named by any path; otherwise only the built-in and
    cached models, and paths named in `preload` (what the operator chose)."""

    def __init__(self, root: Path | None = None, *, device: str | None = None,
                 latency_s: float = 0.0, fault_rate: float = 0.0, fault_seed: int = 0,
                 preload: list[str] | None = None, api_keys: Sequence[str] | None = None,
                 any_model_path: bool = True, max_body_bytes: int = MAX_BODY_BYTES,
                 threads: int | None = None, sample_logprobs: str = "exact",
                 compile: bool = False) -> None:
        _check_unit_interval("--fault_rate", fault_rate)
        if sample_logprobs not in engine.SAMPLE_LOGPROBS:
            raise SettingsError(f"--sample_logprobs must be one of "
                                f"{', '.join(engine.SAMPLE_LOGPROBS)}, got {sample_logprobs!r}")
        if not (math.isfinite(latency_s) and latency_s >= 0):
            raise SettingsError(f"--latency_s must be a finite number of seconds >= 0, "
                                f"got {latency_s}")
        self.root = prepare_root(Path(root) if root else default_root())
        self.runtime = Runtime(self.root, resolve_device(device))
        self.runtime.sample_logprobs = sample_logprobs
        self.runtime.compile = compile
        if compile:  # the first step then takes a minute: say why before it starts
            print("local backend: training passes through torch.compile (each model's first "
                  "forward_backward compiles, ~20-60 s)", file=sys.stderr, flush=True)
        thread_policy = ThreadPolicy(threads)  # None: chosen from cores and load (threads.py)
        self.latency_s = latency_s
        self.fault_rate = fault_rate
        self.faults_injected = 0
        self.max_body_bytes = max_body_bytes
        self._accepted = {key_owner(key) for key in check_api_keys(api_keys or [])}
        self._any_model_path = any_model_path
        self._fault_rng = random.Random(fault_seed)
        self._epoch = secrets.token_hex(6)  # request ids differ from any earlier server's
        self._pending: dict[str, _Pending] = {}
        self._ids = itertools.count(1)
        self._sessions: dict[str, _Session] = {}  # live ones
        self._finished: dict[str, str] = {}  # finished session ids -> owner
        self._owners: dict[str, str] = {}  # live model and sampler ids -> owner
        self._seen: dict[tuple[str, int], str] = {}  # (lane, seq_id) -> request id: resends
        self._samplers: dict[str, types.GetSamplerResponse] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._preloaded: set[str] = set()
        for name in preload or []:
            try:
                load_base_model(name)
            except UnknownModelError as exc:
                raise SettingsError(f"--model {name}: {exc}") from None
            self._preloaded.add(name)
        # Last: nothing above may leave a worker thread behind.
        self.scheduler = Scheduler(thread_policy)
        self.app = _BodyLimit(Starlette(routes=self._routes()), max_body_bytes)

    @property
    def serves_any_key(self) -> bool:
        return not self._accepted

    # -- plumbing -------------------------------------------------------------------------
    def _routes(self) -> list[Route]:
        post, get = ["POST"], ["GET"]
        table: list[tuple[str, Callable[[Request], Awaitable[Response]], list[str]]] = [
            ("/api/v1/healthz", self.healthz, get),
            ("/api/v1/client/config", self.client_config, post),
            ("/api/v1/client/dynamic_config", self.client_dynamic_config, [*get, *post]),
            ("/api/v1/get_server_capabilities", self.capabilities, get),
            ("/api/v1/create_session", self.create_session, post),
            ("/api/v1/session_heartbeat", self.heartbeat, post),
            ("/api/v1/sessions/{session_id}/finish", self.finish_session, post),
            ("/api/v1/telemetry", self.telemetry, post),
            ("/api/v1/create_model", self.create_model, post),
            ("/api/v1/get_info", self.get_info, post),
            ("/api/v1/forward_backward", self.forward_backward, post),
            ("/api/v1/optim_step", self.optim_step, post),
            ("/api/v1/save_weights", self.save_weights, post),
            ("/api/v1/save_weights_for_sampler", self.save_weights_for_sampler, post),
            ("/api/v1/load_weights", self.load_weights, post),
            ("/api/v1/create_sampling_session", self.create_sampling_session, post),
            ("/api/v1/samplers/{sampler_id}", self.get_sampler, get),
            ("/api/v1/asample", self.asample, post),
            ("/api/v1/retrieve_future", self.retrieve_future, post),
            ("/api/v1/training_runs/{run_id}/checkpoints", self.list_checkpoints, get),
            ("/api/v1/training_runs/{run_id}/checkpoints/{rest:path}", self.checkpoint_action,
             ["GET", "POST", "PUT", "DELETE"]),
            ("/api/v1/cancel_future", self.cancel_future, post),
        ]
        routes = [Route(path, self._guarded(handler), methods=methods)
                  for path, handler, methods in table]
        routes += [Route(path, self._guarded(self._refusal(feature, call)), methods=methods)
                   for path, (methods, feature, call) in NOT_SERVED.items()]
        routes.append(Route("/{rest:path}", self._guarded(self._unknown),
                            methods=["GET", "POST", "DELETE", "PUT", "PATCH"]))
        return routes

    def _guarded(self, handler: Callable[[Request], Awaitable[Response]]
                 ) -> Callable[[Request], Awaitable[Response]]:
        """Around every route: the caller's key, fault injection in front of work and polls,
        and every refusal as a 4xx naming its reason."""
        name = handler.__name__
        open_to_all = name == "healthz"
        inject = name not in ("healthz", "heartbeat", "telemetry", "client_config",
                              "client_dynamic_config", "create_session")

        async def run(request: Request) -> Response:
            self._loop = self._loop or asyncio.get_running_loop()
            try:
                if not open_to_all:
                    request.state.owner = self._identify(request)
                if int(request.headers.get("content-length") or 0) > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
                if inject and self.fault_rate and self._fault_rng.random() < self.fault_rate:
                    self.faults_injected += 1
                    return JSONResponse({"detail": "injected transient fault"}, status_code=503)
                return await handler(request)
            except REFUSALS as exc:
                status = next(code for kinds, code in STATUS_OF if isinstance(exc, kinds))
                return JSONResponse({"detail": str(exc)}, status_code=status)
        run.__name__ = name
        return run

    def _identify(self, request: Request) -> str:
        """The caller's identity (its key's SHA-256). The key itself is neither kept nor logged."""
        key = request.headers.get("x-api-key")
        if not key:
            raise Unauthorized("this server needs an API key: pass api_key to "
                               "tinker.ServiceClient (it is sent as the X-API-Key header)")
        owner = key_owner(key)
        if self._accepted:
            if not any(hmac.compare_digest(owner, accepted) for accepted in self._accepted):
                raise Unauthorized("this API key is not accepted here: the server serves the "
                                   "keys its operator gave with --api_key")
        elif not key.startswith("tml-"):
            raise Unauthorized("API keys start with 'tml-'; on a loopback server any such key "
                               "works (local_tinker.LOCAL_API_KEY, say)")
        return owner

    @staticmethod
    def _refusal(feature: str, call: str) -> Callable[[Request], Awaitable[Response]]:
        async def refuse(request: Request) -> Response:
            raise UserError(f"the local backend does not serve {feature} ({call})")
        refuse.__name__ = "refuse"
        return refuse

    async def _unknown(self, request: Request) -> Response:
        raise NotFound(f"the local backend does not serve {request.method} "
                       f"/{request.path_params['rest']}: no call of the tinker 0.38 SDK uses it")

    def _new_future(self, lane: str, owner: str, run: Callable[[], Any] | None,
                    seq_key: int | None = None,
                    batch: Callable[[list[Any]], list[Any]] | None = None,
                    payload: Any = None, extra: dict[str, Any] | None = None) -> JSONResponse:
        """Queue `run` (or a batchable `batch` call) on `lane`; answer with its request id.

        A resend of the same (lane, seq_id) -- the SDK retrying a request whose answer it lost
        -- gets the first request's id instead of running twice. Lanes are owned objects, so a
        resend is always the owner's."""
        if seq_key is not None and (lane, seq_key) in self._seen:
            return JSONResponse({"request_id": self._seen[(lane, seq_key)], **(extra or {})})
        request_id = f"req-{self._epoch}-{next(self._ids)}"
        if seq_key is not None:
            self._seen[(lane, seq_key)] = request_id
        assert self._loop is not None
        pending = _Pending(owner, asyncio.Event(), time.monotonic() + self.latency_s)
        self._pending[request_id] = pending
        for kept in (self._pending, self._seen):  # a long-lived server keeps the newest only
            while len(kept) > KEPT_RESULTS:
                kept.pop(next(iter(kept)))
        loop = self._loop

        def on_done(result: Any, exc: BaseException | None) -> None:
            if exc is not None:
                user = isinstance(exc, (UserError, wire.UnsupportedInput))
                if isinstance(exc, StorageFailure):
                    pending.error = str(exc)  # logged, one line, where it happened
                elif not user:
                    log.exception("request %s failed", request_id, exc_info=exc)
                    pending.error = f"{type(exc).__name__}: {exc}"
                else:
                    pending.error = str(exc)
                pending.category = "user" if user else "server"
            else:
                pending.result = result
            loop.call_soon_threadsafe(pending.ready.set)

        if batch is not None:
            self.scheduler.submit(Job(lane, batch, payload, on_done, batchable=True))
        else:
            assert run is not None
            self.scheduler.submit(Job(lane, lambda _: [run()], None, on_done))
        return JSONResponse({"request_id": request_id, **(extra or {})})

    async def _run_now(self, lane: str, run: Callable[[], Any]) -> Any:
        """Run on the worker (in lane order) and wait: for calls the SDK expects answered."""
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        loop = asyncio.get_running_loop()

        def on_done(result: Any, exc: BaseException | None) -> None:
            def settle() -> None:
                if exc is not None:
                    done.set_exception(exc)
                else:
                    done.set_result(result)
            loop.call_soon_threadsafe(settle)
        self.scheduler.submit(Job(lane, lambda _: [run()], None, on_done))
        return await done

    # -- identity -------------------------------------------------------------------------
    def _own(self, object_id: str, owner: str, missing: str) -> None:
        """Refuse (as absent) an object id that is unknown or another key's."""
        if not hmac.compare_digest(self._owners.get(object_id, ""), owner):
            raise NotFound(missing)

    def _open_session(self, session_id: str, owner: str) -> _Session | None:
        session = self._sessions.get(session_id)
        return session if session and hmac.compare_digest(session.owner, owner) else None

    def _session(self, session_id: str, owner: str) -> _Session:
        session = self._open_session(session_id, owner)
        if session is None:
            raise NotFound(f"session {session_id} not found (was its ServiceClient closed, or "
                           "the server restarted?)")
        return session

    def _own_model(self, model_id: str, owner: str) -> None:
        self._own(model_id, owner, f"no training model {model_id!r} on this server (it may "
                                   "have been released when its session closed)")

    def _own_sampler(self, sampler_id: str, owner: str) -> None:
        self._own(sampler_id, owner, f"no sampler {sampler_id!r} on this server")

    @staticmethod
    def _owner(request: Request) -> str:
        return request.state.owner

    # -- service --------------------------------------------------------------------------
    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def client_config(self, request: Request) -> Response:
        # Plain httpx transport, one fwd/bwd request per call (split only where a body would
        # meet the size limit), per-request polling, custom losses computed by the SDK itself:
        # the protocol paths this server implements.
        return JSONResponse(types.ClientConfigResponse(
            use_pyqwest_transport=False, parallel_fwdbwd_chunks=False,
            fwdbwd_max_chunk_len=1_000_000, fwdbwd_max_chunk_bytes_count=self.max_body_bytes // 2,
            sample_use_retrieve_futures=False, custom_loss_server_side=False,
            sample_join_sampling_session=False, proto_compress_fwdbwd=False,
        ).model_dump(mode="json"))

    async def client_dynamic_config(self, request: Request) -> Response:
        return JSONResponse(types.ClientDynamicConfigResponse().model_dump(mode="json"))

    async def capabilities(self, request: Request) -> Response:
        models = [types.SupportedModel(model_name=name, trainable=True, sampleable=True)
                  for name in self._served_models()]
        return _json(types.GetServerCapabilitiesResponse(supported_models=models))

    async def create_session(self, request: Request) -> Response:
        await _parse(request, types.CreateSessionRequest)
        session_id = f"local-{uuid.uuid4().hex[:16]}"
        self._sessions[session_id] = _Session(self._owner(request))
        self._reap_silent_sessions()
        return _json(types.CreateSessionResponse(session_id=session_id))

    async def heartbeat(self, request: Request) -> Response:
        body = await _parse(request, types.SessionHeartbeatRequest)
        session = self._open_session(body.session_id, self._owner(request))
        if session is None:
            # The SDK stops heartbeating a session answered with 410. Any other answer (a 404
            # for a session this server never had: it restarted, or another took its port)
            # makes it heartbeat forever, warning every 10 s that "Tinker is down".
            return JSONResponse({"detail": f"session {body.session_id} is not open on this "
                                           "server (it finished, or the server restarted)"},
                                status_code=410)
        session.last_seen = time.monotonic()
        self._reap_silent_sessions()
        return _json(types.SessionHeartbeatResponse())

    async def finish_session(self, request: Request) -> Response:
        session_id = request.path_params["session_id"]
        if not self._finished_by(session_id, self._owner(request)):  # finishing twice is fine
            self._session(session_id, self._owner(request))
            self._release(session_id)
        return JSONResponse({})

    def _finished_by(self, session_id: str, owner: str) -> bool:
        return hmac.compare_digest(self._finished.get(session_id, ""), owner)

    def _release(self, session_id: str) -> None:
        """Free a session's models and samplers (after the work queued on them); checkpoints
        stay on disk."""
        session = self._sessions.pop(session_id, None)
        if session is None:
            return
        self._finished[session_id] = session.owner
        while len(self._finished) > KEPT_RESULTS:
            self._finished.pop(next(iter(self._finished)))
        for object_id in (*session.models, *session.samplers):
            self._owners.pop(object_id, None)
        for lane in {*session.models, *session.samplers}:
            self.scheduler.submit(Job(lane, lambda _, s=session: [self.runtime.release(
                s.models, s.samplers)], None, lambda *_: None))

    def _reap_silent_sessions(self) -> None:
        now = time.monotonic()
        for session_id, session in list(self._sessions.items()):
            if now - session.last_seen > SESSION_TIMEOUT_S:
                log.info("session %s stopped heartbeating; releasing its models", session_id)
                self._release(session_id)

    async def telemetry(self, request: Request) -> Response:
        return JSONResponse({"status": "accepted"})

    async def cancel_future(self, request: Request) -> Response:
        return JSONResponse({})  # work already queued finishes; its result is dropped unread

    # -- training -------------------------------------------------------------------------
    async def create_model(self, request: Request) -> Response:
        body = await _parse(request, types.CreateModelRequest)
        owner = self._owner(request)
        session = self._session(body.session_id, owner)
        if not isinstance(body.optimizer_config, types.AdamOptimizerConfig | None):
            raise UserError("the local backend trains with Adam only "
                            f"(got optimizer {getattr(body.optimizer_config, 'type', '?')!r})")
        if body.lora_config is None:
            raise UserError("the local backend trains LoRA adapters only: create_model needs "
                            "a lora_config (ServiceClient.create_lora_training_client)")
        _check_seed(body.lora_config.seed, "LoRA seed")
        base_model = self._model_name(body.base_model) or body.base_model
        self._check_served_model(base_model)
        model_id = self._model_id(body.session_id, body.model_seq_id)
        self._owners[model_id] = owner
        session.models.append(model_id)

        def create() -> types.CreateModelResponse:
            self.runtime.create_model(model_id, base_model, body.lora_config,
                                      body.user_metadata)
            return types.CreateModelResponse(model_id=model_id)
        return self._new_future(model_id, owner, create, seq_key=0)

    async def get_info(self, request: Request) -> Response:
        body = await _parse(request, types.GetInfoRequest)
        self._own_model(body.model_id, self._owner(request))
        info = await self._run_now(body.model_id, lambda: self.runtime.info(
            body.model_id, str(self._model_dir(self.runtime.model(body.model_id).base.name))))
        return _json(info)

    async def forward_backward(self, request: Request) -> Response:
        if not request.headers.get("content-type", "").startswith(wire.PROTO):
            raise UnsupportedMedia(f"forward_backward bodies are protobuf (Content-Type: "
                                   f"{wire.PROTO}), as the tinker SDK sends them; JSON is not "
                                   "served")
        if request.headers.get("content-encoding"):
            raise UnsupportedMedia("compressed request bodies are not served (the server's "
                                   "client config turns compression off)")
        model_id, seq_id, fwd, forward_only = wire.parse_forward_backward(await request.body())
        owner = self._owner(request)
        self._own_model(model_id, owner)
        return self._new_future(model_id, owner, lambda: self.runtime.forward_backward(
            model_id, fwd, backward=not forward_only), seq_key=seq_id)

    async def optim_step(self, request: Request) -> Response:
        body = await _parse(request, types.OptimStepRequest)
        owner = self._owner(request)
        self._own_model(body.model_id, owner)
        return self._new_future(body.model_id, owner, lambda: self.runtime.optim_step(
            body.model_id, body.optim_params), seq_key=body.seq_id)

    async def save_weights(self, request: Request) -> Response:
        body = await _parse(request, types.SaveWeightsRequest)
        owner = self._owner(request)
        self._own_model(body.model_id, owner)
        _check_ttl(body.ttl_seconds)
        name = body.path or f"state-{body.seq_id}"

        def save() -> types.SaveWeightsResponse:
            return types.SaveWeightsResponse(path=self.runtime.save(
                body.model_id, name, "weights", owner, body.ttl_seconds, body.overwrite,
                body.user_metadata))
        return self._new_future(body.model_id, owner, save, seq_key=body.seq_id)

    async def save_weights_for_sampler(self, request: Request) -> Response:
        body = await _parse(request, types.SaveWeightsForSamplerRequest)
        owner = self._owner(request)
        self._own_model(body.model_id, owner)
        _check_ttl(body.ttl_seconds)
        if body.path is not None:  # a named, persisted checkpoint
            def save() -> Any:
                return types.SaveWeightsForSamplerResponseInternal(path=self.runtime.save(
                    body.model_id, body.path or "", "sampler_weights", owner, body.ttl_seconds,
                    user_metadata=body.user_metadata))
            return self._new_future(body.model_id, owner, save, seq_key=body.seq_id)
        if body.kind != "snapshot":
            raise UserError(f"sampling clients of kind {body.kind!r} are not served by the "
                            "local backend (it serves 'snapshot')")
        session_id = body.model_id.split(":train:")[0]
        session = self._session(session_id, owner)
        sampler_id = f"{session_id}:sample:{body.sampling_session_seq_id}"
        self._owners[sampler_id] = owner
        session.samplers.append(sampler_id)

        def snapshot() -> Any:
            self.runtime.sampler_from_model(sampler_id, body.model_id)
            self._samplers[sampler_id] = types.GetSamplerResponse(
                sampler_id=sampler_id, base_model=str(self._model_dir(
                    self.runtime.model(body.model_id).base.name)))
            return types.SaveWeightsForSamplerResponseInternal(sampling_session_id=sampler_id)
        return self._new_future(body.model_id, owner, snapshot, seq_key=body.seq_id)

    async def load_weights(self, request: Request) -> Response:
        body = await _parse(request, types.LoadWeightsRequest)
        owner = self._owner(request)
        if body.weights_access_token is not None:
            raise UserError("the local backend does not serve loading another account's "
                            "checkpoints (weights_access_token): a checkpoint belongs to the "
                            "API key that saved it")
        chosen = body.optimizer_config
        if chosen is not None and not isinstance(chosen, types.AdamOptimizerConfig):
            raise UserError(f"the local backend trains with Adam only (got optimizer "
                            f"{getattr(chosen, 'type', '?')!r}; "
                            "ServiceClient.create_training_client_from_state)")
        if chosen is not None and (body.optimizer or body.model_id is not None):
            raise UserError("a model with restored optimizer state, or an existing one, keeps "
                            "its optimizer: pass no optimizer config")
        if body.model_id is not None:  # load_state into an existing training client
            if body.base_model is not None or body.user_metadata is not None:
                raise UserError("load_state into an existing training client takes no "
                                "base_model or user_metadata")
            model_id = body.model_id
            self._own_model(model_id, owner)
            return self._new_future(model_id, owner, lambda: self._loaded(
                self.runtime.load(model_id, body.path, body.optimizer, owner), body.path,
                model_id), seq_key=body.seq_id)
        if body.session_id is None or body.model_seq_id is None:
            raise UserError("load_weights needs a model_id, or a session_id and model_seq_id")
        session = self._session(body.session_id, owner)
        model_id = self._model_id(body.session_id, body.model_seq_id)
        self._owners[model_id] = owner
        session.models.append(model_id)
        base_model = self._model_name(body.base_model)
        return self._new_future(model_id, owner, lambda: self._loaded(
            self.runtime.create_model_from_state(model_id, body.path, body.optimizer, owner,
                                                 base_model, body.user_metadata),
            body.path, model_id), seq_key=0)

    @staticmethod
    def _loaded(_: None, path: str, model_id: str) -> types.LoadWeightsResponse:
        return types.LoadWeightsResponse(path=path, model_id=model_id)

    # -- checkpoints ----------------------------------------------------------------------
    async def list_checkpoints(self, request: Request) -> Response:
        run_id, owner = request.path_params["run_id"], self._owner(request)
        found = await self._run_now("checkpoints", lambda: self.runtime.list_checkpoints(
            run_id, owner))
        if not found and not hmac.compare_digest(self._owners.get(run_id, ""), owner):
            raise NotFound(f"no training run {run_id!r} on this server")
        return _json(types.CheckpointsListResponse(checkpoints=found))

    async def checkpoint_action(self, request: Request) -> Response:
        """DELETE .../checkpoints/<kind>/<name> deletes; the SDK's other checkpoint actions
        (publish, ttl, external URLs) are refused by name."""
        run_id, checkpoint_id = request.path_params["run_id"], request.path_params["rest"]
        parts = checkpoint_id.split("/")
        if request.method == "DELETE" and len(parts) == 2:
            owner = self._owner(request)
            await self._run_now("checkpoints", lambda: self.runtime.delete_checkpoint(
                run_id, checkpoint_id, owner))
            return Response(status_code=204)
        if len(parts) == 3 and (request.method, parts[2]) in CHECKPOINT_ACTIONS:
            feature, call = CHECKPOINT_ACTIONS[(request.method, parts[2])]
            raise UserError(f"the local backend does not serve {feature} ({call})")
        raise NotFound(f"no checkpoint {checkpoint_id!r} in run {run_id!r}")

    # -- sampling -------------------------------------------------------------------------
    async def create_sampling_session(self, request: Request) -> Response:
        body = await _parse(request, types.CreateSamplingSessionRequest)
        owner = self._owner(request)
        session = self._session(body.session_id, owner)
        if (body.base_model is None) == (body.model_path is None):
            raise UserError("give exactly one of base_model and model_path")
        base_model = self._model_name(body.base_model)
        if body.model_path is None:
            self._check_served_model(base_model)
        sampler_id = f"{body.session_id}:sample:{body.sampling_session_seq_id}"

        def create() -> str:
            return self.runtime.sampler_from_request(sampler_id, base_model, body.model_path,
                                                     owner)
        base_name = await self._run_now(sampler_id, create)
        self._samplers[sampler_id] = types.GetSamplerResponse(
            sampler_id=sampler_id, base_model=str(self._model_dir(base_name)),
            model_path=body.model_path)
        self._owners[sampler_id] = owner
        session.samplers.append(sampler_id)
        return _json(types.CreateSamplingSessionResponse(sampling_session_id=sampler_id))

    async def get_sampler(self, request: Request) -> Response:
        sampler_id = request.path_params["sampler_id"]
        self._own_sampler(sampler_id, self._owner(request))
        sampler = self._samplers.get(sampler_id)
        if sampler is None:
            raise NotFound(f"no sampler {sampler_id!r} on this server")
        return _json(sampler)

    async def asample(self, request: Request) -> Response:
        body = await _parse(request, types.SampleRequest)
        if body.sampling_session_id is None:
            raise UserError("sample requests need a sampling session (create_sampling_client)")
        owner = self._owner(request)
        sampler_id = body.sampling_session_id
        self._own_sampler(sampler_id, owner)
        if body.base_model is not None or body.model_path is not None:
            raise UserError("a sample request names its weights through its sampling session; "
                            "base_model and model_path beside it are not served")
        refused = [name for name, used in (
            ("target_prompt_logprobs", body.target_prompt_logprobs is not None),
            ("prompt_alt_tokens_k", body.prompt_alt_tokens_k != 0),
            ("prompt_logprobs_last_n", body.prompt_logprobs_last_n is not None),
            ("record_stability_info", bool(body.record_stability_info))) if used]
        if refused:
            raise UserError(f"the local backend does not serve {', '.join(refused)} "
                            "(SamplingClient.sample)")
        sample = _sample_request(body, self.runtime.sampler(sampler_id))
        ids = [f"{sampler_id}:{body.seq_id}:{k}" for k in range(body.num_samples)]
        return self._new_future(
            sampler_id, owner, None, seq_key=body.seq_id, payload=sample,
            batch=lambda requests: self.runtime.sample_steps(sampler_id, requests),
            extra={"sample_sequence_ids": ids})

    # -- results --------------------------------------------------------------------------
    async def retrieve_future(self, request: Request) -> Response:
        body = await _parse(request, types.FutureRetrieveRequest)
        pending = self._pending.get(body.request_id)
        # 404 is an error the SDK raises at once (a 410 would make it resend the request).
        if pending is None or not hmac.compare_digest(pending.owner, self._owner(request)):
            raise NotFound(f"unknown request id {body.request_id}: this server did not issue "
                           "it to this API key (if the server restarted, the request was lost "
                           "with it; send it again)")
        try:
            await asyncio.wait_for(pending.ready.wait(), POLL_WAIT_S)
        except TimeoutError:
            return JSONResponse({"type": "try_again", "request_id": body.request_id,
                                 "queue_state": "active"})
        delay = pending.not_before - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if pending.error is not None:
            return JSONResponse({"error": pending.error, "category": pending.category})
        result = pending.result
        if isinstance(result, PROTO_RESULTS):  # the SDK takes these only as protobuf
            data = (wire.sample_response(result) if isinstance(result, types.SampleResponse)
                    else wire.forward_backward_output(result))
            return Response(data, media_type=wire.PROTO)
        return _json(result)

    # -- names ----------------------------------------------------------------------------
    @staticmethod
    def _model_id(session_id: str, model_seq_id: int) -> str:
        return f"{session_id}:train:{model_seq_id}"  # the id the SDK derives itself

    def _served_models(self) -> list[str]:
        return [*available_models(), *sorted(self._preloaded - set(available_models()))]

    def _check_served_model(self, name: str | None) -> None:
        """A base model a request may name: any, where model paths are served; otherwise the
        built-in and cached models and those the operator named at start."""
        if self._any_model_path or name is None or name in self._preloaded:
            return
        served = self._served_models()
        if name not in served:
            raise UserError(f"the local backend cannot load model {name!r} here. Available "
                            f"offline: {', '.join(served)}; a model by path must be named with "
                            "--model when the server starts")

    def _model_dir(self, name: str) -> Path:
        """A directory with the model's tokenizer: what SamplingClient.get_base_model() reports,
        so that the SDK's get_tokenizer() loads it offline (a hub name would go online)."""
        if Path(name).is_dir():
            return Path(name)
        directory = self.root / "models" / re.sub(r"[^A-Za-z0-9._-]", "_", name)
        if not (directory / "tokenizer_config.json").exists():
            try:
                load_base_model(name).tokenizer.save_pretrained(directory)
                (directory / "local_tinker_model.txt").write_text(name)
            except OSError as exc:
                log.error("cannot write %s: %s", directory, exc)
                raise StorageFailure(f"cannot store {name}'s tokenizer: the server's storage "
                                     f"failed ({exc.strerror})") from None
        return directory

    def _model_name(self, name: str | None) -> str | None:
        """Inverse of _model_dir, so a reported base model can be passed back in. Only a
        directory of the root's models/ is read; any other name is passed on as it is."""
        if name is None:
            return None
        directory = self.runtime.storage.resolve(name)
        models = self.runtime.storage.resolve("models")
        if directory is not None and directory.parent == models and \
                (directory / "local_tinker_model.txt").is_file():
            return (directory / "local_tinker_model.txt").read_text()
        return name


def _sample_request(body: types.SampleRequest, sampler: Sampler) -> engine.SampleRequest:
    """The engine's request, with every parameter checked against the sampler's model: a bad
    one is a UserError here rather than a torch error in a batch shared with other requests."""
    base = sampler.base
    vocab = base.model.config.vocab_size
    try:
        prompt = body.prompt.to_ints()
    except ValueError:
        raise UserError("prompts must be text tokens (EncodedTextChunk): the local backend's "
                        "models are text-only") from None
    if not prompt:
        raise UserError("the prompt is empty: sampling needs at least one prompt token")
    check_token_ids(prompt, base, "the prompt")
    if not 1 <= body.num_samples <= MAX_NUM_SAMPLES:
        raise UserError(f"num_samples must be between 1 and {MAX_NUM_SAMPLES}, got "
                        f"{body.num_samples}")
    for name, k in (("topk_prompt_logprobs", body.topk_prompt_logprobs),
                    ("topk_sample_logprobs", body.topk_sample_logprobs)):
        if not 0 <= k <= vocab:
            raise UserError(f"{name} must be between 0 and the vocabulary size {vocab}, got {k}")
    params = body.sampling_params
    _check_sampling_params(params, base.name, vocab)
    context = context_length(base)
    max_tokens = params.max_tokens
    if max_tokens is None:
        max_tokens = min(DEFAULT_MAX_TOKENS, context - len(prompt))
    if len(prompt) + max_tokens > context or max_tokens < 1:
        raise UserError(f"prompt ({len(prompt)} tokens) + max_tokens ({max_tokens}) exceeds "
                        f"the context of {base.name} ({context} tokens): max_tokens can be at "
                        f"most {context - len(prompt)} for this prompt")
    seed = params.seed if params.seed is not None else secrets.randbits(31)
    return engine.SampleRequest(
        prompt, body.num_samples, params.model_copy(update={"max_tokens": max_tokens}), seed,
        prompt_logprobs=bool(body.prompt_logprobs), topk_prompt=body.topk_prompt_logprobs,
        topk_sample=body.topk_sample_logprobs)


def _check_sampling_params(params: types.SamplingParams, model: str, vocab: int) -> None:
    if not (math.isfinite(params.temperature) and params.temperature >= 0):
        raise UserError(f"temperature must be a finite number >= 0, got {params.temperature}")
    if not (math.isfinite(params.top_p) and 0 < params.top_p <= 1):
        raise UserError(f"top_p must be in (0, 1], got {params.top_p}")
    if params.top_k < -1:
        raise UserError(f"top_k must be -1 (no limit) or more, got {params.top_k}")
    if params.max_tokens is not None and params.max_tokens < 1:
        raise UserError(f"max_tokens must be >= 1, got {params.max_tokens}")
    _check_seed(params.seed, "seed")
    stop = params.stop
    if stop is None:
        return
    items = [stop] if isinstance(stop, str) else list(stop)
    if not items:
        raise UserError("stop=[] (generating past the end-of-sequence token) is not served by "
                        "the local backend: it always stops at the model's EOS")
    for item in items:
        if isinstance(item, str) and not item:
            raise UserError("a stop string is empty")
        if isinstance(item, int) and not 0 <= item < vocab:
            raise UserError(f"stop token id {item} is outside {model}'s vocabulary [0, {vocab})")


def _check_seed(seed: int | None, what: str) -> None:
    if seed is not None and not -2**63 <= seed < 2**64:  # what torch.Generator takes
        raise UserError(f"{what} must be between -2**63 and 2**64 - 1, got {seed}")


def _check_ttl(ttl_seconds: int | None) -> None:
    if ttl_seconds is not None and ttl_seconds < 1:
        raise UserError(f"ttl_seconds must be >= 1 (or None: kept), got {ttl_seconds}")


async def _parse(request: Request, cls: type[pydantic.BaseModel]) -> Any:
    """The body as the SDK type `cls`, or a UserError saying what is wrong with it."""
    try:
        data = json.loads(await request.body())
    except ValueError as exc:
        raise UserError(f"the request body is not JSON ({exc})") from None
    try:
        return cls.model_validate(data)
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
                             for e in exc.errors()[:5])
        raise UserError(f"invalid {cls.__name__}: {problems}") from None


def _json(model: Any) -> JSONResponse:
    return JSONResponse(_finite(model.model_dump(mode="json", exclude_none=True)))


def _finite(value: Any) -> Any:
    """A diverged step's metrics are NaN or inf, which JSON cannot carry (the SDK's parser
    refuses them); as the strings "nan" / "inf" they still validate into the SDK's floats."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


# -- running it -------------------------------------------------------------------------------
def bind(host: str, port: int) -> socket.socket:
    """A listening socket; a taken port is a clear error, port 0 picks a free one."""
    if not 0 <= port <= 65535:
        raise SettingsError(f"--port must be between 0 and 65535, got {port}")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    # A restarted server takes its port back at once: without this, the previous one's
    # connections in TIME_WAIT held it for about a minute. A live listener still holds it.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(f"cannot listen on {host}:{port} (another process listens there); "
                            "pick another --port, or 0 for any free port") from None
        reason = exc.strerror or str(exc)
        raise SettingsError(f"cannot listen on {host}:{port} ({reason}); check --host and "
                            "--port") from None
    # Accepted connections inherit this: without it a response's header and body writes meet
    # Nagle's algorithm and the client's delayed ACK, and every call costs 40 ms more.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.listen(128)
    return sock


def _uvicorn(server: LocalTinkerServer) -> uvicorn.Server:
    config = uvicorn.Config(server.app, log_level="warning", access_log=False, lifespan="off",
                            timeout_keep_alive=60)
    return uvicorn.Server(config)


def check_exposure(host: str, has_operator_keys: bool) -> str | None:
    """Beyond loopback only operator-chosen keys are served: a SettingsError without one, else
    the one-line warning to print (None on loopback)."""
    if is_loopback(host):
        return None
    if not has_operator_keys:
        raise SettingsError(f"--host {host} serves beyond loopback: give the keys clients must "
                            "present with --api_key (or LOCAL_TINKER_API_KEY)")
    return (f"warning: serving on {host}, beyond loopback: only clients presenting an --api_key "
            "key are served, over plain HTTP (unencrypted)")


def serve_forever(server: LocalTinkerServer, host: str, port: int) -> None:
    try:
        warning = check_exposure(host, not server.serves_any_key)
        sock = bind(host, port)
        if warning:
            print(warning, file=sys.stderr, flush=True)
        actual = sock.getsockname()[1]
        key = f"'{LOCAL_API_KEY}'" if server.serves_any_key else "<one of the --api_key keys>"
        print(f"local tinker server on http://{host}:{actual} (root {server.root}); "
              f"point the SDK at it: tinker.ServiceClient(base_url='http://{host}:{actual}', "
              f"api_key={key})", flush=True)
        _uvicorn(server).run(sockets=[sock])
    finally:
        server.scheduler.stop()


@contextlib.contextmanager
def embedded(root: Path | None = None, **options: Any) -> Iterator[tuple[str, LocalTinkerServer]]:
    """Start a server in this process on a free loopback port; yields (base_url, server)."""
    server = LocalTinkerServer(root, **options)
    sock = bind("127.0.0.1", 0)
    runner = _uvicorn(server)
    thread = threading.Thread(target=runner.run, kwargs={"sockets": [sock]},
                              name="local-tinker-http", daemon=True)
    thread.start()
    while not runner.started and thread.is_alive():
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", server
    finally:
        runner.should_exit = True
        thread.join(timeout=10)
        server.scheduler.stop()  # torch must be idle before the interpreter tears down
        sock.close()


@contextlib.contextmanager
def local_service(root: Path | None = None, **options: Any
                  ) -> Iterator[tuple[Any, LocalTinkerServer]]:
    """An embedded server and the real SDK's ServiceClient on it: (service_client, server)."""
    import tinker

    with embedded(root, **options) as (url, server), \
            tinker.ServiceClient(base_url=url, api_key=LOCAL_API_KEY) as client:
        yield client, server
