"""Supervised fine-tuning with a LoRA adapter on Tinker or the embedded local backend.

Each conversation becomes one datum whose loss weights are 0 on the prompt and 1 on the final
assistant turn (the seed's make_datum). Mini-batches come from a seeded shuffle per epoch; the
ragged last batch of an epoch is dropped so every step averages over the same number of
conversations (the next epoch reshuffles, so no row is left out for good). Each step submits
forward_backward and optim_step together, then waits once; on Tinker the next step's calls go out
before this step's results are read (--submit_ahead). Held-out loss, samples from the current
weights and checkpoints follow on their own schedules. Loss is reported per completion token.

Differences from the seed's notebook: mini-batches instead of one full batch, a held-out split,
a learning-rate schedule, resumable checkpoints, and every step tracked in W&B and metrics.jsonl.

    python train_sft.py                       # the seed's "foo" run (local backend without a key)
    python train_sft.py --dataset my_chats.jsonl --lr 1e-4 --epochs 3 --wandb_project my-sft
"""

from __future__ import annotations

import collections
import math
import os
import time
from dataclasses import dataclass, replace
from typing import Any, Literal

from common.backend import refusals_name, tokenizer_for, types
from common.cli import run_main
from common.config import (
    CheckpointConfig,
    ServiceConfig,
    TrackingConfig,
    TrainingConfig,
    check_common,
    finite,
    lr_field,
    require,
    require_at_least,
    resolved,
)
from common.costs import Estimate, datum_token_counts, estimate_sft, price_for, prompt_token_counts
from common.data import file_fingerprint, load_chat_data
from common.datums import (
    DatumError,
    chat_tokens,
    conversation_datum,
    decode_completion,
    weighted_nll,
)
from common.runs import Run, claim_run, due, start_run
from common.seeding import derive_seed, seeded_rng

SEED_LR, TINY_MODEL_LR = 5e-4, 2e-3  # --lr's default on Tinker models / the local tiny models
# --submit_ahead's default per backend. Against Tinker, a step whose calls went out while the one
# before ran does not wait a round trip for the script (Tinker's docs: overlap requests; against
# the local server with 0.4 s of injected latency a call: 0.21 s a step instead of 0.41). The
# embedded local server has no round trip to hide, and the next step's calls, sent while this one
# computes, take CPU from it: no gain there (0.88x, then 1.01x; bench/sft_ahead.py, 2 idle cores).
SUBMIT_AHEAD = {"tinker": 1, "local": 0}


@dataclass
class Config(ServiceConfig, TrainingConfig, TrackingConfig, CheckpointConfig):
    """Supervised fine-tuning on chat data (the seed's Test 1); every flag below."""

    # --- data
    dataset: str = "foo"
    """Shipped name (foo, arithmetic-solutions), a .jsonl/.json/.parquet/.csv file, or org/name."""
    dataset_split: str = "train"
    """Split of a hub dataset."""
    dataset_size: int = 2000
    """Rows to generate for generated datasets (arithmetic-solutions)."""
    eval_fraction: float = 0.1
    """Share of rows held out for eval/loss (0 disables)."""
    skip_invalid: bool = False
    """Drop invalid or over-long rows (and log how many) instead of stopping."""
    max_length: int = 2048
    """Longest conversation in tokens."""
    # --- optimisation
    lr: float | None = lr_field()
    """Peak learning rate. Default: 5e-4 (the seed's) on Tinker models, 2e-3 on the local tiny
    models (SEED_LR, TINY_MODEL_LR)."""
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    """Decay after warmup."""
    warmup_steps: int = 0
    """Linear warmup steps."""
    batch_size: int = 8
    """Conversations per step."""
    epochs: int = 25
    """Passes over the training rows (the shipped foo set: 2 steps per epoch)."""
    max_steps: int | None = None
    """Stop after this many steps (default: epochs x steps per epoch)."""
    submit_ahead: int | None = None
    """Later steps whose calls go to the backend before this step's results are read, so the
    backend does not wait on the script between steps; results are the same (a client's calls
    run in order). Default: 1 on Tinker, 0 on the local backend (SUBMIT_AHEAD)."""
    eval_every: int = 10
    """Held-out loss every N steps (and at the end)."""
    # --- samples table
    sample_prompts: int = 4
    """Held-out prompts answered from the current weights at each sample step."""
    max_tokens: int = 64
    """Longest sampled answer."""
    temperature: float = 0.7
    """Sampling temperature for the samples table."""


def validate(cfg: Config) -> None:
    check_common(cfg)
    require(0 <= cfg.eval_fraction < 1, "eval_fraction",
            f"must be in [0, 1), got {cfg.eval_fraction}")
    require_at_least(cfg, epochs=1, warmup_steps=0, max_length=2, sample_prompts=0,
                     dataset_size=1, submit_ahead=0)
    require(finite(cfg.temperature) and cfg.temperature >= 0, "temperature",
            f"must be a number >= 0, got {cfg.temperature}")
    require(cfg.max_steps is None or cfg.warmup_steps <= cfg.max_steps, "warmup_steps",
            f"{cfg.warmup_steps} is longer than the run (--max_steps {cfg.max_steps})")


def check_warmup(cfg: Config, total_steps: int) -> None:
    require(cfg.warmup_steps <= total_steps, "warmup_steps",
            f"{cfg.warmup_steps} is longer than the run ({total_steps} steps)")


def lr_at(step: int, total_steps: int, peak_lr: float, schedule: str, warmup_steps: int = 0
          ) -> float:
    """The learning rate of 1-based `step`: linear warmup, then constant, linear or cosine
    decay to zero."""
    if warmup_steps and step <= warmup_steps:
        return peak_lr * step / warmup_steps
    progress = min(1.0, (step - warmup_steps - 1) / max(1, total_steps - warmup_steps))
    return {"constant": peak_lr, "linear": peak_lr * (1.0 - progress),
            "cosine": peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))}[schedule]


def epoch_order(n_rows: int, seed: int, epoch: int) -> list[int]:
    order = list(range(n_rows))
    seeded_rng("sft", seed, epoch).shuffle(order)
    return order


def main(cfg: Config) -> dict[str, float]:
    cfg = resolved(cfg, os.environ, lr=SEED_LR, tiny_lr=TINY_MODEL_LR)
    if cfg.submit_ahead is None:
        cfg = replace(cfg, submit_ahead=SUBMIT_AHEAD[cfg.backend])
    validate(cfg)
    # Besides length, cadence and tracking, a continued run may change its samples table and
    # how far ahead it sends steps (neither changes the weights).
    claim = None if cfg.dry_run else claim_run(
        cfg, "train_sft",
        may_change=("sample_prompts", "max_tokens", "temperature", "submit_ahead"),
        recorded={"data_fingerprint": file_fingerprint(cfg.dataset)})
    data = load_chat_data(cfg.dataset, cfg.dataset_split, cfg.skip_invalid, cfg.seed,
                          cfg.dataset_size)
    if claim is None:
        print(dry_run(cfg, data.conversations).format(
            f"dry run: train_sft on {cfg.model} ({cfg.backend})"))
        return {}
    with start_run(claim, job_type="sft") as run:
        training_client, tokenizer = run.training_client, run.tokenizer
        split = split_data(data, tokenizer, cfg)
        datums, train_idx, eval_data = split.datums, split.train_idx, split.eval_data
        steps_per_epoch = len(train_idx) // cfg.batch_size
        total_steps = min(cfg.max_steps or 10**12, cfg.epochs * steps_per_epoch)
        check_warmup(cfg, total_steps)
        run.tracker.summary(**{"data/train_rows": len(train_idx), "data/eval_rows": len(eval_data),
                               "data/skipped_rows": split.skipped})

        def submit(step: int) -> Sent:
            """The step's forward_backward, optim_step and (when due) held-out forward, sent."""
            epoch, slot = divmod(step - 1, steps_per_epoch)
            order = epoch_order(len(train_idx), cfg.seed, epoch)
            batch = [datums[train_idx[i]] for i in
                     order[slot * cfg.batch_size:(slot + 1) * cfg.batch_size]]
            lr = lr_at(step, total_steps, cfg.lr, cfg.lr_schedule, cfg.warmup_steps)
            fwd_bwd = training_client.forward_backward(batch, "cross_entropy")
            optim = training_client.optim_step(types.AdamParams(learning_rate=lr))
            evaluating = bool(eval_data) and due(step, cfg.eval_every, total_steps)
            return Sent(step, batch, lr, fwd_bwd, optim,
                        training_client.forward(eval_data, "cross_entropy") if evaluating else None)

        def samples_at(step: int) -> bool:
            return bool(split.examples) and due(step, cfg.sample_every, total_steps)

        def reads_weights(step: int) -> bool:
            """The samples table or a checkpoint reads the weights after this step's update, so
            no later step's calls may go out before it."""
            return samples_at(step) or run.saves_at(step)

        metrics: dict[str, float] = {}
        sent: collections.deque[Sent] = collections.deque()
        for step in run.steps(total_steps, desc="sft"):
            t0 = time.perf_counter()
            if not sent:
                sent.append(submit(step))
            # Up to --submit_ahead later steps go out before this step's results are read.
            while (len(sent) <= cfg.submit_ahead and sent[-1].step < total_steps
                   and not reads_weights(sent[-1].step) and not run.stop.requested):
                sent.append(submit(sent[-1].step + 1))
            run.sent_through = sent[-1].step  # a signal stops the loop after this step
            current = sent.popleft()
            nll, n_weighted = weighted_nll(current.fwd_bwd.result(), current.batch)
            optim_metrics = current.optim.result().metrics or {}
            tokens = sum(d.model_input.length for d in current.batch)
            run.meter.add(trained=tokens)
            metrics = {"train/loss": nll / n_weighted, "train/lr": current.lr,
                       "train/tokens": tokens, "progress/step": step,
                       "progress/epoch": (step - 1) / steps_per_epoch,
                       "progress/done_frac": step / total_steps}
            if "grad_norm" in optim_metrics:
                metrics["train/grad_norm"] = optim_metrics["grad_norm"]
            if current.eval_future is not None:
                eval_nll, eval_weighted = weighted_nll(current.eval_future.result(), eval_data)
                metrics["eval/loss"] = eval_nll / eval_weighted
                run.meter.add(prompt=sum(d.model_input.length for d in eval_data))  # a prefill
            if samples_at(step):
                with refusals_name(f"--max_tokens {cfg.max_tokens}"):
                    log_samples(training_client, tokenizer, split.examples, cfg, run, step)
            metrics["time/step"] = time.perf_counter() - t0
            run.log(metrics, step)
            run.save_if_due(step)
            run.show(loss=f"{metrics['train/loss']:.4f}", lr=f"{current.lr:.2e}")
        run.finish(metrics, ["train/loss", "eval/loss"])
    return metrics


@dataclass
class Sent:
    """A step whose calls went to the backend; its results are read when its turn comes."""

    step: int
    batch: list[types.Datum]
    lr: float
    fwd_bwd: Any  # futures of the SDK
    optim: Any
    eval_future: Any  # None when no held-out loss is due


@dataclass
class Split:
    datums: list[types.Datum]
    train_idx: list[int]  # into datums
    eval_data: list[types.Datum]
    examples: list[list[dict]]  # conversations whose prompts fill the samples table
    skipped: int


def split_data(data, tokenizer, cfg: Config) -> Split:
    """Datums for every valid row, a seeded held-out split, and the sample-table examples."""
    datums, rows, skipped = [], [], data.skipped
    for row, conversation in enumerate(data.conversations, start=1):
        try:
            datums.append(conversation_datum(tokenizer, conversation, cfg.max_length))
            rows.append(conversation)
        except DatumError as exc:
            if not cfg.skip_invalid:
                raise DatumError(f"{cfg.dataset} row {row}: {exc}") from None
            skipped += 1
    n_eval = int(len(datums) * cfg.eval_fraction)
    order = epoch_order(len(datums), cfg.seed, epoch=-1)
    eval_idx, train_idx = order[:n_eval], order[n_eval:]
    require(len(train_idx) >= cfg.batch_size, "batch_size",
            f"{cfg.batch_size} is more than the {len(train_idx)} training rows")
    examples = [rows[i] for i in (eval_idx or train_idx)[: cfg.sample_prompts]]
    return Split(datums, train_idx, [datums[i] for i in eval_idx], examples, skipped)


def log_samples(training_client, tokenizer, examples, cfg: Config, run: Run, step: int) -> None:
    """Answer a few held-out prompts with the current weights into the `samples` table."""
    sampler = training_client.save_weights_and_get_sampling_client().result()
    prompt_tokens = [chat_tokens(tokenizer, c[:-1], add_generation_prompt=True) for c in examples]
    futures = [sampler.sample(types.ModelInput.from_ints(t), 1, types.SamplingParams(
        max_tokens=cfg.max_tokens, temperature=cfg.temperature,
        seed=derive_seed("sft-samples", cfg.seed, step, i))) for i, t in enumerate(prompt_tokens)]
    rows = []
    for conversation, future in zip(examples, futures, strict=True):
        messages, reference = conversation[:-1], conversation[-1]["content"]
        seq = future.result().sequences[0]
        rows.append([step, messages[-1]["content"], decode_completion(tokenizer, seq.tokens),
                     reference, len(seq.tokens), seq.stop_reason])
    run.tracker.log_table("samples", ["step", "prompt", "completion", "reference",
                                      "completion_tokens", "stop_reason"], rows, step)
    run.meter.add(prompt=sum(map(len, prompt_tokens)), sampled=sum(row[4] for row in rows))


def dry_run(cfg: Config, conversations) -> Estimate:
    """Tokens and dollars of this run from the data and config alone (no backend call)."""
    tokenizer = tokenizer_for(cfg.model)  # None: not available offline, so chars/4
    counts, exact = datum_token_counts(conversations, tokenizer)
    kept = [i for i, c in enumerate(counts) if c < cfg.max_length]  # longer: stop or skipped
    order = [kept[i] for i in epoch_order(len(kept), cfg.seed, epoch=-1)]
    n_eval = int(len(kept) * cfg.eval_fraction)
    train = [counts[i] for i in order[n_eval:]]
    require(len(train) >= cfg.batch_size, "batch_size",
            f"{cfg.batch_size} is more than the {len(train)} training rows")
    total_steps = min(cfg.max_steps or 10**12, cfg.epochs * (len(train) // cfg.batch_size))
    check_warmup(cfg, total_steps)
    evals = sum(due(s, cfg.eval_every, total_steps) for s in range(1, total_steps + 1))
    estimate = estimate_sft(train, cfg.batch_size, total_steps,
                            sum(counts[i] for i in order[:n_eval]), evals if n_eval else 0,
                            price_for(cfg.model, cfg.backend), exact=exact)
    rounds = sum(due(s, cfg.sample_every, total_steps) for s in range(1, total_steps + 1))
    examples = [conversations[i][:-1]
                for i in (order[:n_eval] or order[n_eval:])[: cfg.sample_prompts]]
    prompts = sum(prompt_token_counts(examples, tokenizer)[0])
    return estimate.extra(prompt=rounds * prompts,
                          sampled=rounds * len(examples) * cfg.max_tokens,
                          note=f"plus {rounds} samples table(s) of {len(examples)} prompts "
                               f"(at most {cfg.max_tokens} tokens each)")


if __name__ == "__main__":
    raise SystemExit(run_main(main, Config))
