"""The server's internal API: LoRA models, samplers and checkpoints, as plain blocking calls.

Only `local_tinker.server` calls this; clients reach it through the tinker SDK over HTTP. Every
method runs on the scheduler's one worker thread, so nothing here locks.

Checkpoints are addressed as Tinker addresses them, `tinker://<run>/<kind>/<name>` with kind
`weights` (adapter + optimizer, for resuming) or `sampler_weights` (adapter only), and live in
`<root>/<run>/<kind>/<name>/`. `local://` paths written by earlier versions still load.

Walls: every path a request names becomes a directory through `Storage.resolve`, which refuses
anything that leaves the root once normalised and with symlinks followed; and every checkpoint
records the identity (a SHA-256) of the API key that wrote it, so that another key cannot list,
load or delete it. A refusal for "absent", "another key's" and "outside the root" is the same
NotFound, so that it reveals nothing about what exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import peft
import torch
from tinker import types

from . import LOCAL_API_KEY, engine, losses
from .models import BaseModel, load_base_model, lora_target_modules

log = logging.getLogger("local_tinker")
LORA_ALPHA = 32
MAX_LORA_RANK = 512  # far above what a tiny model can use; stops a typo from exhausting memory
PREFIXES = ("tinker://", "local://")
KINDS = ("weights", "sampler_weights")
CHECKPOINT_PATH_FORM = "tinker://<run>/weights/<name> or tinker://<run>/sampler_weights/<name>"
MAX_NAME_BYTES = 255  # a file name on every common filesystem
# A model config that declares no context length (none of ours) is taken to have this one.
FALLBACK_CONTEXT = 32_768


class UserError(ValueError):
    """A request that cannot work as sent; the message says why (sent back to the SDK)."""


class NotFound(UserError):
    """No such object for this caller: absent, another key's, or outside the root. One answer
    for the three, so that a refusal reveals nothing about what exists."""


class StorageFailure(RuntimeError):
    """The root cannot be written (read-only, full): the server's environment, not the request.
    The message names the checkpoint, not the server's directories."""


def key_owner(api_key: str) -> str:
    """The identity a key's objects carry, on disk too: its SHA-256, never the key itself."""
    return hashlib.sha256(api_key.encode()).hexdigest()


# The identity of the placeholder key the scripts send. Checkpoints written before ownership
# was recorded came from the scripts, so they belong to it.
PLACEHOLDER_OWNER = key_owner(LOCAL_API_KEY)


def default_root() -> Path:
    env = os.environ.get("LOCAL_TINKER_ROOT")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(env) if env else cache / "local_tinker"


def is_plain_name(name: str) -> bool:
    """One path component that stays where it is put: no separators, no dot names, not hidden
    (hidden names are the staging directories of checkpoints being written)."""
    return (bool(name) and not name.startswith(".") and not any(c in name for c in "/\\\0")
            and len(name.encode()) <= MAX_NAME_BYTES)


def parse_checkpoint_path(path: str) -> tuple[str, str, str]:
    """(run, kind, name) of a tinker:// (or older local://) path; decided on the string alone."""
    prefix = next((p for p in PREFIXES if path.startswith(p)), None)
    parts = path[len(prefix):].split("/") if prefix else []
    if len(parts) != 3 or parts[1] not in KINDS or not (is_plain_name(parts[0])
                                                         and is_plain_name(parts[2])):
        raise UserError(f"{path!r} is not a checkpoint path: expected {CHECKPOINT_PATH_FORM}")
    return parts[0], parts[1], parts[2]


def context_length(base: BaseModel) -> int:
    """Tokens the model can attend over: prompt plus generation, or a datum, must fit in it."""
    config = base.model.config
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return FALLBACK_CONTEXT


def check_token_ids(tokens: list[int], base: BaseModel, what: str) -> None:
    """Token ids a model can embed, or a UserError naming `what` (e.g. "datum 3: model_input")."""
    vocab = base.model.config.vocab_size
    if tokens and not 0 <= min(tokens) <= max(tokens) < vocab:
        bad = next(t for t in tokens if not 0 <= t < vocab)
        raise UserError(f"{what} has token id {bad}, outside {base.name}'s vocabulary "
                        f"[0, {vocab})")


class Storage:
    """The checkpoint tree under one root."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def resolve(self, *names: str) -> Path | None:
        """root/names... with `..` and symlinks resolved, or None where that is not strictly
        inside the root. The one checked resolver: every path a request names goes through it."""
        path = self.root.joinpath(*names).resolve()
        return path if path != self.root and path.is_relative_to(self.root) else None

    def owned_meta(self, directory: Path | None, owner: str) -> dict[str, Any] | None:
        """A checkpoint directory's meta.json if it exists, parses and belongs to `owner`."""
        if directory is None:
            return None
        try:
            meta = json.loads((directory / "meta.json").read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("unreadable checkpoint metadata in %s: %s", directory, exc)
            return None
        if not isinstance(meta, dict):
            return None
        recorded = str(meta.get("owner", PLACEHOLDER_OWNER))
        return meta if hmac.compare_digest(recorded, owner) else None


@dataclass
class Trainable:
    """A LoRA adapter on its own copy of a base model, with an AdamW optimizer."""

    model_id: str
    base: BaseModel
    lora: dict[str, Any]
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    user_metadata: dict[str, str] | None = None


@dataclass
class Sampler:
    """Fixed weights to sample from: a LoRA snapshot (None: the base model itself)."""

    base: BaseModel
    lora: dict[str, Any] | None
    weights: dict[str, torch.Tensor] | None
    directory: Path | None = None  # a checkpoint's, for samplers made from a path
    last_used: float = field(default_factory=time.monotonic)


class Runtime:
    def __init__(self, root: Path, device: torch.device) -> None:
        self.storage = Storage(root)
        self.root = self.storage.root
        self.device = device
        self.models: dict[str, Trainable] = {}
        self.samplers: dict[str, Sampler] = {}
        self.sample_logprobs = "exact"  # or "decode" (engine.SAMPLE_LOGPROBS)
        self.compile = False  # training passes through torch.compile (engine.CompiledLogprobs)
        self._hosts: dict[tuple, torch.nn.Module] = {}  # one LoRA-wrapped copy per layout

    # -- models ---------------------------------------------------------------------------
    def create_model(self, model_id: str, base_model: str, lora: types.LoraConfig,
                     user_metadata: dict[str, str] | None = None) -> None:
        if not 1 <= lora.rank <= MAX_LORA_RANK:
            raise UserError(f"LoRA rank must be between 1 and {MAX_LORA_RANK}, got {lora.rank}")
        spec = {"rank": lora.rank, "seed": 0 if lora.seed is None else lora.seed,
                "train_mlp": lora.train_mlp, "train_attn": lora.train_attn,
                "train_unembed": lora.train_unembed}
        self.models[model_id] = self._trainable(model_id, self._base(base_model), spec,
                                                user_metadata)

    def create_model_from_state(self, model_id: str, path: str, optimizer: bool, owner: str,
                                base_model: str | None = None,
                                user_metadata: dict[str, str] | None = None) -> None:
        directory, meta = self.checkpoint(path, owner)
        if base_model is not None and base_model != meta["base_model"]:
            raise UserError(f"{path} is a LoRA of {meta['base_model']}; the local backend "
                            f"cannot move it onto base_model={base_model!r} (leave it out)")
        trainable = self._trainable(model_id, self._base(meta["base_model"]), meta["lora"],
                                    user_metadata)
        self._load_into(trainable, directory, path, optimizer)
        self.models[model_id] = trainable

    def load(self, model_id: str, path: str, optimizer: bool, owner: str) -> None:
        trainable = self.model(model_id)
        directory, meta = self.checkpoint(path, owner)
        if meta["base_model"] != trainable.base.name or meta["lora"]["rank"] != \
                trainable.lora["rank"]:
            raise UserError(f"{path} holds a rank-{meta['lora']['rank']} LoRA of "
                            f"{meta['base_model']}; this model is a rank-"
                            f"{trainable.lora['rank']} LoRA of {trainable.base.name}")
        self._load_into(trainable, directory, path, optimizer)

    def model(self, model_id: str) -> Trainable:
        try:
            return self.models[model_id]
        except KeyError:
            raise NotFound(f"no training model {model_id!r} on this server (it may have "
                           "been released when its session closed)") from None

    def info(self, model_id: str, tokenizer_dir: str) -> types.GetInfoResponse:
        trainable = self.model(model_id)
        return types.GetInfoResponse(
            model_id=model_id, is_lora=True, lora_rank=trainable.lora["rank"],
            model_name=trainable.base.name,
            # The SDK names a snapshot sampler's base model (and loads its tokenizer) from
            # model_data.model_name: the model's directory here, since a local model has no
            # hub name to load a tokenizer from.
            model_data=types.ModelData(arch=trainable.base.model.config.model_type,
                                       model_name=tokenizer_dir, tokenizer_id=tokenizer_dir))

    def release(self, model_ids: list[str], sampler_ids: list[str]) -> None:
        for model_id in model_ids:
            self.models.pop(model_id, None)
        for sampler_id in sampler_ids:
            self.samplers.pop(sampler_id, None)

    # -- training -------------------------------------------------------------------------
    def forward_backward(self, model_id: str, fwd: types.ForwardBackwardInput,
                         backward: bool) -> types.ForwardBackwardOutput:
        trainable = self.model(model_id)
        data = list(fwd.data)
        try:
            losses.validate(data, fwd.loss_fn, fwd.loss_fn_config,
                            trainable.model.config.vocab_size)
        except losses.LossInputError as exc:
            raise UserError(str(exc)) from None
        context = context_length(trainable.base)
        for i, datum in enumerate(data):
            if datum.model_input.length > context:
                raise UserError(f"datum {i}: {datum.model_input.length} tokens exceed "
                                f"{trainable.base.name}'s context of {context} tokens")
            check_token_ids(datum.model_input.to_ints(), trainable.base, f"datum {i}: model_input")
            for key, tensor in datum.loss_fn_inputs.items():
                if key != "target_tokens" and not np.isfinite(tensor.to_numpy()).all():
                    raise UserError(f"datum {i}: loss_fn input {key!r} is not finite")
        logprobs_D, total = engine.forward_backward(trainable.model, data, fwd.loss_fn,
                                                    fwd.loss_fn_config, backward)
        outputs = [{"logprobs": types.TensorData.from_numpy(lp)} for lp in logprobs_D]
        return types.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord",
                                           loss_fn_outputs=outputs, metrics={"loss:sum": total})

    def optim_step(self, model_id: str, params: Any) -> types.OptimStepResponse:
        if not isinstance(params, types.AdamParams):
            raise UserError(f"optimizer {getattr(params, 'type', type(params).__name__)!r} is "
                            "not served by the local backend (it serves AdamParams)")
        if not (math.isfinite(params.learning_rate) and params.learning_rate >= 0):
            raise UserError(f"learning_rate must be a finite number >= 0, got "
                            f"{params.learning_rate}")
        trainable = self.model(model_id)
        # The optimizer's own list: walking the module tree for it cost ~1 ms a step.
        trainable_params = [p for group in trainable.optimizer.param_groups
                            for p in group["params"]]
        clip = params.grad_clip_norm if params.grad_clip_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(trainable_params, clip)
        for group in trainable.optimizer.param_groups:
            group.update(lr=params.learning_rate, betas=(params.beta1, params.beta2),
                         eps=params.eps, weight_decay=params.weight_decay)
        trainable.optimizer.step()
        trainable.optimizer.zero_grad(set_to_none=True)
        return types.OptimStepResponse(metrics={"grad_norm": float(norm)})

    # -- checkpoints ----------------------------------------------------------------------
    def save(self, model_id: str, name: str, kind: str, owner: str,
             ttl_seconds: int | None = None, overwrite: bool = False,
             user_metadata: dict[str, str] | None = None) -> str:
        """Write a checkpoint; kind is "weights" (with optimizer) or "sampler_weights"."""
        trainable = self.model(model_id)
        if not is_plain_name(name):
            raise UserError(f"checkpoint name {name!r} must be a name without '/' or '\\' that "
                            f"does not start with '.' (at most {MAX_NAME_BYTES} bytes)")
        path = f"tinker://{model_id}/{kind}/{name}"
        directory = self.storage.resolve(model_id, kind, name)
        if directory is None:
            raise UserError(f"cannot write checkpoint {path}: its place is outside this "
                            "server's storage")
        if (directory / "meta.json").exists():
            if self.storage.owned_meta(directory, owner) is None:
                raise UserError(f"cannot write checkpoint {path}: the name is taken")
            if not overwrite:
                raise UserError(f"checkpoint {path} already exists; pass overwrite=True to "
                                "replace it")
        now = time.time()
        meta = {"base_model": trainable.base.name, "lora": trainable.lora, "path": path,
                "kind": kind, "created": now, "user_metadata": user_metadata,
                "expires": now + ttl_seconds if ttl_seconds else None, "owner": owner}
        files = {"adapter.pt": _serialized(_snapshot(trainable.model)),
                 "meta.json": json.dumps(meta, indent=2).encode()}
        if kind == "weights":
            files["optimizer.pt"] = _serialized(trainable.optimizer.state_dict())
        staging = directory.with_name(f".{name}.partial")
        try:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            for file_name, data in files.items():
                (staging / file_name).write_bytes(data)
            shutil.rmtree(directory, ignore_errors=True)
            staging.rename(directory)  # a checkpoint is either whole or absent
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            log.error("cannot write checkpoint %s in %s: %s", path, directory, exc)
            raise StorageFailure(f"cannot write checkpoint {path}: the server's storage "
                                 f"failed ({exc.strerror or type(exc).__name__})") from None
        return path

    def list_checkpoints(self, run_id: str, owner: str) -> list[types.Checkpoint]:
        """The run's checkpoints that belong to `owner` (none for a run id that is no name)."""
        found: list[types.Checkpoint] = []
        if not is_plain_name(run_id):
            return found
        for kind, label in (("weights", "training"), ("sampler_weights", "sampler")):
            kind_dir = self.storage.resolve(run_id, kind)
            names = sorted(p.name for p in kind_dir.iterdir()) if kind_dir and \
                kind_dir.is_dir() else []
            for name in filter(is_plain_name, names):
                directory = self.storage.resolve(run_id, kind, name)
                meta = self.storage.owned_meta(directory, owner)
                if directory is None or meta is None:
                    continue
                size = sum(f.stat().st_size for f in directory.iterdir() if f.is_file())
                expires = meta.get("expires")
                found.append(types.Checkpoint(
                    checkpoint_id=f"{kind}/{name}", checkpoint_type=label,
                    time=datetime.fromtimestamp(meta["created"], UTC), tinker_path=meta["path"],
                    size_bytes=size, user_metadata=meta.get("user_metadata"),
                    expires_at=datetime.fromtimestamp(expires, UTC) if expires else None))
        return found

    def delete_checkpoint(self, run_id: str, checkpoint_id: str, owner: str) -> None:
        kind, _, name = checkpoint_id.partition("/")
        directory = None
        if is_plain_name(run_id) and kind in KINDS and is_plain_name(name):
            directory = self.storage.resolve(run_id, kind, name)
        if self.storage.owned_meta(directory, owner) is None:
            raise NotFound(f"no checkpoint {checkpoint_id!r} in run {run_id!r}")
        assert directory is not None
        shutil.rmtree(directory)

    def checkpoint(self, path: str, owner: str) -> tuple[Path, dict[str, Any]]:
        """The directory and metadata of the checkpoint `path`, if it is `owner`'s."""
        directory = self.storage.resolve(*parse_checkpoint_path(path))
        meta = self.storage.owned_meta(directory, owner)
        if directory is None or meta is None:
            raise NotFound(f"checkpoint {path} not found on this server")
        if not (isinstance(meta.get("base_model"), str) and isinstance(meta.get("lora"), dict)):
            raise UserError(f"checkpoint {path} is damaged (its meta.json lacks base_model or "
                            "lora)")
        if meta.get("expires") and meta["expires"] < time.time():
            raise UserError(f"checkpoint {path} expired (its ttl_seconds have passed)")
        return directory, meta

    # -- sampling -------------------------------------------------------------------------
    def sampler_from_model(self, sampler_id: str, model_id: str) -> None:
        """save_weights_and_get_sampling_client: a snapshot of the current weights."""
        trainable = self.model(model_id)
        self.samplers[sampler_id] = Sampler(trainable.base, trainable.lora,
                                            _snapshot(trainable.model))

    def sampler_from_request(self, sampler_id: str, base_model: str | None,
                             model_path: str | None, owner: str) -> str:
        """create_sampling_client: checked now, loaded on first use. Returns the base model."""
        if model_path is not None:
            directory, meta = self.checkpoint(model_path, owner)
            if base_model is not None and base_model != meta["base_model"]:
                raise UserError(f"{model_path} is a LoRA of {meta['base_model']}, not of "
                                f"base_model={base_model!r}")
            self.samplers[sampler_id] = Sampler(self._base(meta["base_model"]), meta["lora"],
                                                None, directory)
            return meta["base_model"]
        assert base_model is not None
        self.samplers[sampler_id] = Sampler(self._base(base_model), None, None)
        return base_model

    def sampler(self, sampler_id: str) -> Sampler:
        try:
            return self.samplers[sampler_id]
        except KeyError:
            raise NotFound(f"no sampler {sampler_id!r} on this server") from None

    def sample(self, sampler_id: str, requests: list[engine.SampleRequest]
               ) -> list[types.SampleResponse]:
        return engine.run_to_end(self.sample_steps(sampler_id, requests))

    def sample_steps(self, sampler_id: str, requests: list[engine.SampleRequest]
                     ) -> Generator[None, None, list[types.SampleResponse]]:
        """`sample` in resumable pieces (engine.sample_steps): the scheduler runs other lanes'
        calls between them, so the sampler's weights are swapped back in for each piece."""
        sampler = self.sampler(sampler_id)
        sampler.last_used = time.monotonic()
        return engine.sample_steps(lambda: self._weights_applied(sampler),
                                   sampler.base.tokenizer, requests, sampler.base.stop_token_ids,
                                   logprobs=self.sample_logprobs)

    @contextlib.contextmanager
    def _weights_applied(self, sampler: Sampler) -> Iterator[torch.nn.Module]:
        """The model to run, with the sampler's LoRA weights swapped in for the duration."""
        if sampler.lora is None:
            sampler.base.model.to(self.device)
            yield sampler.base.model
            return
        if sampler.weights is None:  # a sampler made from a path loads on first use
            assert sampler.directory is not None
            sampler.weights = torch.load(sampler.directory / "adapter.pt",
                                         map_location=self.device)
        key = (sampler.base.name, json.dumps(sampler.lora, sort_keys=True))
        host = self._hosts.pop(key, None)
        if host is None:
            host = _lora_model(sampler.base, sampler.lora, self.device)
        # Keep the two most recent (a host is a full model copy): generations now take turns
        # chunk by chunk, and two samplers of different layouts must not rebuild one per chunk.
        self._hosts = {**dict(list(self._hosts.items())[-1:]), key: host}
        _assign(host, sampler.weights)
        yield host

    # -- helpers --------------------------------------------------------------------------
    def _base(self, name: str) -> BaseModel:
        try:
            return load_base_model(name)
        except ValueError as exc:
            raise UserError(str(exc)) from None

    def _trainable(self, model_id: str, base: BaseModel, lora: Mapping[str, Any],
                   user_metadata: dict[str, str] | None) -> Trainable:
        model = _lora_model(base, lora, self.device)
        if self.compile:
            model.compiled_logprobs = engine.CompiledLogprobs(model)
        # fused: one kernel per step instead of ~10 ops per tensor (2.0 -> 0.6 ms on tiny-chat)
        optimizer = torch.optim.AdamW(_trainable(model).values(), lr=1e-4, betas=(0.9, 0.95),
                                      eps=1e-12, weight_decay=0.0,
                                      fused=self.device.type in ("cpu", "cuda"))
        return Trainable(model_id, base, dict(lora), model, optimizer, user_metadata)

    def _load_into(self, trainable: Trainable, directory: Path, path: str,
                   optimizer: bool) -> None:
        try:
            weights = torch.load(directory / "adapter.pt", map_location=self.device)
            _assign(trainable.model, weights)
            if optimizer:
                if not (directory / "optimizer.pt").exists():
                    raise UserError(f"{path} holds sampler weights, not optimizer state: load "
                                    "a weights/ checkpoint to resume training")
                trainable.optimizer.load_state_dict(
                    torch.load(directory / "optimizer.pt", map_location=self.device))
        except (OSError, RuntimeError) as exc:
            log.warning("checkpoint %s in %s is unreadable: %s", path, directory, exc)
            raise UserError(f"checkpoint {path} is unreadable ({type(exc).__name__})") from None


def _lora_model(base: BaseModel, lora: Mapping[str, Any], device: torch.device) -> torch.nn.Module:
    model = base.fresh_copy()
    config = peft.LoraConfig(
        r=lora["rank"], lora_alpha=LORA_ALPHA, lora_dropout=0.0,
        target_modules=lora_target_modules(
            model, lora["train_mlp"], lora["train_attn"], lora["train_unembed"]),
    )
    with torch.random.fork_rng(devices=[]):  # LoRA init from the client's seed, nothing global
        torch.manual_seed(lora["seed"])
        with warnings.catch_warnings():  # peft asks transformers 5 a deprecated property
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated",
                                    FutureWarning)
            wrapped = peft.get_peft_model(model, config)
    return engine.fuse_lora(wrapped.to(device).eval())


def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _serialized(obj: Any) -> bytes:
    """torch.save's bytes, written by plain file I/O: a full disk is then an OSError naming
    its cause (torch.save's own writer reports only "file write failed")."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in _trainable(model).items()}


@torch.no_grad()
def _assign(model: torch.nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    params = _trainable(model)
    if set(params) != set(weights):
        raise UserError("checkpoint does not match this model's LoRA layout")
    for name, p in params.items():
        p.copy_(weights[name])
