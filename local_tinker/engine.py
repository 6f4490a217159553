"""The compute behind the local backend: teacher-forced logprobs and batched sampling.

forward_backward batches datums of similar length, and runs a prefix that several datums share
(the samples of one prompt, a common system prompt) once: its keys and values serve every row
after it and autograd sums the rows' gradients into it. That is exact up to float rounding, and
is where the engine gains on a plain padded training loop.

Sampling runs every sequence of a batch of requests together with a KV cache (prompts are
left-padded). Randomness comes from one `torch.Generator` per request, seeded by the request, and
drawn for the whole request at once, so a seeded request gives the same samples whatever else is
in the batch. Returned logprobs are the raw (temperature 1, unfiltered) logprobs of the sampled
tokens, which is what the Tinker service returns, recomputed for each request on its own so that
they do not depend on its batch mates either; `compute_logprobs` agrees with them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tinker import types
from tinker.types.topk_logprobs import TopkLogprobs

from . import losses

# A bound on padded tokens per forward pass of forward_backward, so memory stays flat for big
# batches.
MAX_TOKENS_PER_MICROBATCH = 32_768
# Shorter common prefixes are not worth a forward pass of their own.
MIN_SHARED_PREFIX = 16


def right_padded(rows: Sequence[Sequence[int] | np.ndarray], width: int,
                 dtype: type[np.generic], device: torch.device) -> torch.Tensor:
    """Rows laid out left-aligned in a zero-filled (len(rows), width) tensor, in one copy."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    filled = np.arange(width) < lengths[:, None]
    out = np.zeros((len(rows), width), dtype=dtype)
    if filled.any():
        out[filled] = np.concatenate([np.asarray(r) for r in rows])
    return torch.from_numpy(out).to(device)


def padded_logprobs(model: torch.nn.Module, ids_BT: torch.Tensor, targets_BT: torch.Tensor,
                    shared: int = 0) -> torch.Tensor:
    """log p(target_t | input_<=t) at every position of a right-padded batch whose rows all
    begin with the same `shared` tokens; those are run once and their keys and values reused.

    Right padding needs no attention mask in a causal model: real tokens never see the pads.
    """
    if not shared:
        logits = model(input_ids=ids_BT, use_cache=False).logits.float()
        return logits.gather(-1, targets_BT.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
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
    """(shared prefix length, datum indices) batches: each prefix group's datums, shortest
    first, in batches whose padded tokens after the prefix (rows x longest) stay within budget.
    Similar lengths keep padding (as costly as real tokens) small. The batches depend only on
    the tokens, so a datum always computes the same way whatever order the data came in."""
    batches: list[tuple[int, list[int]]] = []
    for shared, members in shared_prefix_groups(inputs):
        batch: list[int] = []
        for i in sorted(members, key=lambda i: len(inputs[i])):  # the newcomer is the longest
            if batch and (len(inputs[i]) - shared) * (len(batch) + 1) > budget:
                batches.append((shared, batch))
                batch = []
            batch.append(i)
        batches.append((shared, batch))
    return batches


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


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    tokenizer,
    requests: Sequence[SampleRequest],
    default_stop_ids: Sequence[int],
) -> list[types.SampleResponse]:
    """Generate every sequence of every request in one batched KV-cache loop."""
    device = next(model.parameters()).device
    row_request = [r for r, req in enumerate(requests) for _ in range(req.num_samples)]
    rows = len(row_request)
    prompts = [requests[r].prompt for r in row_request]
    width = max(len(p) for p in prompts)
    ids = torch.full((rows, width), 0, dtype=torch.long, device=device)
    mask = torch.zeros((rows, width), dtype=torch.long, device=device)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.as_tensor(p, device=device)
        mask[row, width - len(p):] = 1

    def per_row(values: list[float]) -> torch.Tensor:
        return torch.tensor([values[r] for r in row_request], device=device)

    temperature = per_row([req.params.temperature for req in requests])
    top_p = per_row([req.params.top_p for req in requests])
    top_k = per_row([req.params.top_k for req in requests]).long()
    max_tokens = [req.params.max_tokens or 256 for req in requests]
    limit = per_row(max_tokens).long()
    stops = [_stop_ids_and_strings(req.params) for req in requests]
    stop_ids_rows = [stops[r][0] | set(default_stop_ids) for r in row_request]
    stop_strings_rows = [stops[r][1] for r in row_request]
    stop_table = torch.zeros((rows, model.config.vocab_size), dtype=torch.bool, device=device)
    for row, ids_set in enumerate(stop_ids_rows):
        stop_table[row, list(ids_set)] = True
    generators = [torch.Generator(device="cpu").manual_seed(req.seed) for req in requests]
    vocab = model.config.vocab_size

    out_tokens = torch.zeros((rows, max(max_tokens)), dtype=torch.long, device=device)
    topk_width = max(req.topk_sample for req in requests)
    out_topk_ids = torch.zeros((rows, max(max_tokens), topk_width), dtype=torch.long,
                               device=device)
    out_topk_lp = torch.zeros((rows, max(max_tokens), topk_width), device=device)
    lengths = torch.zeros(rows, dtype=torch.long, device=device)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    stopped = torch.zeros(rows, dtype=torch.bool, device=device)
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=position, use_cache=True)
    cache, logits = out.cache, out.logits[:, -1, :].float()
    next_position = position[:, -1:] + 1

    for step in range(max(max_tokens)):
        # One draw per request per step keeps a seeded request independent of its batch mates.
        uniform = torch.cat([torch.rand((req.num_samples, vocab), generator=g)
                             for req, g in zip(requests, generators, strict=True)]).to(device)
        token, raw_logprobs = _pick(logits, temperature, top_k, top_p, uniform)
        active = ~done
        out_tokens[active, step] = token[active]
        if topk_width:
            values, ids = raw_logprobs.topk(topk_width, dim=-1)
            out_topk_ids[active, step], out_topk_lp[active, step] = ids[active], values[active]
        lengths += active.long()
        hit_stop = stop_table.gather(1, token.unsqueeze(1)).squeeze(1) & active
        for row in torch.nonzero(active & ~hit_stop).flatten().tolist():
            if stop_strings_rows[row] and _ends_with_stop(tokenizer, out_tokens[row, : step + 1],
                                                          stop_strings_rows[row]):
                hit_stop[row] = True
        stopped |= hit_stop
        done |= hit_stop | (lengths >= limit)
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones((rows, 1), dtype=mask.dtype, device=device)], dim=1)
        out = model(input_ids=token.unsqueeze(1), attention_mask=mask, position_ids=next_position,
                    cache=cache, use_cache=True)
        cache, logits = out.cache, out.logits[:, -1, :].float()
        next_position = next_position + 1

    tokens_np = out_tokens.cpu().numpy()
    topk_ids_np, topk_lp_np = out_topk_ids.cpu().numpy(), out_topk_lp.cpu().numpy()
    responses, row = [], 0
    for req in requests:
        sequences = []
        completions = [tokens_np[r, :int(lengths[r])] for r in range(row, row + req.num_samples)]
        logprobs_K = completion_logprobs(model, req.prompt, completions)
        for k in range(req.num_samples):
            n = int(lengths[row])
            topk = None
            if req.topk_sample:
                width = req.topk_sample
                topk = TopkLogprobs(token_ids=topk_ids_np[row, :n, :width].astype(np.int32),
                                    logprobs=topk_lp_np[row, :n, :width].astype(np.float32))
            sequences.append(types.SampledSequence(
                stop_reason="stop" if bool(stopped[row]) else "length",
                sequence_id=f"local-{req.seed}-{k}",
                tokens_np=tokens_np[row, :n].astype(np.int32),
                logprobs_np=logprobs_K[k].astype(np.float32),
                topk_logprobs_np=topk,
            ))
            row += 1
        prompt_lp, prompt_topk = None, None
        if req.prompt_logprobs or req.topk_prompt:
            prompt_lp, prompt_topk = prompt_scores(model, req.prompt, req.topk_prompt)
        responses.append(types.SampleResponse(sequences=sequences, prompt_logprobs_np=prompt_lp,
                                              topk_prompt_logprobs_np=prompt_topk))
    return responses


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
          top_p: torch.Tensor, uniform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gumbel-max sampling from the temperature-scaled, top-k/top-p filtered distribution.
    Returns the tokens and the raw (temperature 1, unfiltered) logprobs of every vocab entry."""
    raw_logprobs = torch.log_softmax(logits, dim=-1)
    greedy = temperature <= 0
    scaled = logits / temperature.clamp(min=1e-6).unsqueeze(1)
    order = scaled.argsort(dim=-1, descending=True)
    sorted_scaled = scaled.gather(-1, order)
    rank = torch.arange(logits.shape[-1], device=logits.device).expand_as(scaled)
    k = torch.where(top_k > 0, top_k, logits.shape[-1]).unsqueeze(1)
    probs = torch.softmax(sorted_scaled, dim=-1)
    mass_before = probs.cumsum(-1) - probs  # keep a token while the mass before it is < top_p
    drop_sorted = (rank >= k) | (mass_before >= top_p.unsqueeze(1))
    drop_sorted[:, 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-12, 1 - 1e-7)))
    sampled = (scaled.masked_fill(drop, float("-inf")) + gumbel).argmax(-1)
    token = torch.where(greedy, logits.argmax(-1), sampled)
    return token, raw_logprobs


def _ends_with_stop(tokenizer, tokens: torch.Tensor, stop_strings: list[str]) -> bool:
    tail = tokenizer.decode(tokens[-64:].tolist(), skip_special_tokens=False)
    return any(s in tail for s in stop_strings)
