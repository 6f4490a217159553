"""RL with verifiable rewards (the seed's Test 2): GRPO-style advantages, importance-sampling loss.

Each step samples `group_size` completions for each of `batch_size` fresh problems from the current
weights, scores them with the task's reward (format 0.1 + correct 1.0, plus a conciseness bonus
after `--concise_bonus_after`), turns rewards into advantages, and takes one optimizer step on
the completions with the chosen policy loss. Every sampling call is submitted before any result
is awaited, forward_backward goes out together with optim_step, and the next step's sampling
client is requested before this step's results are awaited: on Tinker every call is a round
trip, so a step costs about two round trips instead of the seed's `batch_size` + 2.

Deviations from the seed's notebook (and the textbook):
- advantages are normalised per problem (GRPO) by default; `--advantage batch` is the seed's
  whole-batch normalisation. Groups whose rewards are all equal carry no signal and are skipped.
- problems come from a seeded stream addressed by step, so runs repeat and resume exactly.
- one gradient step per batch (no PPO epochs), no KL penalty; the sampler/learner KL is logged.

    python train_rl.py --lr 2e-4   # the seed's run: on Tinker with TINKER_API_KEY, else locally
                                   # on tiny-instruct (reward rises over the 10 steps)
    python train_rl.py --load_checkpoint runs/warm-start --max_steps 20   # RL after an SFT run
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from tinker import types
from tqdm import tqdm

from common.advantages import compute_advantages
from common.backend import connect
from common.checkpoints import start_training_client
from common.cli import run_main
from common.config import (
    LOCAL_DEFAULT_MODEL,
    CheckpointConfig,
    ConfigError,
    ServiceConfig,
    TrackingConfig,
    check_common,
    finite,
    lr_field,
    require,
    resolved,
)
from common.costs import (
    TINY_MODELS,
    CostMeter,
    Estimate,
    estimate_rl,
    last_logged_metrics,
    price_for,
    prompt_token_counts,
    tokenizer_for,
)
from common.datums import chat_tokens, rollout_datum
from common.evaluation import score_arithmetic, spread, summarize
from common.runs import (
    GracefulStop,
    check_update,
    due,
    end_of_run,
    open_tracker,
    save_if_due,
    stop_here,
)
from common.tasks import Difficulty, arithmetic_task


@dataclass
class Config(ServiceConfig, TrackingConfig, CheckpointConfig):
    """RL with verifiable rewards on the arithmetic task (the seed's Test 2); every flag below."""

    # --- task
    pair_counts: str = "1,2,3"
    """Pairs per problem, comma-separated (the seed: 1,2,3, i.e. 2, 4 or 6 numbers)."""
    large_share: float = 0.3
    """Share of two-digit numbers (10-19); the rest are 1-9, as in the seed."""
    concise_bonus_after: int | None = 6
    """Add the conciseness bonus to the reward after this step (the seed: 6). None: never."""
    concise_needs_answer: bool = True
    """Pay the conciseness bonus only with an answer tag. The seed pays it for any short text,
    which a model that is rarely right games by answering nothing; --noconcise_needs_answer
    restores the seed's reward exactly."""
    # --- optimisation
    lr: float | None = lr_field()
    """Learning rate. Default: the seed's 2e-4 (tiny-chat collapses at 1e-3)."""
    batch_size: int = 8
    """Problems per step (the seed: 8)."""
    group_size: int = 8
    """Samples per problem (the seed: 8)."""
    max_steps: int = 10
    """Training steps (the seed: 10)."""
    loss_fn: Literal["importance_sampling", "ppo", "cispo"] = "importance_sampling"
    """Policy loss (Tinker's built-ins)."""
    advantage: Literal["group", "batch"] = "group"
    """group: normalise per problem (GRPO); batch: the seed's whole-batch normalisation."""
    # --- sampling
    max_tokens: int = 256
    """Longest completion (the seed: 256)."""
    temperature: float = 0.8
    """Sampling temperature for rollouts (the seed: 0.8)."""
    # --- held-out evaluation
    eval_every: int = 0
    """Score held-out problems every N steps and at the end (0: only at the end)."""
    eval_problems: int = 99
    """Held-out problems per evaluation, spread over the pair counts (greedy decoding)."""
    # --- run economics
    dry_run: bool = False
    """Print the run's token and cost upper bounds, then exit without calling the backend."""


def validate(cfg: Config) -> None:
    check_common(cfg)
    require(cfg.group_size >= 1, "group_size", f"must be >= 1, got {cfg.group_size}")
    require(cfg.group_size >= 2 or cfg.advantage != "group", "group_size",
            "1 leaves group advantages always zero; use >= 2 or --advantage batch")
    require(cfg.max_tokens >= 1, "max_tokens", f"must be >= 1, got {cfg.max_tokens}")
    require(finite(cfg.temperature) and cfg.temperature > 0, "temperature",
            f"must be a number > 0 for RL, got {cfg.temperature}")
    require(finite(cfg.large_share) and 0 <= cfg.large_share <= 1, "large_share",
            f"must be in [0, 1], got {cfg.large_share}")
    require(cfg.concise_bonus_after is None or cfg.concise_bonus_after >= 0,
            "concise_bonus_after", f"must be >= 0 (or None), got {cfg.concise_bonus_after}")
    require(cfg.eval_every >= 0, "eval_every", f"must be >= 0, got {cfg.eval_every}")
    require(cfg.eval_problems >= 0, "eval_problems", f"must be >= 0, got {cfg.eval_problems}")


def make_task(cfg: Config):
    try:
        pair_counts = tuple(int(p) for p in cfg.pair_counts.split(","))
        return arithmetic_task(Difficulty(pair_counts=pair_counts, large_share=cfg.large_share),
                               concise_needs_answer=cfg.concise_needs_answer)
    except ValueError as exc:
        raise ConfigError(f"--pair_counts/--large_share: {exc}") from None


def sample_seed(seed: int, step: int, problem: int) -> int:
    return (seed * 1_000_003 + step * 10_007 + problem) % 2**31


def main(cfg: Config) -> dict[str, float]:
    cfg = resolved(cfg, os.environ, lr=2e-4, tiny_lr=2e-4)
    validate(cfg)
    task = make_task(cfg)
    if cfg.dry_run:
        print(dry_run(cfg, task).format(f"dry run: train_rl on {cfg.model} ({cfg.backend})"))
        return {}
    if cfg.model in TINY_MODELS and cfg.model != LOCAL_DEFAULT_MODEL and not cfg.load_checkpoint:
        # Not an error (tests and plumbing checks run this way), but rewards will stay ~0.
        print(f"note: {cfg.model} has never seen this task's answer tags; for learning, use the "
              f"default {LOCAL_DEFAULT_MODEL} or an SFT warm start (--load_checkpoint)")
    meter = CostMeter(cfg.model, cfg.backend)  # a bad price file fails here, before spending
    service = connect(cfg.backend, cfg.base_url)
    tracker = open_tracker(cfg, "train_rl", job_type="rl", may_change=("eval_problems",))
    with tracker, GracefulStop() as stop:
        training_client, done_steps = start_training_client(service, cfg, tracker.run_dir)
        tokenizer = training_client.get_tokenizer()
        heldout = spread(task.load_heldout(), cfg.eval_problems)
        heldout_prompt_tokens = sum(
            prompt_token_counts([task.messages(p) for p in heldout], tokenizer)[0])
        tracker.truncate_after(done_steps)  # a continued run redoes what came after its checkpoint
        previous = last_logged_metrics(tracker.run_dir)
        meter.restore(previous)
        # Steps where every group tied (no datum, no update): a run can look finished and
        # have trained nothing, so the count is logged, summarised and printed at the end.
        untrained_steps = int(previous.get("rl/steps_without_training", 0))
        next_sampler = training_client.save_weights_and_get_sampling_client()
        metrics: dict[str, float] = {}
        bar = tqdm(range(done_steps + 1, cfg.max_steps + 1), initial=done_steps,
                   total=cfg.max_steps, desc="rl", dynamic_ncols=True)
        for step in bar:
            t0 = time.perf_counter()
            sampler = next_sampler.result()
            problems = [task.sample(cfg.seed, (step - 1) * cfg.batch_size + i)
                        for i in range(cfg.batch_size)]
            prompts = [chat_tokens(tokenizer, task.messages(p), add_generation_prompt=True)
                       for p in problems]
            futures = [sampler.sample(types.ModelInput.from_ints(prompt), cfg.group_size,
                                      types.SamplingParams(max_tokens=cfg.max_tokens,
                                                           temperature=cfg.temperature,
                                                           seed=sample_seed(cfg.seed, step, i)))
                       for i, prompt in enumerate(prompts)]
            groups = [f.result().sequences for f in futures]
            t_sampled = time.perf_counter()

            concise = cfg.concise_bonus_after is not None and step > cfg.concise_bonus_after
            texts = [[tokenizer.decode(s.tokens, skip_special_tokens=True) for s in g]
                     for g in groups]
            rewards = [[task.reward(p, text, concise) for text in group_texts]
                       for p, group_texts in zip(problems, texts, strict=True)]
            totals_P_G = np.array([[r["total"] for r in group] for group in rewards])
            adv = compute_advantages(totals_P_G, cfg.advantage)
            datums = [rollout_datum(prompts[p], seq.tokens, seq.logprobs, adv.advantages_P_G[p, g])
                      for p in np.flatnonzero(adv.keep_P) for g, seq in enumerate(groups[p])]

            train_metrics, next_sampler = train_on(training_client, datums, cfg, step)
            untrained_steps += not datums
            metrics = {
                **rollout_metrics(groups, texts, rewards, prompts, cfg),
                **train_metrics,
                "rl/frac_groups_zero_std": adv.frac_groups_zero_std,
                "rl/steps_without_training": untrained_steps,
                "train/lr": cfg.lr, "progress/step": step,
                "progress/done_frac": step / cfg.max_steps,
                "time/sample": t_sampled - t0, "time/train": time.perf_counter() - t_sampled,
            }
            eval_prompt = eval_sampled = 0
            if due(step, cfg.eval_every, cfg.max_steps) and heldout:
                eval_metrics, eval_sampled = evaluate_heldout(next_sampler.result(), tokenizer,
                                                              heldout, cfg)
                metrics.update(eval_metrics)
                eval_prompt = heldout_prompt_tokens
            if due(step, cfg.sample_every, cfg.max_steps):
                log_samples(tracker, step, problems, groups, texts, rewards, adv.advantages_P_G,
                            task)
            metrics.update(meter.step(prompt=metrics["tokens/prompt"] + eval_prompt,
                                      sampled=metrics["tokens/sampled"] + eval_sampled,
                                      trained=metrics["tokens/trained"]))
            metrics["time/step"] = time.perf_counter() - t0
            metrics["throughput/tokens_per_s"] = (
                metrics["tokens/sampled"] + metrics["tokens/trained"]) / metrics["time/step"]
            tracker.log(metrics, step)
            # After the step's record: a crash between the two redoes the step, never loses it.
            save_if_due(training_client, tracker, step, cfg.save_every, cfg.max_steps)
            bar.set_postfix(reward=f"{metrics['reward/mean']:.2f}",
                            acc=f"{metrics['rl/accuracy']:.0%}")
            if stop.requested and step < cfg.max_steps:
                stop_here(training_client, tracker, step, stop)
                break
        end_of_run(tracker, meter, metrics,
                   ["reward/mean", "rl/accuracy", "eval/accuracy", "completions/mean_words"],
                   warning=untrained_warning(
                       untrained_steps, int(metrics.get("progress/step", done_steps))))
    if stop.requested and step < cfg.max_steps:
        raise SystemExit(stop.exit_code)  # stopped by a signal, cleanly: the checkpoint is saved
    return metrics


def train_on(training_client, datums: list[types.Datum], cfg: Config, step: int
             ) -> tuple[dict[str, float], Any]:
    """One optimizer step on the kept rollouts, and the next step's sampling client (a future).

    The sampling client is requested before waiting on the step: calls run in order, so it
    snapshots the updated weights, and its round trip overlaps the training round trip.
    Also measures the KL between sampler and learner logprobs.
    """
    tokens = sum(d.model_input.length for d in datums)
    if not datums:  # every group had equal rewards: nothing to learn from this batch
        next_sampler = training_client.save_weights_and_get_sampling_client()
        # No train/loss: no loss was computed, and a logged 0.0 would look like a perfect step.
        return {"tokens/trained": 0}, next_sampler
    fwd_bwd = training_client.forward_backward(datums, cfg.loss_fn)
    optim = training_client.optim_step(types.AdamParams(learning_rate=cfg.lr))
    next_sampler = training_client.save_weights_and_get_sampling_client()
    output = fwd_bwd.result()
    optim_metrics = optim.result().metrics or {}
    diffs = []
    for datum, out in zip(datums, output.loss_fn_outputs, strict=True):
        completion = datum.loss_fn_inputs["advantages"].to_numpy() != 0
        sampled = datum.loss_fn_inputs["logprobs"].to_numpy()
        diffs.append((sampled - out["logprobs"].to_numpy())[completion])
    metrics = {"train/loss": output.metrics["loss:sum"] / max(1, sum(len(d) for d in diffs)),
               "tokens/trained": tokens,
               "rl/kl_sample_train": float(np.mean(np.concatenate(diffs))) if diffs else 0.0}
    if "grad_norm" in optim_metrics:
        metrics["train/grad_norm"] = optim_metrics["grad_norm"]
    check_update(metrics, step)  # before anything is logged or saved from this update
    return metrics, next_sampler


def untrained_warning(untrained_steps: int, steps: int) -> str | None:
    """The end-of-run warning for steps that trained nothing (None when every step trained)."""
    if not untrained_steps:
        return None
    which = "every step" if untrained_steps >= steps else f"{untrained_steps} of {steps} steps"
    return (f"trained on nothing in {which}: every group's rewards were tied, so no "
            "datum had a non-zero advantage")


def rollout_metrics(groups, texts, rewards, prompts, cfg: Config) -> dict[str, float]:
    flat = [r for group in rewards for r in group]
    seqs = [s for group in groups for s in group]
    sampled_lp = np.concatenate([np.asarray(s.logprobs) for s in seqs if s.tokens] or [[0.0]])
    return {
        "reward/mean": float(np.mean([r["total"] for r in flat])),
        "reward/std": float(np.std([r["total"] for r in flat])),
        **{f"reward/{part}": float(np.mean([r[part] for r in flat]))
           for part in ("format", "correct", "concise")},
        "rl/accuracy": float(np.mean([r["correct"] > 0 for r in flat])),
        # Mean surprisal of the sampled tokens: a cheap per-token entropy estimate.
        "rl/entropy": float(-sampled_lp.mean()),
        "completions/mean_words": float(np.mean([len(t.split()) for g in texts for t in g])),
        "completions/mean_tokens": float(np.mean([len(s.tokens) for s in seqs])),
        "completions/clipped_frac": float(np.mean([s.stop_reason == "length" for s in seqs])),
        "tokens/prompt": sum(len(p) for p in prompts),
        "tokens/sampled": sum(len(s.tokens) for s in seqs),
    }


def evaluate_heldout(sampler, tokenizer, heldout, cfg: Config) -> tuple[dict[str, float], int]:
    """Greedy accuracy of the step's updated weights on held-out problems (the same scoring
    code as evaluate.py), and the number of tokens sampled for it (billed)."""
    params = types.SamplingParams(max_tokens=cfg.max_tokens, temperature=0.0, seed=cfg.seed)
    rows = score_arithmetic(sampler, tokenizer, heldout, params)
    summary = summarize(rows)
    return ({"eval/accuracy": summary["accuracy"], "eval/reward": summary["reward"]},
            sum(row["tokens"] for row in rows))


def log_samples(tracker, step, problems, groups, texts, rewards, advantages_P_G, task) -> None:
    """Every rollout of this step: the user turn, completion, reward parts and advantage."""
    rows = [[step, p, g, task.messages(problem)[-1]["content"], texts[p][g], task.answer(problem),
             r["format"], r["correct"], r["concise"], r["total"], float(advantages_P_G[p, g]),
             len(groups[p][g].tokens)]
            for p, problem in enumerate(problems) for g, r in enumerate(rewards[p])]
    tracker.log_table("samples", ["step", "group", "sample", "prompt", "completion", "answer",
                                  "format", "correct", "concise", "reward", "advantage",
                                  "completion_tokens"], rows, step)


def dry_run(cfg: Config, task) -> Estimate:
    """Upper bounds on this run's tokens and dollars from the config alone (no backend call)."""
    tokenizer = tokenizer_for(cfg.model)  # None: not available offline, so chars/4
    # Every problem the run will see (problems are addressed by seed and index), so the
    # longest prompt among them bounds every prompt.
    problems = [task.sample(cfg.seed, i) for i in range(cfg.batch_size * cfg.max_steps)]
    prompts, exact = prompt_token_counts([task.messages(p) for p in problems], tokenizer)
    estimate = estimate_rl(max(prompts), cfg.batch_size, cfg.group_size, cfg.max_tokens,
                           cfg.max_steps, price_for(cfg.model, cfg.backend), exact=exact)
    heldout = spread(task.load_heldout(), cfg.eval_problems)
    evals = sum(due(s, cfg.eval_every, cfg.max_steps) for s in range(1, cfg.max_steps + 1))
    if not heldout:
        return estimate
    heldout_prompts = sum(prompt_token_counts([task.messages(p) for p in heldout], tokenizer)[0])
    return estimate.extra(prompt=evals * heldout_prompts,
                          sampled=evals * len(heldout) * cfg.max_tokens,
                          note=f"plus {evals} held-out evaluation(s) of {len(heldout)} problems "
                               f"(at most {cfg.max_tokens} tokens each)")


if __name__ == "__main__":
    raise SystemExit(run_main(main, Config))
