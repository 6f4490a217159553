"""Local engine speed on tiny-chat against plain transformers / PyTorch + peft baselines.

Sampling: one RL step's worth (8 problems x 8 samples, up to 256 tokens at temperature 0.8)
through `SamplingClient.sample` (eight requests submitted together, batched by the worker)
against one `model.generate` call on the same weights (a copy whose LoRA layers run peft's
own forward, as a user's would) and the same 64 left-padded prompts.
The same again with the server's `--sample_logprobs decode` (logprobs from the generation's
own logits instead of recomputed for each request alone).
Training: `forward_backward` + `optim_step` on the 64 resulting RL datums (importance sampling)
through the SDK and the local server, against the loop a user would write in-process on an
identical peft LoRA model (same init, same data): one right-padded forward, the same per-token loss,
backward, the same AdamW step. Both sides' losses are printed: they compute the same thing.

One process; one untimed warm-up call per side, then the sides alternate in rotating order so
that load from other processes hits both alike (bench/guards.py). The ratio is the median of
the per-round ratios of tokens per second, with its IQR, refused when noise swamps it; CPU-time
ratios beside (steadier on a busy machine). Both sides compute on the server's worker thread,
with the torch threads it takes (--threads, or the local backend's pick): the baselines are
built and run there too (bench/guards.py `on_worker`), since torch on a second thread of a
process runs small operations several times slower (docs/benchmarks.md).

    python bench/engine_throughput.py
    python bench/engine_throughput.py --threads 1 --skip_sampling
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tinker import types  # noqa: E402

import local_tinker  # noqa: E402
from bench import guards  # noqa: E402
from common.arithmetic import TRAIN_STREAM, build_messages, problem_at  # noqa: E402
from common.datums import chat_tokens, rollout_datum  # noqa: E402

PROBLEMS, GROUP, MAX_TOKENS, TEMPERATURE = 8, 8, 256, 0.8

# A call returns (tokens it processed, the loss where it trains).
Call = Callable[[], tuple[int, float | None]]
Timing = tuple[float, float, int, float | None]  # wall s, CPU s, tokens, loss


def timed(call: Call) -> Timing:
    wall, cpu = time.perf_counter(), time.process_time()
    tokens, loss = call()
    return time.perf_counter() - wall, time.process_time() - cpu, tokens, loss


def alternate(repeats: int, ours: Call, plain: Call) -> tuple[list[Timing], list[Timing]]:
    """Both sides once untimed (warm-up), then `repeats` timed rounds in rotating order."""
    timings = guards.alternate({"ours": lambda: timed(ours), "plain": lambda: timed(plain)},
                               repeats)
    return timings["ours"], timings["plain"]


def per_token(timings: list[Timing], clock: int) -> list[float]:
    """Seconds per processed token of each call, by wall (clock 0) or CPU (clock 1) time; a
    call that processed nothing gives inf, which the guards refuse."""
    return [t[clock] / t[2] if t[2] else math.inf for t in timings]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per side")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for both sides (default: what the local backend "
                             "picks from cores and load)")
    parser.add_argument("--skip_sampling", action="store_true",
                        help="time training only (one sampling call still makes its data)")
    args = parser.parse_args()
    torch.manual_seed(0)
    with local_tinker.local_service(tempfile.mkdtemp(prefix="bench-engine-"),
                                    threads=args.threads) as (service, server):
        trainer = service.create_lora_training_client("tiny-chat", rank=32, seed=0).result()

        def worker_call(call: Callable[[], Any]) -> Callable[[], Any]:
            """`call`, made to compute on the server's worker thread when called."""
            return lambda: guards.on_worker(server, "baseline", call)

        sampler = trainer.save_weights_and_get_sampling_client().result()
        prompts = [chat_tokens(trainer.get_tokenizer(),
                               build_messages(problem_at(TRAIN_STREAM, 0, i)), True)
                   for i in range(PROBLEMS)]
        rows = {}
        if not args.skip_sampling:
            generate = worker_call(generate_call(
                worker_call(lambda: stock_peft(server.runtime.models[trainer.model_id].model))(),
                server.runtime.models[trainer.model_id].base, prompts))
            rows["sampling (vs model.generate)"] = alternate(
                args.repeats, lambda: (sample_tokens(sampler, prompts), None), generate)
            rows["sampling, decode logprobs (vs generate)"] = alternate(
                args.repeats, lambda: (sample_tokens(sampler, prompts, server), None), generate)
        data = rollout_data(sampler, prompts)
        # The baseline trains its own copy: the same LoRA init, made the same way.
        baseline = service.create_lora_training_client("tiny-chat", rank=32, seed=0).result()
        plain = worker_call(lambda: stock_peft(server.runtime.models[baseline.model_id].model))()
        rows["train step (vs torch+peft loop)"] = alternate(
            args.repeats, engine_train_call(trainer, data),
            worker_call(plain_train_call(plain, data)))
        threads = worker_call(torch.get_num_threads)()
    report(rows, data, threads)


def sampling_params(seed: int) -> types.SamplingParams:
    return types.SamplingParams(max_tokens=MAX_TOKENS, temperature=TEMPERATURE, seed=seed)


def sample_responses(sampler, prompts: list[list[int]]) -> list[types.SampleResponse]:
    """Every prompt's group, submitted together (the server batches them)."""
    futures = [sampler.sample(types.ModelInput.from_ints(p), GROUP, sampling_params(i))
               for i, p in enumerate(prompts)]
    return [f.result() for f in futures]


def sample_tokens(sampler, prompts: list[list[int]], decode_on=None) -> int:
    """Tokens sampled; with `decode_on` (a server), in its --sample_logprobs decode mode."""
    if decode_on is not None:
        decode_on.runtime.sample_logprobs = "decode"
    try:
        return sum(len(s.tokens) for r in sample_responses(sampler, prompts)
                   for s in r.sequences)
    finally:
        if decode_on is not None:
            decode_on.runtime.sample_logprobs = "exact"


def stock_peft(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of one of the engine's LoRA models (the same weights) whose LoRA layers run
    peft's own forward, as a user's model would: the engine routes them through one fused
    addmm (engine.fuse_lora), and the baselines should not get that for free."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    plain = copy.deepcopy(model)
    for module in plain.modules():
        if isinstance(module, LoraLinear) and "forward" in vars(module):
            del module.forward
    return plain


def generate_call(model: torch.nn.Module, base, prompts: list[list[int]]) -> Call:
    """`model.generate` on the same weights as the engine's sampler."""
    stop_ids = list(base.stop_token_ids)
    rows = [p for p in prompts for _ in range(GROUP)]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])

    def call() -> tuple[int, None]:
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True,
                                 temperature=TEMPERATURE, top_k=0, max_new_tokens=MAX_TOKENS,
                                 eos_token_id=stop_ids,
                                 pad_token_id=base.tokenizer.pad_token_id)
        stops = torch.isin(out[:, width:], torch.tensor(stop_ids))
        # Tokens up to and including the first stop token, as the engine counts them.
        lengths = torch.where(stops.any(1), stops.int().argmax(1) + 1, stops.shape[1])
        return int(lengths.sum()), None

    return call


def rollout_data(sampler, prompts: list[list[int]]) -> list[types.Datum]:
    """One RL batch: the sampled groups with random advantages (the timing ignores values)."""
    rng = np.random.default_rng(0)
    return [rollout_datum(p, s.tokens, s.logprobs, float(rng.normal()))
            for p, r in zip(prompts, sample_responses(sampler, prompts), strict=True)
            for s in r.sequences if s.tokens]


def engine_train_call(trainer, data: list[types.Datum]) -> Call:
    tokens = sum(d.model_input.length for d in data)

    def call() -> tuple[int, float]:
        result = trainer.forward_backward(data, "importance_sampling")
        trainer.optim_step(types.AdamParams(learning_rate=1e-5)).result()
        return tokens, result.result().metrics["loss:sum"]

    return call


def plain_train_call(model: torch.nn.Module, data: list[types.Datum]) -> Call:
    """The obvious loop: pad once, forward, per-token importance-sampling loss, AdamW."""
    tokens = sum(d.model_input.length for d in data)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=1e-5, betas=(0.9, 0.95), eps=1e-12, weight_decay=0.0)
    width = max(d.model_input.length for d in data)

    def padded(rows: list, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(np.stack([np.pad(np.asarray(r), (0, width - len(r)))
                                      for r in rows]), dtype=dtype)

    ids = padded([d.model_input.to_ints() for d in data], torch.long)
    targets, sampled, advantages = (
        padded([d.loss_fn_inputs[key].to_numpy() for d in data], dtype)
        for key, dtype in (("target_tokens", torch.long), ("logprobs", torch.float32),
                           ("advantages", torch.float32)))

    def call() -> tuple[int, float]:
        # use_cache=False: a training forward needs no KV cache (building one costs time).
        logits = model(input_ids=ids, use_cache=False).logits.float()
        logprobs = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
        loss = -(torch.exp(logprobs - sampled) * advantages).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return tokens, float(loss.detach())

    return call


def report(rows: dict[str, tuple[list[Timing], list[Timing]]], data: list[types.Datum],
           threads: int) -> None:
    print(f"tiny-chat, {PROBLEMS} problems x {GROUP} samples, up to {MAX_TOKENS} tokens, "
          f"{threads} torch threads; training batch: {len(data)} datums, "
          f"{sum(d.model_input.length for d in data)} tokens; {guards.load_note()}")
    print(f"{'(medians)':42}{'ours tok/s':>12}{'plain tok/s':>13}   ours over plain, per round")
    headline = []
    for name, (ours, plain) in rows.items():
        ours_tps = statistics.median(t[2] / t[0] for t in ours)
        plain_tps = statistics.median(t[2] / t[0] for t in plain)
        work = (sum(t[2] for t in ours), sum(t[2] for t in plain))
        wall = guards.speed_ratio(per_token(ours, 0), per_token(plain, 0), *work)
        cpu = guards.speed_ratio(per_token(ours, 1), per_token(plain, 1), *work)
        print(f"{name:42}{ours_tps:>12,.0f}{plain_tps:>13,.0f}   {wall.text}; by CPU time "
              f"{cpu.text}")
        headline.append(f"{name.split(' (')[0]} {wall.value:.2f}x" if not wall.refused
                        else f"{name.split(' (')[0]}: no ratio ({wall.text})")
        if ours[0][3] is not None:  # same weights, data, loss and optimizer: equal losses
            for side, timings in (("ours", ours), ("plain", plain)):
                print(f"  losses by step, {side:5}: " + " ".join(f"{t[3]:.5f}" for t in timings))
    print(f"headline: {' and '.join(headline)} the plain baselines' tokens/s; "
          f"{guards.load_note()} at the end")


if __name__ == "__main__":
    main()
