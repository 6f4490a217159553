"""A server for the tinker SDK's HTTP protocol (tinker 0.38), computing on the local runtime.

Point the unmodified SDK at it with `tinker.ServiceClient(base_url=...)`: every SDK behaviour
(futures that double as clients, retries, `.done()`, `await`, context managers, argument checks)
is then the SDK's own. Work-creating calls answer at once with a request id; the SDK polls
`/api/v1/retrieve_future` until the result is ready, exactly as against Tinker.

What the local backend cannot serve (custom losses run server-side, external weight export,
images, optimizers other than Adam, ...) fails with an error the SDK raises, naming the feature.

Test knobs, server-side so that the SDK's own retry logic is what recovers:
- `latency_s`: a result is handed out no earlier than this long after its request arrived,
  like a network round trip (round trips of concurrent calls overlap).
- `fault_rate`: the probability that a request (submission or poll) fails with HTTP 503 before
  it is processed; the SDK retries it, so results are identical to a run without faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import random
import re
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from tinker import types

from . import engine, wire
from .models import available_models, load_base_model
from .runtime import Runtime, UserError, default_root
from .scheduler import Job, Scheduler
from .threads import ThreadPolicy

log = logging.getLogger("local_tinker")
# The SDK insists on a key that starts with "tml-". This one only ever goes to a server on the
# loopback interface that we started ourselves; it is not a secret and grants nothing.
LOCAL_API_KEY = "tml-local-backend-placeholder"
POLL_WAIT_S = 20.0  # a poll waits this long for its result, then says "try again"
KEPT_RESULTS = 20_000  # finished results kept for (re)polling; the oldest are dropped
# The SDK heartbeats every 10 s while its ServiceClient lives; a session silent this long had
# its client closed or garbage-collected, and its models' memory is released.
SESSION_TIMEOUT_S = 120.0
PROTO_RESULTS = (types.SampleResponse, types.ForwardBackwardOutput)


class PortInUse(OSError):
    pass


@dataclass
class _Pending:
    """One request's future, as the SDK polls it."""

    ready: asyncio.Event
    not_before: float
    result: Any = None
    error: str | None = None
    category: str = "user"


@dataclass
class _Session:
    models: list[str] = field(default_factory=list)
    samplers: list[str] = field(default_factory=list)
    last_seen: float = field(default_factory=time.monotonic)


class LocalTinkerServer:
    """The Starlette app and its state; `app` is an ASGI application."""

    def __init__(self, root: Path | None = None, *, device: str | None = None,
                 latency_s: float = 0.0, fault_rate: float = 0.0, fault_seed: int = 0,
                 preload: list[str] | None = None, threads: int | None = None) -> None:
        self.root = Path(root) if root else default_root()
        self.runtime = Runtime(self.root, torch.device(
            device or ("cuda" if torch.cuda.is_available() else "cpu")))
        # threads: torch threads (None: chosen from cores and load; local_tinker/threads.py)
        self.scheduler = Scheduler(ThreadPolicy(threads))
        self.latency_s = latency_s
        self.fault_rate = fault_rate
        self.faults_injected = 0
        self._fault_rng = random.Random(fault_seed)
        self._pending: dict[str, _Pending] = {}
        self._ids = itertools.count(1)
        self._sessions: dict[str, _Session] = {}
        self._seen: dict[tuple[str, int], str] = {}  # (lane, seq_id) -> request id: resends
        self._samplers: dict[str, types.GetSamplerResponse] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        for name in preload or []:
            load_base_model(name)
        self.app = Starlette(routes=self._routes())

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
            ("/api/v1/forward", self.forward, post),
            ("/api/v1/optim_step", self.optim_step, post),
            ("/api/v1/save_weights", self.save_weights, post),
            ("/api/v1/save_weights_for_sampler", self.save_weights_for_sampler, post),
            ("/api/v1/load_weights", self.load_weights, post),
            ("/api/v1/create_sampling_session", self.create_sampling_session, post),
            ("/api/v1/samplers/{sampler_id}", self.get_sampler, get),
            ("/api/v1/asample", self.asample, post),
            ("/api/v1/retrieve_future", self.retrieve_future, post),
            ("/api/v1/training_runs/{run_id}/checkpoints", self.list_checkpoints, get),
            ("/api/v1/training_runs/{run_id}/checkpoints/{checkpoint_id:path}",
             self.delete_checkpoint, ["DELETE"]),
            ("/api/v1/cancel_future", self.cancel_future, post),
        ]
        unsupported = {
            "/api/v1/create_custom_loss": "server-side custom losses (the SDK runs "
                                          "forward_backward_custom client-side here)",
            "/api/v1/save_weights_external": "external weight export (save_weights_external)",
            "/api/v1/copy_weights": "copying checkpoints between projects (copy_weights)",
            "/api/v1/join_sampling_session": "joining sampling sessions",
            "/api/v1/retrieve_futures": "batched future polling",
            "/api/v1/auth/token": "token exchange (the local backend needs no credentials)",
        }
        routes = [Route(path, self._guarded(handler), methods=methods)
                  for path, handler, methods in table]
        routes += [Route(path, self._refuse(feature), methods=["GET", "POST"])
                   for path, feature in unsupported.items()]
        routes.append(Route("/{rest:path}", self._unknown, methods=["GET", "POST", "DELETE",
                                                                    "PUT", "PATCH"]))
        return routes

    def _guarded(self, handler: Callable[[Request], Awaitable[Response]]
                 ) -> Callable[[Request], Awaitable[Response]]:
        """Fault injection in front of every work or poll request; bad input -> a 400."""
        inject = handler.__name__ not in ("healthz", "heartbeat", "telemetry", "client_config",
                                          "client_dynamic_config", "create_session")

        async def run(request: Request) -> Response:
            self._loop = self._loop or asyncio.get_running_loop()
            if inject and self.fault_rate and self._fault_rng.random() < self.fault_rate:
                self.faults_injected += 1
                return JSONResponse({"detail": "injected transient fault"}, status_code=503)
            try:
                return await handler(request)
            except (UserError, wire.UnsupportedInput, ValueError) as exc:
                return JSONResponse({"detail": str(exc)}, status_code=400)
        run.__name__ = handler.__name__
        return run

    @staticmethod
    def _refuse(feature: str) -> Callable[[Request], Awaitable[Response]]:
        async def refuse(request: Request) -> Response:
            return JSONResponse({"detail": f"the local backend does not support {feature}"},
                                status_code=400)
        return refuse

    async def _unknown(self, request: Request) -> Response:
        return JSONResponse({"detail": f"the local backend does not serve {request.method} "
                                       f"/{request.path_params['rest']}"}, status_code=404)

    def _new_future(self, lane: str, run: Callable[[], Any] | None, seq_key: int | None = None,
                    batch: Callable[[list[Any]], list[Any]] | None = None,
                    payload: Any = None, extra: dict[str, Any] | None = None) -> JSONResponse:
        """Queue `run` (or a batchable `batch` call) on `lane`; answer with its request id.

        A resend of the same (lane, seq_id) -- the SDK retrying a request whose answer it lost
        -- gets the first request's id instead of running twice."""
        if seq_key is not None and (lane, seq_key) in self._seen:
            return JSONResponse({"request_id": self._seen[(lane, seq_key)], **(extra or {})})
        request_id = f"req-{next(self._ids)}"
        if seq_key is not None:
            self._seen[(lane, seq_key)] = request_id
        assert self._loop is not None
        pending = _Pending(asyncio.Event(), time.monotonic() + self.latency_s)
        self._pending[request_id] = pending
        for kept in (self._pending, self._seen):  # a long-lived server keeps the newest only
            while len(kept) > KEPT_RESULTS:
                kept.pop(next(iter(kept)))
        loop = self._loop

        def on_done(result: Any, exc: BaseException | None) -> None:
            if exc is not None:
                user = isinstance(exc, (UserError, wire.UnsupportedInput))
                if not user:
                    log.exception("request %s failed", request_id, exc_info=exc)
                pending.error = str(exc) if user else f"{type(exc).__name__}: {exc}"
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

    # -- service --------------------------------------------------------------------------
    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def client_config(self, request: Request) -> Response:
        # Plain httpx transport, one fwd/bwd request per call, per-request polling, custom
        # losses computed by the SDK itself: the protocol paths this server implements.
        return JSONResponse(types.ClientConfigResponse(
            use_pyqwest_transport=False, parallel_fwdbwd_chunks=False,
            fwdbwd_max_chunk_len=1_000_000, fwdbwd_max_chunk_bytes_count=1 << 40,
            sample_use_retrieve_futures=False, custom_loss_server_side=False,
            sample_join_sampling_session=False, proto_compress_fwdbwd=False,
        ).model_dump(mode="json"))

    async def client_dynamic_config(self, request: Request) -> Response:
        return JSONResponse(types.ClientDynamicConfigResponse().model_dump(mode="json"))

    async def capabilities(self, request: Request) -> Response:
        models = [types.SupportedModel(model_name=name, trainable=True, sampleable=True)
                  for name in available_models()]
        return _json(types.GetServerCapabilitiesResponse(supported_models=models))

    async def create_session(self, request: Request) -> Response:
        types.CreateSessionRequest.model_validate(await request.json())
        session_id = f"local-{uuid.uuid4().hex[:10]}"
        self._sessions[session_id] = _Session()
        self._reap_silent_sessions()
        return _json(types.CreateSessionResponse(session_id=session_id))

    async def heartbeat(self, request: Request) -> Response:
        body = types.SessionHeartbeatRequest.model_validate(await request.json())
        if body.session_id not in self._sessions:
            return JSONResponse({"detail": f"session {body.session_id} not found"},
                                status_code=404)
        self._sessions[body.session_id].last_seen = time.monotonic()
        self._reap_silent_sessions()
        return _json(types.SessionHeartbeatResponse())

    async def finish_session(self, request: Request) -> Response:
        self._release(request.path_params["session_id"])
        return JSONResponse({})

    def _release(self, session_id: str) -> None:
        """Free a session's models and samplers (after the work queued on them); checkpoints
        stay on disk."""
        session = self._sessions.pop(session_id, None)
        if session is None:
            return
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
        body = types.CreateModelRequest.model_validate(await request.json())
        model_id = self._model_id(body.session_id, body.model_seq_id)
        if not isinstance(body.optimizer_config, types.AdamOptimizerConfig | None):
            raise UserError("the local backend trains with Adam only "
                            f"(got {type(body.optimizer_config).__name__})")
        self._session(body.session_id).models.append(model_id)

        def create() -> types.CreateModelResponse:
            self.runtime.create_model(model_id, body.base_model, body.lora_config,
                                      body.user_metadata)
            return types.CreateModelResponse(model_id=model_id)
        return self._new_future(model_id, create, seq_key=0)

    async def get_info(self, request: Request) -> Response:
        body = types.GetInfoRequest.model_validate(await request.json())
        info = await self._run_now(body.model_id, lambda: self.runtime.info(
            body.model_id, str(self._model_dir(self.runtime.model(body.model_id).base.name))))
        return _json(info)

    async def forward_backward(self, request: Request) -> Response:
        body = await request.body()
        if request.headers.get("content-type", "").startswith(wire.PROTO):
            if request.headers.get("content-encoding"):
                raise UserError("compressed request bodies are not served (the server's "
                                "client config turns compression off)")
            model_id, seq_id, fwd, forward_only = wire.parse_forward_backward(body)
        else:
            parsed = types.ForwardBackwardRequest.model_validate_json(body)
            model_id, seq_id, fwd = parsed.model_id, parsed.seq_id, parsed.forward_backward_input
            forward_only = False
        return self._new_future(model_id, lambda: self.runtime.forward_backward(
            model_id, fwd, backward=not forward_only), seq_key=seq_id)

    async def forward(self, request: Request) -> Response:
        parsed = types.ForwardRequest.model_validate(await request.json())
        return self._new_future(parsed.model_id, lambda: self.runtime.forward_backward(
            parsed.model_id, parsed.forward_input, backward=False), seq_key=parsed.seq_id)

    async def optim_step(self, request: Request) -> Response:
        body = types.OptimStepRequest.model_validate(await request.json())
        return self._new_future(body.model_id, lambda: self.runtime.optim_step(
            body.model_id, body.optim_params), seq_key=body.seq_id)

    async def save_weights(self, request: Request) -> Response:
        body = types.SaveWeightsRequest.model_validate(await request.json())
        name = body.path or f"state-{body.seq_id}"

        def save() -> types.SaveWeightsResponse:
            return types.SaveWeightsResponse(path=self.runtime.save(
                body.model_id, name, "weights", body.ttl_seconds, body.overwrite,
                body.user_metadata))
        return self._new_future(body.model_id, save, seq_key=body.seq_id)

    async def save_weights_for_sampler(self, request: Request) -> Response:
        body = types.SaveWeightsForSamplerRequest.model_validate(await request.json())
        if body.path is not None:  # a named, persisted checkpoint
            def save() -> Any:
                return types.SaveWeightsForSamplerResponseInternal(path=self.runtime.save(
                    body.model_id, body.path or "", "sampler_weights", body.ttl_seconds,
                    user_metadata=body.user_metadata))
            return self._new_future(body.model_id, save, seq_key=body.seq_id)
        if body.kind != "snapshot":
            raise UserError(f"sampling clients of kind {body.kind!r} are not served by the "
                            "local backend (it serves 'snapshot')")
        session_id = body.model_id.split(":train:")[0]
        sampler_id = f"{session_id}:sample:{body.sampling_session_seq_id}"

        def snapshot() -> Any:
            self.runtime.sampler_from_model(sampler_id, body.model_id)
            self._samplers[sampler_id] = types.GetSamplerResponse(
                sampler_id=sampler_id, base_model=str(self._model_dir(
                    self.runtime.model(body.model_id).base.name)))
            self._session(session_id).samplers.append(sampler_id)
            return types.SaveWeightsForSamplerResponseInternal(sampling_session_id=sampler_id)
        return self._new_future(body.model_id, snapshot, seq_key=body.seq_id)

    async def load_weights(self, request: Request) -> Response:
        body = types.LoadWeightsRequest.model_validate(await request.json())
        if body.model_id is not None:  # load_state into an existing training client
            model_id = body.model_id
            return self._new_future(model_id, lambda: self._loaded(
                self.runtime.load(model_id, body.path, body.optimizer), body.path, model_id),
                seq_key=body.seq_id)
        if body.session_id is None or body.model_seq_id is None:
            raise UserError("load_weights needs a model_id, or a session_id and model_seq_id")
        model_id = self._model_id(body.session_id, body.model_seq_id)
        self._session(body.session_id).models.append(model_id)
        return self._new_future(model_id, lambda: self._loaded(
            self.runtime.create_model_from_state(model_id, body.path, body.optimizer),
            body.path, model_id), seq_key=0)

    @staticmethod
    def _loaded(_: None, path: str, model_id: str) -> types.LoadWeightsResponse:
        return types.LoadWeightsResponse(path=path, model_id=model_id)

    # -- checkpoints ----------------------------------------------------------------------
    async def list_checkpoints(self, request: Request) -> Response:
        found = await self._run_now("checkpoints", lambda: self.runtime.list_checkpoints(
            request.path_params["run_id"]))
        return _json(types.CheckpointsListResponse(checkpoints=found))

    async def delete_checkpoint(self, request: Request) -> Response:
        await self._run_now("checkpoints", lambda: self.runtime.delete_checkpoint(
            request.path_params["run_id"], request.path_params["checkpoint_id"]))
        return Response(status_code=204)

    # -- sampling -------------------------------------------------------------------------
    async def create_sampling_session(self, request: Request) -> Response:
        body = types.CreateSamplingSessionRequest.model_validate(await request.json())
        if (body.base_model is None) == (body.model_path is None):
            raise UserError("give exactly one of base_model and model_path")
        sampler_id = f"{body.session_id}:sample:{body.sampling_session_seq_id}"

        def create() -> str:
            base_name = self.runtime.sampler_from_request(
                sampler_id, self._model_name(body.base_model), body.model_path)
            return base_name
        base_name = await self._run_now(sampler_id, create)
        self._samplers[sampler_id] = types.GetSamplerResponse(
            sampler_id=sampler_id, base_model=str(self._model_dir(base_name)),
            model_path=body.model_path)
        self._session(body.session_id).samplers.append(sampler_id)
        return _json(types.CreateSamplingSessionResponse(sampling_session_id=sampler_id))

    async def get_sampler(self, request: Request) -> Response:
        sampler = self._samplers.get(request.path_params["sampler_id"])
        if sampler is None:
            return JSONResponse({"detail": "sampler not found"}, status_code=404)
        return _json(sampler)

    async def asample(self, request: Request) -> Response:
        body = types.SampleRequest.model_validate(await request.json())
        if body.sampling_session_id is None:
            raise UserError("sample requests need a sampling session (create_sampling_client)")
        refused = [name for name, used in (
            ("target_prompt_logprobs", body.target_prompt_logprobs is not None),
            ("prompt_alt_tokens_k", body.prompt_alt_tokens_k > 0),
            ("prompt_logprobs_last_n", body.prompt_logprobs_last_n is not None),
            ("record_stability_info", bool(body.record_stability_info))) if used]
        if refused:
            raise UserError(f"the local backend does not serve {', '.join(refused)}")
        params = body.sampling_params
        if params.max_tokens is not None and params.max_tokens < 1:
            raise UserError(f"max_tokens must be >= 1, got {params.max_tokens}")
        if body.num_samples < 1:
            raise UserError(f"num_samples must be >= 1, got {body.num_samples}")
        seed = params.seed if params.seed is not None else secrets.randbits(31)
        sample = engine.SampleRequest(
            body.prompt.to_ints(), body.num_samples, params, seed,
            prompt_logprobs=bool(body.prompt_logprobs), topk_prompt=body.topk_prompt_logprobs,
            topk_sample=body.topk_sample_logprobs)
        sampler_id = body.sampling_session_id
        ids = [f"{sampler_id}:{body.seq_id}:{k}" for k in range(body.num_samples)]
        return self._new_future(
            sampler_id, None, seq_key=body.seq_id, payload=sample,
            batch=lambda requests: self.runtime.sample_steps(sampler_id, requests),
            extra={"sample_sequence_ids": ids})

    # -- results --------------------------------------------------------------------------
    async def retrieve_future(self, request: Request) -> Response:
        body = types.FutureRetrieveRequest.model_validate(await request.json())
        pending = self._pending.get(body.request_id)
        if pending is None:
            return JSONResponse({"detail": f"unknown request id {body.request_id}"},
                                status_code=404)
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
        if isinstance(result, PROTO_RESULTS) and wire.PROTO in request.headers.get("accept", ""):
            data = (wire.sample_response(result) if isinstance(result, types.SampleResponse)
                    else wire.forward_backward_output(result))
            return Response(data, media_type=wire.PROTO)
        return _json(result)

    # -- names ----------------------------------------------------------------------------
    def _session(self, session_id: str) -> _Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise UserError(f"session {session_id} not found (was the ServiceClient closed?)")
        return session

    @staticmethod
    def _model_id(session_id: str, model_seq_id: int) -> str:
        return f"{session_id}:train:{model_seq_id}"  # the id the SDK derives itself

    def _model_dir(self, name: str) -> Path:
        """A directory with the model's tokenizer: what SamplingClient.get_base_model() reports,
        so that the SDK's get_tokenizer() loads it offline (a hub name would go online)."""
        if Path(name).is_dir():
            return Path(name)
        directory = self.root / "models" / re.sub(r"[^A-Za-z0-9._-]", "_", name)
        if not (directory / "tokenizer_config.json").exists():
            load_base_model(name).tokenizer.save_pretrained(directory)
            (directory / "local_tinker_model.txt").write_text(name)
        return directory

    def _model_name(self, name: str | None) -> str | None:
        """Inverse of _model_dir, so a reported base model can be passed back in."""
        if name is not None and (Path(name) / "local_tinker_model.txt").is_file():
            return (Path(name) / "local_tinker_model.txt").read_text()
        return name


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
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PortInUse(f"cannot listen on {host}:{port} ({exc.strerror}); is another server "
                        "running there? Pick another --port, or 0 for any free port") from None
    # Accepted connections inherit this: without it a response's header and body writes meet
    # Nagle's algorithm and the client's delayed ACK, and every call costs 40 ms more.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.listen(128)
    return sock


def _uvicorn(server: LocalTinkerServer) -> uvicorn.Server:
    config = uvicorn.Config(server.app, log_level="warning", access_log=False, lifespan="off",
                            timeout_keep_alive=60)
    return uvicorn.Server(config)


def serve_forever(server: LocalTinkerServer, host: str, port: int) -> None:
    sock = bind(host, port)
    actual = sock.getsockname()[1]
    print(f"local tinker server on http://{host}:{actual} (root {server.root}); "
          f"point the SDK at it: tinker.ServiceClient(base_url='http://{host}:{actual}', "
          f"api_key='{LOCAL_API_KEY}')", flush=True)
    _uvicorn(server).run(sockets=[sock])


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
