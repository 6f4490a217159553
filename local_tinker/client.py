"""ServiceClient, TrainingClient and SamplingClient with the tinker SDK's signatures, in-process.

Every call returns a future at once and runs on one worker thread in submission order, as calls
of one Tinker session do: `forward_backward` then `optim_step` submitted back to back run in that
order, and consecutive `sample` calls on one sampling client are batched into one generation.

Test and benchmark knobs (arguments, or environment variables read when the client is created):
- `latency_s` / LOCAL_TINKER_LATENCY_S: each future resolves no earlier than this many seconds
  after submission, like a network round trip (round trips of concurrent calls overlap).
- `fault_rate` / LOCAL_TINKER_FAULT_RATE: the probability that a call hits a transient fault.
  Faulted calls are retried with backoff before they run, as the SDK retries transient errors,
  so a run with faults ends exactly like one without; `ServiceClient.faults_survived` counts them.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import random
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import peft
import torch
from tinker import types
from tinker.lib.public_interfaces.api_future import AwaitableConcurrentFuture

from . import engine, losses
from .models import BaseModel, load_base_model, lora_target_modules

log = logging.getLogger("local_tinker")
# Raised inside transformers when peft wraps a model; nothing a user of this backend can act on.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
LORA_ALPHA = 32
SAMPLE_BATCH_WINDOW_S = 0.005  # how long the worker waits for more sample calls to batch


def default_root() -> Path:
    env = os.environ.get("LOCAL_TINKER_ROOT")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(env) if env else cache / "local_tinker"


@dataclass
class _Call:
    run: Callable[[list[Any]], list[Any]]  # payloads -> results, one per payload
    payload: Any
    future: Future
    deadline: float
    batch_key: object | None = None


@dataclass
class _Worker:
    """Runs calls one at a time in FIFO order; see the module docstring for latency and faults."""

    latency_s: float
    fault_rate: float
    fault_seed: int = 0
    faults_survived: int = 0
    _pending: collections.deque = field(default_factory=collections.deque)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        self._fault_rng = random.Random(self.fault_seed)
        threading.Thread(target=self._loop, name="local-tinker-worker", daemon=True).start()

    def submit(self, run: Callable[[list[Any]], list[Any]], payload: Any = None,
               batch_key: object | None = None) -> AwaitableConcurrentFuture:
        future: Future = Future()
        call = _Call(run, payload, future, time.monotonic() + self.latency_s, batch_key)
        with self._cond:
            self._pending.append(call)
            self._cond.notify()
        return AwaitableConcurrentFuture(future)

    def _take_batch(self) -> list[_Call]:
        with self._cond:
            while not self._pending:
                self._cond.wait()
            batch = [self._pending.popleft()]
            key = batch[0].batch_key
            if key is None:
                return batch
            deadline = time.monotonic() + SAMPLE_BATCH_WINDOW_S
            while True:
                while self._pending and self._pending[0].batch_key is key:
                    batch.append(self._pending.popleft())
                remaining = deadline - time.monotonic()
                if self._pending or remaining <= 0:
                    return batch
                self._cond.wait(remaining)

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            attempt = 0
            while self.fault_rate and self._fault_rng.random() < self.fault_rate:
                attempt += 1
                self.faults_survived += 1
                log.info("transient fault injected; retry %d after backoff", attempt)
                time.sleep(min(0.01 * 2**attempt, 0.2))
            try:
                results = batch[0].run([c.payload for c in batch])
                outcomes = [(c, r, None) for c, r in zip(batch, results, strict=True)]
            except BaseException as exc:  # delivered to the caller through its future
                outcomes = [(c, None, exc) for c in batch]
            for call, result, exc in outcomes:
                self._deliver(call, result, exc)

    @staticmethod
    def _deliver(call: _Call, result: Any, exc: BaseException | None) -> None:
        def resolve() -> None:
            if exc is not None:
                call.future.set_exception(exc)
            else:
                call.future.set_result(result)

        wait = call.deadline - time.monotonic()
        if wait > 0:
            threading.Timer(wait, resolve).start()
        else:
            resolve()


def _single(fn: Callable[[], Any]) -> Callable[[list[Any]], list[Any]]:
    return lambda payloads: [fn()]


class ServiceClient:
    """In-process stand-in for `tinker.ServiceClient`; checkpoints live under `root`."""

    def __init__(self, root: str | Path | None = None, *, latency_s: float | None = None,
                 fault_rate: float | None = None, device: str | None = None,
                 seed: int = 0, **_: Any) -> None:
        self.root = Path(root) if root else default_root()
        self.device = torch.device(
            device or os.environ.get("LOCAL_TINKER_DEVICE")
            or ("cuda" if torch.cuda.is_available() else "cpu")
        )
        self._worker = _Worker(
            latency_s=float(latency_s if latency_s is not None
                            else os.environ.get("LOCAL_TINKER_LATENCY_S", 0)),
            fault_rate=float(fault_rate if fault_rate is not None
                             else os.environ.get("LOCAL_TINKER_FAULT_RATE", 0)),
            fault_seed=seed,
        )
        self._seed_rng = random.Random(seed)
        self._sampler_hosts: dict[Path, torch.nn.Module] = {}

    @property
    def faults_survived(self) -> int:
        return self._worker.faults_survived

    # -- creation -------------------------------------------------------------------------
    def create_lora_training_client(
        self, base_model: str, rank: int = 32, seed: int | None = None, train_mlp: bool = True,
        train_attn: bool = True, train_unembed: bool = True,
        user_metadata: dict[str, str] | None = None, optimizer: Any = None,
    ) -> AwaitableConcurrentFuture:
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        lora = {"rank": rank, "seed": 0 if seed is None else seed, "train_mlp": train_mlp,
                "train_attn": train_attn, "train_unembed": train_unembed}
        return self._worker.submit(_single(
            lambda: TrainingClient(self, load_base_model(base_model), lora)))

    def create_training_client_from_state(self, path: str, **_: Any) -> AwaitableConcurrentFuture:
        directory = self.resolve(path)
        return self._worker.submit(_single(lambda: self._client_from_state(directory, False)))

    def create_training_client_from_state_with_optimizer(
        self, path: str, **_: Any
    ) -> AwaitableConcurrentFuture:
        directory = self.resolve(path)
        return self._worker.submit(_single(lambda: self._client_from_state(directory, True)))

    def create_sampling_client(self, model_path: str | None = None, base_model: str | None = None,
                               **_: Any) -> AwaitableConcurrentFuture:
        if model_path is None and base_model is None:
            raise ValueError("Either model_path or base_model must be provided")
        if model_path is not None:
            directory = self.resolve(model_path)
            return self._worker.submit(_single(lambda: self._sampler_from_path(directory)))
        return self._worker.submit(_single(
            lambda: SamplingClient(self, load_base_model(base_model), None, None)))

    # -- checkpoints ----------------------------------------------------------------------
    def resolve(self, path: str) -> Path:
        """`local://<run>/<kind>/<name>` -> its directory under root; clear errors otherwise."""
        prefix = "local://"
        if not path.startswith(prefix):
            raise ValueError(
                f"checkpoint path {path!r} is not a local backend path "
                f"({prefix}<run>/weights/<name>); tinker:// paths need --backend tinker")
        directory = self.root / path[len(prefix):]
        if not (directory / "meta.json").exists():
            raise FileNotFoundError(f"checkpoint {path} not found (looked in {directory})")
        return directory

    def _client_from_state(self, directory: Path, with_optimizer: bool) -> TrainingClient:
        meta = json.loads((directory / "meta.json").read_text())
        client = TrainingClient(self, load_base_model(meta["base_model"]), meta["lora"])
        client._load(directory, with_optimizer)
        return client

    def _sampler_from_path(self, directory: Path) -> SamplingClient:
        meta = json.loads((directory / "meta.json").read_text())
        base = load_base_model(meta["base_model"])
        host = self._sampler_hosts.get(directory)
        if host is None:
            host = _lora_model(base, meta["lora"], self.device)
            self._sampler_hosts = {directory: host}  # keep one: a sampler host is a model copy
        weights = torch.load(directory / "adapter.pt", map_location=self.device)
        return SamplingClient(self, base, host, weights)


def _lora_model(base: BaseModel, lora: Mapping[str, Any], device: torch.device) -> torch.nn.Module:
    model = base.fresh_copy()
    config = peft.LoraConfig(
        r=lora["rank"], lora_alpha=LORA_ALPHA, lora_dropout=0.0,
        target_modules=lora_target_modules(
            model, lora["train_mlp"], lora["train_attn"], lora["train_unembed"]),
    )
    with torch.random.fork_rng(devices=[]):  # LoRA init from the client's seed, nothing global
        torch.manual_seed(lora["seed"])
        wrapped = peft.get_peft_model(model, config)
    return wrapped.to(device).eval()


def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in _trainable(model).items()}


@torch.no_grad()
def _assign(model: torch.nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    params = _trainable(model)
    if set(params) != set(weights):
        raise ValueError("checkpoint does not match this model's LoRA layout")
    for name, p in params.items():
        p.copy_(weights[name])


class TrainingClient:
    """A LoRA adapter on its own copy of the base model, with an AdamW optimizer."""

    def __init__(self, service: ServiceClient, base: BaseModel, lora: Mapping[str, Any]) -> None:
        self._service = service
        self._base = base
        self._lora = dict(lora)
        self._model = _lora_model(base, self._lora, service.device)
        self._optimizer = torch.optim.AdamW(_trainable(self._model).values(), lr=1e-4,
                                            betas=(0.9, 0.95), eps=1e-12, weight_decay=0.0)
        self.model_id = f"run-{uuid.uuid4().hex[:12]}"

    # -- SDK surface ----------------------------------------------------------------------
    def forward_backward(self, data: Sequence[types.Datum], loss_fn: str,
                         loss_fn_config: Mapping[str, float | str] | None = None
                         ) -> AwaitableConcurrentFuture:
        return self._submit_loss(data, loss_fn, loss_fn_config, backward=True)

    def forward(self, data: Sequence[types.Datum], loss_fn: str,
                loss_fn_config: Mapping[str, float | str] | None = None
                ) -> AwaitableConcurrentFuture:
        return self._submit_loss(data, loss_fn, loss_fn_config, backward=False)

    def optim_step(self, optim_params: types.AdamParams | None = None, *,
                   adam_params: types.AdamParams | None = None) -> AwaitableConcurrentFuture:
        params = optim_params or adam_params or types.AdamParams()
        if params.learning_rate < 0:
            raise ValueError(f"learning_rate must be >= 0, got {params.learning_rate}")
        return self._service._worker.submit(_single(lambda: self._optim_step(params)))

    def save_state(self, name: str, **_: Any) -> AwaitableConcurrentFuture:
        path = f"local://{self.model_id}/weights/{name}"
        return self._service._worker.submit(_single(
            lambda: types.SaveWeightsResponse(path=self._save(path, with_optimizer=True))))

    def save_weights_for_sampler(self, name: str, **_: Any) -> AwaitableConcurrentFuture:
        path = f"local://{self.model_id}/sampler_weights/{name}"
        return self._service._worker.submit(_single(
            lambda: types.SaveWeightsForSamplerResponse(path=self._save(path, False))))

    def save_weights_and_get_sampling_client(self, name: str | None = None, **_: Any
                                             ) -> AwaitableConcurrentFuture:
        return self._service._worker.submit(_single(lambda: SamplingClient(
            self._service, self._base, self._model, _snapshot(self._model))))

    def load_state(self, path: str, **_: Any) -> AwaitableConcurrentFuture:
        return self._submit_load(path, with_optimizer=False)

    def load_state_with_optimizer(self, path: str, **_: Any) -> AwaitableConcurrentFuture:
        return self._submit_load(path, with_optimizer=True)

    def get_tokenizer(self):
        return self._base.tokenizer

    def get_info(self) -> types.GetInfoResponse:
        return types.GetInfoResponse(
            model_id=self.model_id, is_lora=True, lora_rank=self._lora["rank"],
            model_name=self._base.name,
            model_data=types.ModelData(arch=self._base.model.config.model_type,
                                       model_name=self._base.name, tokenizer_id=self._base.name),
        )

    # -- work done on the worker thread ---------------------------------------------------
    def _submit_loss(self, data, loss_fn, loss_fn_config, backward: bool
                     ) -> AwaitableConcurrentFuture:
        data = list(data)
        losses.validate(data, loss_fn, loss_fn_config, self._model.config.vocab_size)
        return self._service._worker.submit(
            _single(lambda: self._run_loss(data, loss_fn, loss_fn_config, backward)))

    def _run_loss(self, data: list[types.Datum], loss_fn: str,
                  loss_fn_config: Mapping[str, float | str] | None, backward: bool
                  ) -> types.ForwardBackwardOutput:
        device = self._service.device
        inputs = [d.model_input.to_ints() for d in data]
        outputs: list[dict[str, types.TensorData]] = []
        total = 0.0
        for chunk in engine.microbatches([len(x) for x in inputs]):
            with torch.set_grad_enabled(backward):
                logprobs = engine.token_logprobs(
                    self._model, [inputs[i] for i in chunk],
                    [data[i].loss_fn_inputs["target_tokens"].to_numpy() for i in chunk])
                chunk_loss = torch.zeros((), device=device)
                for i, lp in zip(chunk, logprobs, strict=True):
                    tensors = {k: torch.as_tensor(v.to_numpy(), device=device, dtype=torch.float32)
                               for k, v in data[i].loss_fn_inputs.items() if k != "target_tokens"}
                    chunk_loss = chunk_loss + losses.per_token_loss(
                        loss_fn, lp, tensors, loss_fn_config).sum()
                if backward:
                    chunk_loss.backward()
            total += float(chunk_loss.detach())
            outputs += [{"logprobs": types.TensorData.from_numpy(lp.detach().cpu().numpy())}
                        for lp in logprobs]
        return types.ForwardBackwardOutput(
            loss_fn_output_type="ArrayRecord", loss_fn_outputs=outputs,
            metrics={"loss:sum": total})

    def _optim_step(self, params: types.AdamParams) -> types.OptimStepResponse:
        trainable = list(_trainable(self._model).values())
        norm = torch.nn.utils.clip_grad_norm_(
            trainable, params.grad_clip_norm if params.grad_clip_norm > 0 else float("inf"))
        for group in self._optimizer.param_groups:
            group.update(lr=params.learning_rate, betas=(params.beta1, params.beta2),
                         eps=params.eps, weight_decay=params.weight_decay)
        self._optimizer.step()
        self._optimizer.zero_grad(set_to_none=True)
        return types.OptimStepResponse(metrics={"grad_norm": float(norm)})

    def _save(self, path: str, with_optimizer: bool) -> str:
        directory = self._service.root / path[len("local://"):]
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(_snapshot(self._model), directory / "adapter.pt")
        if with_optimizer:
            torch.save(self._optimizer.state_dict(), directory / "optimizer.pt")
        meta = {"base_model": self._base.name, "lora": self._lora, "path": path,
                "kind": "state" if with_optimizer else "sampler"}
        (directory / "meta.json").write_text(json.dumps(meta, indent=2))
        return path

    def _submit_load(self, path: str, with_optimizer: bool) -> AwaitableConcurrentFuture:
        directory = self._service.resolve(path)

        def load() -> types.LoadWeightsResponse:
            self._load(directory, with_optimizer)
            return types.LoadWeightsResponse(path=path, model_id=self.model_id)
        return self._service._worker.submit(_single(load))

    def _load(self, directory: Path, with_optimizer: bool) -> None:
        device = self._service.device
        _assign(self._model, torch.load(directory / "adapter.pt", map_location=device))
        if with_optimizer:
            if not (directory / "optimizer.pt").exists():
                raise FileNotFoundError(f"{directory} holds sampler weights, not optimizer state")
            self._optimizer.load_state_dict(
                torch.load(directory / "optimizer.pt", map_location=device))


class SamplingClient:
    """Samples from fixed weights: a LoRA snapshot swapped into a host model, or the base."""

    def __init__(self, service: ServiceClient, base: BaseModel, host: torch.nn.Module | None,
                 weights: dict[str, torch.Tensor] | None) -> None:
        self._service = service
        self._base = base
        self._host = host
        self._weights = weights
        if host is None:
            self._base.model.to(service.device)

    def sample(self, prompt: types.ModelInput, num_samples: int,
               sampling_params: types.SamplingParams, **_: Any) -> AwaitableConcurrentFuture:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if sampling_params.max_tokens is not None and sampling_params.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {sampling_params.max_tokens}")
        seed = sampling_params.seed
        if seed is None:
            seed = self._service._seed_rng.randrange(2**31)
        request = engine.SampleRequest(prompt.to_ints(), num_samples, sampling_params, seed)
        return self._service._worker.submit(self._sample_batch, request, batch_key=self)

    def compute_logprobs(self, prompt: types.ModelInput, **_: Any) -> AwaitableConcurrentFuture:
        tokens = prompt.to_ints()

        def run() -> list[float | None]:
            with self._weights_applied() as model, torch.no_grad():
                (lp,) = engine.token_logprobs(model, [tokens[:-1]], [tokens[1:]])
            return [None, *lp.cpu().tolist()]
        return self._service._worker.submit(_single(run))

    def get_tokenizer(self):
        return self._base.tokenizer

    def get_base_model(self) -> str:
        return self._base.name

    def _sample_batch(self, requests: list[engine.SampleRequest]) -> list[types.SampleResponse]:
        with self._weights_applied() as model:
            return engine.sample(model, self._base.tokenizer, requests, self._base.stop_token_ids)

    @contextlib.contextmanager
    def _weights_applied(self) -> Iterator[torch.nn.Module]:
        """The model to run, with this client's snapshot swapped in for the duration."""
        if self._host is None:
            yield self._base.model
            return
        saved = _snapshot(self._host)
        _assign(self._host, self._weights)
        try:
            yield self._host
        finally:
            _assign(self._host, saved)


