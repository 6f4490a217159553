"""The compute behind the local backend: teacher-forced logprobs and batched sampling.

forward_backward runs a batch as few padded passes as the token budget allows (each pass costs
a fixed ~8 ms of dispatch on a tiny model, as much as ~80 tokens of compute), and runs a prefix
that several datums share (the samples of one prompt, a common system prompt) once when that
saves more tokens than the extra pass costs: its keys and values serve every row after it and
autograd sums the rows' gradients into it. That is exact up to float rounding, and is where the
engine gains on a plain padded training loop.

Sampling runs every sequence of a batch of requests together with a KV cache (prompts are
left-padded, each prefilled once for all its samples); a sequence that finishes leaves the batch.
Randomness comes from one `torch.Generator` per request, seeded by the request, and drawn for the
whole request at once, so a seeded request gives the same samples whatever else is in the batch.
Returned logprobs are the raw (temperature 1, unfiltered) logprobs of the sampled tokens, which
is what the Tinker service returns. By default ("exact") they are recomputed for each request on
its own so that they do not depend on its batch mates either (about a quarter of a sampling
call's time); `compute_logprobs` agrees with them. "decode" takes them from the generation's own
logits instead: the same values up to float rounding, which then depends on which
requests shared the batch, so a resumed run may differ from an uninterrupted one in the last
bits. A generation is resumable (`sample_steps`): it pauses every CHUNK_S of
decoding, so that the scheduler can serve other clients' calls in between.

LoRA layers run through `fuse_lora`, which folds the adapter's scaling and sum into one addmm.
With the server's `compile` setting, training passes without a shared prefix also run through
torch.compile (`CompiledLogprobs`); forward-only passes and sampling stay eager.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tinker import types
from tinker.types.topk_logprobs import TopkLogprobs
from transformers.cache_utils import DynamicCache, DynamicLayer

from . import losses

log = logging.getLogger("local_tinker")

# A bound on padded tokens per forward pass of forward_backward, so memory stays flat for big
# batches.
MAX_TOKENS_PER_MICROBATCH = 32_768
# Shorter common prefixes are not worth a forward pass of their own.
MIN_SHARED_PREFIX = 16
# A prefix group runs as passes of its own (the prefix, then the rows after it), apart from the
# other datums' one padded pass: worth it when it saves this many tokens. On tiny-chat (1 thread)
# a fwd+bwd pass costs ~8 ms plus ~0.1 ms a token, so two extra passes cost ~160 tokens' worth.
MIN_SHARED_SAVING = 256
DEFAULT_MAX_TOKENS = 256  # a sample request without max_tokens
SAMPLE_LOGPROBS = ("exact", "decode")  # where sampled tokens' logprobs come from (see above)
# A generation pauses after this much decoding so that other lanes' calls run in between: a
# short call waits for at most one chunk. Pausing costs a weight swap (microseconds to a few ms).
CHUNK_S = 0.05


def fuse_lora(model: torch.nn.Module) -> torch.nn.Module:
    """Route every plain LoRA linear layer of a peft model through `_fused_lora_forward`: the
    same result, with the adapter's scaling and its sum into the base output done inside one
    matrix multiply (addmm) instead of two elementwise passes over the layer's output (and
    their two backward passes). On tiny-chat those passes were ~15% of a training step and of
    a decode step. Layers in any other state (merged, disabled, several adapters, dropout,
    DoRA, ...) keep peft's forward."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    for module in model.modules():
        if isinstance(module, LoraLinear) and isinstance(module.base_layer, torch.nn.Linear):
            module.forward = _fused_lora_forward.__get__(module)  # peft's stays on the class
    return model


def _fused_lora_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    adapters = self.active_adapters
    if (args or kwargs or self.disable_adapters or self.merged or len(adapters) != 1
            or adapters[0] not in self.lora_A or adapters[0] in self.lora_variant
            or not isinstance(self.lora_dropout[adapters[0]], torch.nn.Identity)
            or x.dtype != self.lora_A[adapters[0]].weight.dtype):
        return type(self).forward(self, x, *args, **kwargs)
    lora_a, lora_b = self.lora_A[adapters[0]], self.lora_B[adapters[0]]
    flat = x.reshape(-1, x.shape[-1])
    base = torch.nn.functional.linear(flat, self.base_layer.weight, self.base_layer.bias)
    low = torch.nn.functional.linear(flat, lora_a.weight, lora_a.bias)
    out = torch.addmm(base, low, lora_b.weight.t(), alpha=self.scaling[adapters[0]])
    if lora_b.bias is not None:
        out = out + lora_b.bias * self.scaling[adapters[0]]
    return out.view(*x.shape[:-1], out.shape[-1])


def right_padded(rows: Sequence[Sequence[int] | np.ndarray], width: int,
                 dtype: type[np.generic], device: torch.device) -> torch.Tensor:
    """Rows laid out left-aligned in a zero-filled (len(rows), width) tensor, in one copy."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    filled = np.arange(width) < lengths[:, None]
    out = np.zeros((len(rows), width), dtype=dtype)
    if filled.any():
        out[filled] = np.concatenate([np.asarray(r) for r in rows])
    return torch.from_numpy(out).to(device)


def all_logprobs(model: torch.nn.Module, ids_BT: torch.Tensor, targets_BT: torch.Tensor
                 ) -> torch.Tensor:
    logits = model(input_ids=ids_BT, use_cache=False).logits.float()
    return logits.gather(-1, targets_BT.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


class CompiledLogprobs:
    """`all_logprobs` of one model through torch.compile, for training passes: inductor fuses
    the ~250 small elementwise ops of a tiny-chat step, whose dispatch cost rivals their work.
    One graph serves every batch shape (dynamic=True). Compiling takes 20-60 s on the first
    training pass (less with inductor's on-disk cache warm); if it fails (no C++ compiler, an
    unsupported model), the model says so once in the log and trains eagerly."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.run: Callable[..., torch.Tensor] | None = torch.compile(
            functools.partial(all_logprobs, model), dynamic=True)
        self.model = model
        self.compiled = False

    def __call__(self, ids_BT: torch.Tensor, targets_BT: torch.Tensor) -> torch.Tensor:
        if self.run is None:
            return all_logprobs(self.model, ids_BT, targets_BT)
        if self.compiled:
            return self.run(ids_BT, targets_BT)
        try:  # the first call compiles; nothing has run on the model if it fails
            picked = self.run(ids_BT, targets_BT)
        except Exception as exc:
            cause = exc  # dynamo wraps the compiler's error; name the one at the root
            while cause.__cause__ is not None:
                cause = cause.__cause__
            log.warning("torch.compile failed, training runs eagerly: %s: %s",
                        type(cause).__name__, (str(cause).strip().splitlines() or [""])[0])
            self.run = None
            return all_logprobs(self.model, ids_BT, targets_BT)
        self.compiled = True
        return picked


def padded_logprobs(model: torch.nn.Module, ids_BT: torch.Tensor, targets_BT: torch.Tensor,
                    shared: int = 0) -> torch.Tensor:
    """log p(target_t | input_<=t) at every position of a right-padded batch whose rows all
    begin with the same `shared` tokens; those are run once and their keys and values reused.

    Right padding needs no attention mask in a causal model: real tokens never see the pads.
    """
    if not shared:
        compiled = getattr(model, "compiled_logprobs", None)
        # A dimension of 1 would make dynamo compile a second graph (it specialises sizes 0/1).
        if compiled is not None and torch.is_grad_enabled() and min(ids_BT.shape) > 1:
            return compiled(ids_BT, targets_BT)
        return all_logprobs(model, ids_BT, targets_BT)
    rows = ids_BT.shape[0]
    prefix = model(input_ids=ids_BT[:1, :shared], use_cache=True)
    # Targets may differ between rows even where inputs agree, so pick per row.
    head = prefix.logits.float().log_softmax(-1).expand(rows, -1, -1)
    head = head.gather(-1, targets_BT[:, :shared].unsqueeze(-1)).squeeze(-1)
    cache = prefix.cache
    cache.batch_repeat_interleave(rows)  # autograd sums the rows' gradients into the prefix
    logits = model(input_ids=ids_BT[:, shared:], cache=cache, use_cache=True).logits.float()
    tail_targets = targets_BT[:, shared:].unsqueeze(-1)
    tail = logits.gather(-1, tail_targets).squeeze(-1) - logits.logsumexp(-1)
    return torch.cat([head, tail], dim=1)


def token_logprobs(model: torch.nn.Module, inputs_B: Sequence[Sequence[int]],
                   targets_B: Sequence[Sequence[int]], shared: int = 0) -> list[torch.Tensor]:
    """log p(target_t | input_<=t) for each sequence, batched with right padding; the first
    `shared` inputs, the same in every sequence, run once."""
    device = next(model.parameters()).device
    lengths = [len(x) for x in inputs_B]
    width = max(lengths)
    picked = padded_logprobs(model, right_padded(inputs_B, width, np.int64, device),
                             right_padded(targets_B, width, np.int64, device), shared)
    return [picked[row, :n] for row, n in enumerate(lengths)]


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    differs = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(differs[0]) if len(differs) else n


def shared_prefix_groups(inputs: Sequence[Sequence[int]]) -> list[tuple[int, list[int]]]:
    """(shared length, datum indices) groups of datums that begin with the same tokens, such
    as the samples of one prompt. Sorted order puts datums with long common prefixes next to
    each other; a datum joins the group before it while that saves tokens: sharing fewer
    tokens costs (members - 1) x the shortfall and saves the newcomer the shared length."""
    groups: list[tuple[int, list[int]]] = []
    for i in sorted(range(len(inputs)), key=lambda i: list(inputs[i])):
        if groups:
            shared, members = groups[-1]
            common = min(shared, len(inputs[i]) - 1,
                         common_prefix_length(inputs[members[-1]], inputs[i]))
            if common >= MIN_SHARED_PREFIX and (len(members) - 1) * (shared - common) < common:
                groups[-1] = (common, [*members, i])
                continue
        groups.append((len(inputs[i]) - 1, [i]))
    return [(shared if len(members) > 1 else 0, members) for shared, members in groups]


def microbatches(inputs: Sequence[Sequence[int]], budget: int = MAX_TOKENS_PER_MICROBATCH
                 ) -> list[tuple[int, list[int]]]:
    """(shared prefix length, datum indices) batches: the datums of each prefix group worth
    sharing, and all the others together, shortest first, in batches whose padded tokens after
    the prefix (rows x longest) stay within budget. The batches depend only on the tokens, so a
    datum always computes the same way whatever order the data came in."""
    batches: list[tuple[int, list[int]]] = []
    pooled: list[int] = []
    for shared, members in shared_prefix_groups(inputs):
        if shared and (len(members) - 1) * shared >= MIN_SHARED_SAVING:
            batches += _filled(inputs, members, shared, budget)
        else:
            pooled += members
    return _filled(inputs, pooled, 0, budget) + batches


def _filled(inputs: Sequence[Sequence[int]], members: list[int], shared: int, budget: int
            ) -> list[tuple[int, list[int]]]:
    """`members` shortest first, cut into batches of at most `budget` padded tokens after the
    prefix; similar lengths keep padding (as costly as real tokens) small."""
    batches: list[tuple[int, list[int]]] = []
    batch: list[int] = []
    for i in sorted(members, key=lambda i: len(inputs[i])):  # the newcomer is the longest
        if batch and (len(inputs[i]) - shared) * (len(batch) + 1) > budget:
            batches.append((shared, batch))
            batch = []
        batch.append(i)
    return [*batches, (shared, batch)] if batch else batches


def forward_backward(model: torch.nn.Module, data: Sequence[types.Datum], loss_fn: str,
                     loss_fn_config: Mapping[str, float | str] | None, backward: bool
                     ) -> tuple[list[np.ndarray], float]:
    """Each datum's target logprobs and the loss summed over tokens and datums; with
    `backward`, the loss's gradients accumulate in the model. Inputs must be validated."""
    device = next(model.parameters()).device
    inputs = [d.model_input.to_ints() for d in data]
    columns = {key: [d.loss_fn_inputs[key].to_numpy() for d in data]
               for key in losses.REQUIRED_INPUTS[loss_fn]}
    logprobs_D: list[np.ndarray] = [np.empty(0, np.float32)] * len(data)
    total = 0.0
    for shared, chunk in microbatches(inputs):
        lengths = torch.tensor([len(inputs[i]) for i in chunk], device=device)
        width = int(lengths.max())
        tensors = {key: right_padded([column[i] for i in chunk], width,
                                     np.int64 if key == "target_tokens" else np.float32,
                                     device)
                   for key, column in columns.items()}
        with torch.set_grad_enabled(backward):
            picked = padded_logprobs(model, right_padded([inputs[i] for i in chunk], width,
                                                         np.int64, device),
                                     tensors.pop("target_tokens"), shared)
            real = torch.arange(width, device=device) < lengths.unsqueeze(1)
            per_token = losses.per_token_loss(loss_fn, picked, tensors, loss_fn_config)
            loss = torch.where(real, per_token, 0.0).sum()
            if backward:
                loss.backward()
        total += float(loss.detach())
        picked_np = picked.detach().cpu().numpy()
        for row, i in enumerate(chunk):
            logprobs_D[i] = picked_np[row, : len(inputs[i])]
    return logprobs_D, total


@dataclass
class SampleRequest:
    prompt: list[int]
    num_samples: int
    params: types.SamplingParams
    seed: int
    prompt_logprobs: bool = False
    topk_prompt: int = 0
    topk_sample: int = 0


def _stop_ids_and_strings(params: types.SamplingParams) -> tuple[set[int], list[str]]:
    stop = params.stop
    if stop is None:
        return set(), []
    if isinstance(stop, str):
        return set(), [stop]
    items = list(stop)
    return {s for s in items if isinstance(s, int)}, [s for s in items if isinstance(s, str)]


ModelScope = Callable[[], AbstractContextManager[torch.nn.Module]]


def sample(model: torch.nn.Module, tokenizer, requests: Sequence[SampleRequest],
           default_stop_ids: Sequence[int], logprobs: str = "exact"
           ) -> list[types.SampleResponse]:
    """Generate every sequence of every request in one batched KV-cache loop, start to end."""
    return run_to_end(sample_steps(lambda: contextlib.nullcontext(model), tokenizer, requests,
                                   default_stop_ids, logprobs=logprobs))


def run_to_end(steps: Generator[None, None, list[types.SampleResponse]]
               ) -> list[types.SampleResponse]:
    """Drive a resumable sampling run (`sample_steps`) without pausing."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def sample_steps(model_scope: ModelScope, tokenizer, requests: Sequence[SampleRequest],
                 default_stop_ids: Sequence[int], chunk_s: float | None = None,
                 logprobs: str = "exact") -> Generator[None, None, list[types.SampleResponse]]:
    """`sample`, resumable: it pauses (yields) after the prefill, after every `chunk_s` of
    decoding, and after each request's logprobs, so that the scheduler can run other lanes'
    calls in between; it returns the responses. `model_scope()` gives the model for each piece
    of work (the runtime swaps a sampler's weights back in, in case another lane used the same
    model meanwhile). Where the pauses fall changes nothing in the results."""
    chunk_s = CHUNK_S if chunk_s is None else chunk_s
    with model_scope() as model, torch.no_grad():
        generation = Generation(model, tokenizer, requests, default_stop_ids,
                                exact_logprobs=logprobs == "exact")
    while True:
        yield
        with model_scope() as model, torch.no_grad():
            if generation.advance(model, chunk_s):
                break
    responses = []
    for index in range(len(requests)):
        yield
        with model_scope() as model, torch.no_grad():
            responses.append(generation.response(model, index))
    return responses


class _GrowingLayer(DynamicLayer):
    """A layer of keys and values that writes each decode step's into spare room of a buffer
    sized for the whole generation, where transformers' DynamicLayer copies its entire cache
    into a new tensor every step (torch.cat: ~27% of decoding on tiny-chat). `keys`/`values`
    stay what DynamicLayer's readers expect: tensors of the cached length (views)."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self._room_k: torch.Tensor | None = None  # keys/values are views of their front
        self._room_v: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length, added = self.get_seq_length(), key_states.shape[-2]
        if (self._room_k is None or self._room_k.shape[-2] < length + added
                or self._room_k.shape[0] != key_states.shape[0]):
            self._room_k, self._room_v = (
                self._moved(old, new, length, max(self.capacity, 2 * (length + added)))
                for old, new in ((self.keys, key_states), (self.values, value_states)))
        assert self._room_k is not None and self._room_v is not None
        self._room_k[..., length:length + added, :] = key_states
        self._room_v[..., length:length + added, :] = value_states
        self.keys = self._room_k[..., :length + added, :]
        self.values = self._room_v[..., :length + added, :]
        return self.keys, self.values

    @staticmethod
    def _moved(old: torch.Tensor, new: torch.Tensor, length: int, capacity: int
               ) -> torch.Tensor:
        room = new.new_empty((*new.shape[:-2], capacity, new.shape[-1]))
        if length:
            room[..., :length, :] = old
        return room

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep these rows (finished rows leave the batch), room and all."""
        if self._room_k is None or self._room_v is None:
            super().batch_select_indices(indices)
            return
        length = self.get_seq_length()
        self._room_k, self._room_v = self._room_k[indices], self._room_v[indices]
        self.keys, self.values = self._room_k[..., :length, :], self._room_v[..., :length, :]


def _growing_cache(model: torch.nn.Module, capacity: int) -> DynamicCache:
    """A DynamicCache for `model` whose plain layers are _GrowingLayers (sliding-window and
    other special layers stay transformers' own)."""
    cache = DynamicCache(config=model.config)
    cache.layers = [_GrowingLayer(capacity) if type(layer) is DynamicLayer else layer
                    for layer in cache.layers]
    return cache


class Generation:
    """The state of one batched generation: every sample of every request is a row; rows that
    finish leave the batch (their keys and values too), so the batch only computes live rows.

    Randomness comes from one generator per request, which draws for all of the request's
    samples at every step while any of them is live: a seeded request gets the same draws
    whatever else is in the batch and whenever its rows finish."""

    def __init__(self, model: torch.nn.Module, tokenizer, requests: Sequence[SampleRequest],
                 default_stop_ids: Sequence[int], exact_logprobs: bool = True) -> None:
        device = next(model.parameters()).device
        self.requests, self.tokenizer, self.device = list(requests), tokenizer, device
        self.vocab = model.config.vocab_size
        row_request = [r for r, req in enumerate(requests) for _ in range(req.num_samples)]
        self.row_request = torch.tensor(row_request, device=device)
        rows = len(row_request)
        self.max_steps = max(req.params.max_tokens or DEFAULT_MAX_TOKENS for req in requests)
        self.topk_width = max(req.topk_sample for req in requests)
        self.tokens = torch.zeros((rows, self.max_steps), dtype=torch.long, device=device)
        self.topk_ids = torch.zeros((rows, self.max_steps, self.topk_width), dtype=torch.long,
                                    device=device)
        self.topk_lp = torch.zeros((rows, self.max_steps, self.topk_width), device=device)
        self.decode_lp = None if exact_logprobs else torch.zeros((rows, self.max_steps),
                                                                 device=device)
        self.lengths = torch.zeros(rows, dtype=torch.long, device=device)
        self.stopped = torch.zeros(rows, dtype=torch.bool, device=device)
        self.generators = [torch.Generator(device="cpu").manual_seed(req.seed)
                           for req in requests]
        self.step = 0

        def per_row(values: list[float]) -> torch.Tensor:
            return torch.tensor([values[r] for r in row_request], device=device)

        stops = [_stop_ids_and_strings(req.params) for req in requests]
        self.stop_strings = [stops[r][1] for r in row_request]
        self.any_stop_strings = any(self.stop_strings)
        stop_table = torch.zeros((rows, self.vocab), dtype=torch.bool, device=device)
        for row, r in enumerate(row_request):
            stop_table[row, list(stops[r][0] | set(default_stop_ids))] = True
        # Per live row, in the batch's current order (rows leave as they finish).
        self.live = torch.arange(rows, device=device)
        self.temperature = per_row([req.params.temperature for req in requests])
        self.top_p = per_row([req.params.top_p for req in requests])
        self.top_k = per_row([req.params.top_k for req in requests]).long()
        self.limit = per_row([req.params.max_tokens or DEFAULT_MAX_TOKENS for req in requests]
                             ).long()
        self.stop_table = stop_table
        self._prefill(model)

    def _prefill(self, model: torch.nn.Module) -> None:
        """Each request's prompt once (left-padded), its keys and values then copied to each of
        its samples' rows."""
        prompts = [req.prompt for req in self.requests]
        width = max(map(len, prompts))
        ids = torch.zeros((len(prompts), width), dtype=torch.long, device=self.device)
        mask = torch.zeros((len(prompts), width), dtype=torch.long, device=self.device)
        for r, p in enumerate(prompts):
            ids[r, width - len(p):] = torch.as_tensor(p, device=self.device)
            mask[r, width - len(p):] = 1
        position = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=position, use_cache=True,
                    cache=_growing_cache(model, width + self.max_steps))
        self.cache = out.cache
        self.cache.batch_select_indices(self.row_request)
        self.logits = out.logits[:, -1, :].float()[self.row_request]
        self.mask = mask[self.row_request]
        self.next_position = position[self.row_request, -1:] + 1

    def advance(self, model: torch.nn.Module, budget_s: float) -> bool:
        """Decode steps until `budget_s` has passed (at least one step) or every row is done;
        True when done."""
        started = time.perf_counter()
        while True:
            if self._decode_step(model):
                return True
            if time.perf_counter() - started >= budget_s:
                return False

    def _decode_step(self, model: torch.nn.Module) -> bool:
        """Pick every live row's next token, retire the rows that finished, and run the model
        on the rest; True when no row is left."""
        step, live = self.step, self.live
        # One draw per live request per step keeps a seeded request independent of the batch.
        live_requests = set(self.row_request[live].tolist())
        uniform = torch.cat([
            torch.rand((req.num_samples, self.vocab), generator=g) if r in live_requests
            else torch.empty((req.num_samples, self.vocab))
            for r, (req, g) in enumerate(zip(self.requests, self.generators, strict=True))
        ]).to(self.device)[live]
        token = _pick(self.logits, self.temperature, self.top_k, self.top_p, uniform)
        self.tokens[live, step] = token
        if self.topk_width or self.decode_lp is not None:
            raw = torch.log_softmax(self.logits, dim=-1)  # temperature 1, unfiltered: Tinker's
            if self.decode_lp is not None:
                self.decode_lp[live, step] = raw.gather(1, token.unsqueeze(1)).squeeze(1)
            if self.topk_width:
                values, ids = raw.topk(self.topk_width, dim=-1)
                self.topk_ids[live, step], self.topk_lp[live, step] = ids, values
        self.lengths[live] += 1
        hit_stop = self.stop_table[live].gather(1, token.unsqueeze(1)).squeeze(1)
        for i, row in enumerate(live.tolist() if self.any_stop_strings else []):
            if self.stop_strings[row] and not hit_stop[i] and _ends_with_stop(
                    self.tokenizer, self.tokens[row, : step + 1], self.stop_strings[row]):
                hit_stop[i] = True
        self.stopped[live] |= hit_stop
        finished = hit_stop | (self.lengths[live] >= self.limit)
        self.step += 1
        if bool(finished.all()):
            return True
        if bool(finished.any()):
            keep = torch.nonzero(~finished).flatten()
            self.live, token = live[keep], token[keep]
            self.cache.batch_select_indices(keep)
            self.mask, self.next_position = self.mask[keep], self.next_position[keep]
            self.temperature, self.top_p = self.temperature[keep], self.top_p[keep]
            self.top_k, self.limit = self.top_k[keep], self.limit[keep]
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.live), 1))], dim=1)
        out = model(input_ids=token.unsqueeze(1), attention_mask=self.mask,
                    position_ids=self.next_position, cache=self.cache, use_cache=True)
        self.cache, self.logits = out.cache, out.logits[:, -1, :].float()
        self.next_position = self.next_position + 1
        return False

    def response(self, model: torch.nn.Module, index: int) -> types.SampleResponse:
        """Request `index`'s samples, with logprobs teacher-forced for it alone (or, when not
        exact, the generation's own)."""
        req = self.requests[index]
        rows = torch.nonzero(self.row_request == index).flatten().tolist()
        tokens_np = self.tokens[rows].cpu().numpy()
        lengths = self.lengths[rows].tolist()
        completions = [tokens_np[k, :n] for k, n in enumerate(lengths)]
        logprobs_K = (completion_logprobs(model, req.prompt, completions)
                      if self.decode_lp is None else
                      [self.decode_lp[row, :n].cpu().numpy()
                       for row, n in zip(rows, lengths, strict=True)])
        sequences = []
        for k, (row, n) in enumerate(zip(rows, lengths, strict=True)):
            topk = None
            if req.topk_sample:
                topk = TopkLogprobs(
                    token_ids=self.topk_ids[row, :n, :req.topk_sample].cpu().numpy()
                    .astype(np.int32),
                    logprobs=self.topk_lp[row, :n, :req.topk_sample].cpu().numpy()
                    .astype(np.float32))
            sequences.append(types.SampledSequence(
                stop_reason="stop" if bool(self.stopped[row]) else "length",
                sequence_id=f"local-{req.seed}-{k}",
                tokens_np=completions[k].astype(np.int32),
                logprobs_np=logprobs_K[k].astype(np.float32),
                topk_logprobs_np=topk,
            ))
        prompt_lp, prompt_topk = None, None
        if req.prompt_logprobs or req.topk_prompt:
            prompt_lp, prompt_topk = prompt_scores(model, req.prompt, req.topk_prompt)
        return types.SampleResponse(sequences=sequences, prompt_logprobs_np=prompt_lp,
                                    topk_prompt_logprobs_np=prompt_topk)


@torch.no_grad()
def completion_logprobs(model: torch.nn.Module, prompt: Sequence[int],
                        completions: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each completion's token logprobs given the prompt, teacher-forced for this request alone.

    The generation loop's own logprobs depend, in their last bits, on which other requests
    shared its batch (left padding changes the rounding of batched attention). Which requests
    arrive together depends on timing, so those bits would make a resumed run differ from an
    uninterrupted one; these depend on nothing but the request and its tokens."""
    sequences = [list(prompt) + c.tolist() for c in completions]
    shared = len(prompt) - 1  # every input row extends it by at least one token
    if len(completions) < 2 or shared < MIN_SHARED_PREFIX or not all(map(len, completions)):
        shared = 0
    logprobs = token_logprobs(model, [s[:-1] for s in sequences], [s[1:] for s in sequences],
                              shared)
    return [lp[len(prompt) - 1:].cpu().numpy() for lp in logprobs]


@torch.no_grad()
def prompt_scores(model: torch.nn.Module, prompt: Sequence[int], topk: int
                  ) -> tuple[np.ndarray, TopkLogprobs | None]:
    """Each prompt token's logprob given the tokens before it (NaN for the first, which has
    no context: Tinker's contract), and optionally the top-k alternatives at each position."""
    device = next(model.parameters()).device
    ids = torch.as_tensor([list(prompt)], device=device)
    logprobs = torch.log_softmax(model(input_ids=ids, use_cache=False).logits.float()[0], -1)
    picked = logprobs[:-1].gather(-1, ids[0, 1:].unsqueeze(-1)).squeeze(-1)
    values = np.concatenate([[np.nan], picked.cpu().numpy()]).astype(np.float32)
    if not topk:
        return values, None
    top_lp, top_ids = logprobs[:-1].topk(topk, dim=-1)
    # Position 0 has no distribution: the SDK's sentinel (token 0, logprob -99999) marks it.
    token_ids = np.zeros((len(prompt), topk), dtype=np.int32)
    topk_lp = np.full((len(prompt), topk), -99999.0, dtype=np.float32)
    token_ids[1:], topk_lp[1:] = top_ids.cpu().numpy(), top_lp.cpu().numpy()
    return values, TopkLogprobs(token_ids=token_ids, logprobs=topk_lp)


def _pick(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
          top_p: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Gumbel-max sampling from the temperature-scaled, top-k/top-p filtered distribution."""
    greedy = temperature <= 0
    scaled = logits / temperature.clamp(min=1e-6).unsqueeze(1)
    if bool(((top_k > 0) | (top_p < 1)).any()):  # sorting the vocabulary only when it filters
        scaled = scaled.masked_fill(_filtered(scaled, top_k, top_p), float("-inf"))
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-12, 1 - 1e-7)))
    return torch.where(greedy, logits.argmax(-1), (scaled + gumbel).argmax(-1))


def _filtered(scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Which vocabulary entries top-k and top-p leave out (never a row's most likely one)."""
    order = scaled.argsort(dim=-1, descending=True)
    sorted_scaled = scaled.gather(-1, order)
    rank = torch.arange(scaled.shape[-1], device=scaled.device).expand_as(scaled)
    k = torch.where(top_k > 0, top_k, scaled.shape[-1]).unsqueeze(1)
    probs = torch.softmax(sorted_scaled, dim=-1)
    mass_before = probs.cumsum(-1) - probs  # keep a token while the mass before it is < top_p
    drop_sorted = (rank >= k) | (mass_before >= top_p.unsqueeze(1))
    drop_sorted[:, 0] = False
    return torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)


def _ends_with_stop(tokenizer, tokens: torch.Tensor, stop_strings: list[str]) -> bool:
    tail = tokenizer.decode(tokens[-64:].tolist(), skip_special_tokens=False)
    return any(s in tail for s in stop_strings)
