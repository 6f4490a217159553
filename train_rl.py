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
- `--max_steps_off_policy K` samples up to K batches ahead of the learner (the cookbook's async
  mode, but batch s is always sampled by the weights after step s-1-K, so runs still repeat
  exactly); the policy losses weight each token by learner/sampler probability ratios.

    python train_rl.py --lr 2e-4   # the seed's run: on Tinker with TINKER_API_KEY, else locally
                                   # on tiny-instruct (reward rises over the 10 steps)
    python train_rl.py --load_checkpoint runs/warm-start --max_steps 20   # RL after an SFT run
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from common.advantages import compute_advantages
from common.cli import run_main
from common.config import (
    LOCAL_DEFAULT_MODEL,
    CheckpointConfig,
    ConfigError,
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
from common.costs import (
    TINY_MODELS,
    CostMeter,
    Estimate,
    estimate_rl,
    price_for,
    prompt_token_counts,
    tokenizer_for,
)
from common.datums import chat_tokens, decode_completion, rollout_datum
from common.evaluation import score_arithmetic, spread, summarize
from common.runfiles import write_atomic
from common.runs import check_update, due, start_run
from common.sdk import types
from common.seeding import derive_seed
from common.tasks import Difficulty, arithmetic_task

HEADLINE = ["reward/mean", "rl/accuracy", "eval/accuracy", "completions/mean_words"]


@dataclass
class Config(ServiceConfig, TrainingConfig, TrackingConfig, CheckpointConfig):
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
    lr: float = lr_field(2e-4)
    """Learning rate (the seed: 2e-4; tiny-chat collapses at 1e-3)."""
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
    max_steps_off_policy: int = 0
    """Sample up to this many steps ahead of the learner, overlapping sampling with training
    (0: on-policy, the seed's loop). The loss corrects with the sampler's logprobs."""
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


def validate(cfg: Config) -> None:
    check_common(cfg)
    require_at_least(cfg, group_size=1, eval_problems=0, concise_bonus_after=0,
                     max_steps_off_policy=0)
    require(cfg.group_size >= 2 or cfg.advantage != "group", "group_size",
            "1 leaves group advantages always zero; use >= 2 or --advantage batch")
    require(finite(cfg.temperature) and cfg.temperature > 0, "temperature",
            f"must be a number > 0 for RL, got {cfg.temperature}")
    require(finite(cfg.large_share) and 0 <= cfg.large_share <= 1, "large_share",
            f"must be in [0, 1], got {cfg.large_share}")


def make_task(cfg: Config):
    try:
        pair_counts = tuple(int(p) for p in cfg.pair_counts.split(","))
        return arithmetic_task(Difficulty(pair_counts=pair_counts, large_share=cfg.large_share),
                               concise_needs_answer=cfg.concise_needs_answer)
    except ValueError as exc:
        raise ConfigError(f"--pair_counts/--large_share: {exc}") from None


def note_untaught_model(cfg: Config) -> None:
    if cfg.model in TINY_MODELS and cfg.model != LOCAL_DEFAULT_MODEL and not cfg.load_checkpoint:
        # Not an error (tests and plumbing checks run this way), but rewards will stay ~0.
        print(f"note: {cfg.model} has never seen this task's answer tags; for learning, use the "
              f"default {LOCAL_DEFAULT_MODEL} or an SFT warm start (--load_checkpoint)")


def main(cfg: Config) -> dict[str, float]:
    cfg = resolved(cfg, os.environ)
    validate(cfg)
    task = make_task(cfg)
    if cfg.dry_run:
        print(dry_run(cfg, task).format(f"dry run: train_rl on {cfg.model} ({cfg.backend})"))
        return {}
    note_untaught_model(cfg)
    with start_run(cfg, "train_rl", job_type="rl", may_change=("eval_problems",)) as run:
        training_client, tokenizer = run.training_client, run.tokenizer
        heldout = spread(task.load_heldout(), cfg.eval_problems)
        rollouts = Rollouts(task, tokenizer, cfg, run)
        # Steps where every group tied (no datum, no update): a run can look finished and
        # have trained nothing, so the count is logged, summarised and printed at the end.
        untrained_steps = int(run.last_metrics.get("rl/steps_without_training", 0))
        sampler = training_client.save_weights_and_get_sampling_client()
        metrics: dict[str, float] = {}
        for step in run.steps(cfg.max_steps, desc="rl"):
            t0 = time.perf_counter()
            # Batch step+K is sampled now, from the weights after step-1, while the learner
            # trains the K batches before it (K = --max_steps_off_policy; 0: on-policy).
            rollouts.submit_through(step + cfg.max_steps_off_policy, sampler.result(), step - 1)
            batch = rollouts.take(step)
            groups = batch.sequences()
            t_sampled = time.perf_counter()

            concise = cfg.concise_bonus_after is not None and step > cfg.concise_bonus_after
            texts = [[decode_completion(tokenizer, s.tokens) for s in g] for g in groups]
            rewards = [[task.reward(p, text, concise) for text in group_texts]
                       for p, group_texts in zip(batch.problems, texts, strict=True)]
            totals_P_G = np.array([[r["total"] for r in group] for group in rewards])
            adv = compute_advantages(totals_P_G, cfg.advantage)
            kept = [(batch.prompts[p], seq, adv.advantages_P_G[p, g])
                    for p in np.flatnonzero(adv.keep_P) for g, seq in enumerate(groups[p])]

            update = submit_update(training_client, kept, cfg.loss_fn, cfg.lr)
            # Queued after the update, so it samples the updated weights; its round trip
            # overlaps the training round trip.
            sampler = training_client.save_weights_and_get_sampling_client()
            train_metrics = update.metrics(step) if update else {}
            run.meter.add(trained=update.tokens if update else 0)
            untrained_steps += update is None
            metrics = {**rollout_metrics(groups, texts, rewards, adv), **train_metrics,
                       "rl/staleness": batch.staleness,
                       "rl/steps_without_training": untrained_steps, "train/lr": cfg.lr,
                       "progress/step": step, "progress/done_frac": step / cfg.max_steps,
                       "time/sample": t_sampled - t0, "time/train": time.perf_counter() - t_sampled}
            if due(step, cfg.eval_every, cfg.max_steps) and heldout:
                metrics.update(evaluate_heldout(sampler.result(), tokenizer, task, heldout, cfg,
                                                run.meter))
            if due(step, cfg.sample_every, cfg.max_steps):
                log_samples(run.tracker, step, batch.problems, groups, texts, rewards,
                            adv.advantages_P_G, task)
            metrics["time/step"] = time.perf_counter() - t0
            run.log(metrics, step)
            run.save_if_due(step)
            run.show(reward=f"{metrics['reward/mean']:.2f}", acc=f"{metrics['rl/accuracy']:.0%}")
        run.finish(metrics, HEADLINE, warning=untrained_warning(
            untrained_steps, int(metrics.get("progress/step", run.done_steps))))
    return metrics


@dataclass
class Batch:
    """One step's problems and their sampled groups (futures until they arrive)."""

    step: int
    sampler_step: int  # the learner step whose weights sampled it
    problems: list
    prompts: list[list[int]]
    groups: list  # per problem: a sample future, or the sequences themselves (restored)

    @property
    def staleness(self) -> int:
        """Updates between the weights that sampled this batch and those that train on it."""
        return self.step - 1 - self.sampler_step

    def sequences(self) -> list[list[types.SampledSequence]]:
        return [g if isinstance(g, list) else g.result().sequences for g in self.groups]


class Rollouts:
    """Batches sampled ahead of the learner, at most --max_steps_off_policy steps.

    Batch s is always sampled by the weights after step max(0, s - 1 - K), whatever the
    timing, so a run repeats exactly. A checkpoint after step S also stores the batches
    already sampled for the steps after S (rollouts/after-S.json): their weights are not in
    the checkpoint, so a resumed run reads them instead of sampling them again.
    """

    def __init__(self, task, tokenizer, cfg: Config, run) -> None:
        self.task, self.tokenizer, self.cfg, self.run = task, tokenizer, cfg, run
        self.batches: dict[int, Batch] = {}
        self.dir = run.tracker.run_dir / "rollouts"
        if cfg.max_steps_off_policy and run.done_steps:
            self.batches = self._load(run.done_steps)
        run.before_save.append(self._save)

    def submit_through(self, last_step: int, sampler, sampler_step: int) -> None:
        """Sample every batch up to `last_step` not yet sampled, with `sampler`."""
        for step in range(sampler_step + 1, min(last_step, self.cfg.max_steps) + 1):
            if step not in self.batches:
                self.batches[step] = self._sample(step, sampler, sampler_step)

    def take(self, step: int) -> Batch:
        batch = self.batches.pop(step)
        sequences = batch.sequences()
        # Billed when the learner uses them (a resumed run's restored batches included).
        self.run.meter.add(prompt=sum(len(p) for p in batch.prompts),
                           sampled=sum(len(s.tokens) for g in sequences for s in g))
        return batch

    def _problems(self, step: int) -> tuple[list, list[list[int]]]:
        """The step's problems (addressed by seed and index) and their prompt tokens."""
        problems = [self.task.sample(self.cfg.seed, (step - 1) * self.cfg.batch_size + i)
                    for i in range(self.cfg.batch_size)]
        return problems, [chat_tokens(self.tokenizer, self.task.messages(p),
                                      add_generation_prompt=True) for p in problems]

    def _sample(self, step: int, sampler, sampler_step: int) -> Batch:
        cfg = self.cfg
        problems, prompts = self._problems(step)
        futures = [sampler.sample(types.ModelInput.from_ints(prompt), cfg.group_size,
                                  types.SamplingParams(max_tokens=cfg.max_tokens,
                                                       temperature=cfg.temperature,
                                                       seed=derive_seed("rl", cfg.seed, step, i)))
                   for i, prompt in enumerate(prompts)]
        return Batch(step, sampler_step, problems, prompts, futures)

    def _save(self, step: int) -> None:
        if not self.cfg.max_steps_off_policy:
            return
        ahead = {str(s): {"sampler_step": b.sampler_step,
                          "groups": [[{"tokens": s.tokens, "logprobs": s.logprobs,
                                       "stop_reason": s.stop_reason,
                                       "sequence_id": s.sequence_id} for s in g]
                                     for g in b.sequences()]}
                 for s, b in sorted(self.batches.items())}
        self.dir.mkdir(exist_ok=True)
        write_atomic(self.dir / f"after-{step:06d}.json", json.dumps(ahead))

    def _load(self, step: int) -> dict[int, Batch]:
        path = self.dir / f"after-{step:06d}.json"
        if not path.exists():
            print(f"warning: {path} is missing: the batches sampled ahead of step {step} are "
                  "sampled again from the checkpoint's weights (the run will not repeat exactly)")
            return {}
        batches = {}
        for s, saved in json.loads(path.read_text()).items():
            problems, prompts = self._problems(int(s))
            groups = [[types.SampledSequence(
                stop_reason=seq["stop_reason"], sequence_id=seq["sequence_id"],
                tokens_np=np.asarray(seq["tokens"], np.int32),
                logprobs_np=np.asarray(seq["logprobs"], np.float32)) for seq in g]
                for g in saved["groups"]]
            batches[int(s)] = Batch(int(s), saved["sampler_step"], problems, prompts, groups)
        ahead = range(step + 1, min(step + self.cfg.max_steps_off_policy, self.cfg.max_steps) + 1)
        if missing := [s for s in ahead if s not in batches]:
            print(f"note: steps {missing} were past the run's end when it was saved; they are "
                  "sampled from the checkpoint's weights (a run extended with --max_steps is "
                  "not identical to one planned that long)")
        return batches


@dataclass
class Update:
    """One optimizer step in flight: forward_backward and optim_step, submitted together."""

    fwd_bwd: Any
    optim: Any
    sampled_logprobs: list[np.ndarray]  # per datum, its completion's sampling logprobs
    completion_lengths: list[int]
    tokens: int

    def metrics(self, step: int) -> dict[str, float]:
        """Waits for the step. Loss per completion token, grad norm, and the KL between the
        sampler's and the learner's logprobs of the sampled tokens (> 0 for stale batches)."""
        output = self.fwd_bwd.result()
        optim_metrics = self.optim.result().metrics or {}
        diffs = [sampled - out["logprobs"].to_numpy()[-n:]
                 for sampled, out, n in zip(self.sampled_logprobs, output.loss_fn_outputs,
                                            self.completion_lengths, strict=True) if n]
        n_tokens = sum(self.completion_lengths)
        metrics = {"train/loss": output.metrics["loss:sum"] / max(1, n_tokens),
                   "tokens/trained": self.tokens,
                   "rl/kl_sample_train": float(np.mean(np.concatenate(diffs))) if diffs else 0.0}
        if "grad_norm" in optim_metrics:
            metrics["train/grad_norm"] = optim_metrics["grad_norm"]
        check_update(metrics, step)  # before anything is logged or saved from this update
        return metrics


def submit_update(training_client, kept, loss_fn: str, lr: float) -> Update | None:
    """Submit one optimizer step on the kept rollouts ((prompt, sequence, advantage) each);
    None when every group had equal rewards (nothing to learn from this batch)."""
    if not kept:
        return None
    datums = [rollout_datum(prompt, seq.tokens, seq.logprobs, advantage)
              for prompt, seq, advantage in kept]
    return Update(fwd_bwd=training_client.forward_backward(datums, loss_fn),
                  optim=training_client.optim_step(types.AdamParams(learning_rate=lr)),
                  sampled_logprobs=[np.asarray(seq.logprobs, np.float32) for _, seq, _ in kept],
                  completion_lengths=[len(seq.tokens) for _, seq, _ in kept],
                  tokens=sum(d.model_input.length for d in datums))


def untrained_warning(untrained_steps: int, steps: int) -> str | None:
    """The end-of-run warning for steps that trained nothing (None when every step trained)."""
    if not untrained_steps:
        return None
    which = "every step" if untrained_steps >= steps else f"{untrained_steps} of {steps} steps"
    return (f"trained on nothing in {which}: every group's rewards were tied, so no "
            "datum had a non-zero advantage")


def rollout_metrics(groups, texts, rewards, adv) -> dict[str, float]:
    flat = [r for group in rewards for r in group]
    seqs = [s for group in groups for s in group]
    sampled_lp = np.concatenate([np.asarray(s.logprobs) for s in seqs if s.tokens] or [[0.0]])
    return {
        "reward/mean": float(np.mean([r["total"] for r in flat])),
        "reward/std": float(np.std([r["total"] for r in flat])),
        **{f"reward/{part}": float(np.mean([r[part] for r in flat]))
           for part in ("format", "correct", "concise")},
        "rl/accuracy": float(np.mean([r["correct"] > 0 for r in flat])),
        "rl/frac_groups_zero_std": adv.frac_groups_zero_std,
        # Mean surprisal of the sampled tokens: a cheap per-token entropy estimate.
        "rl/entropy": float(-sampled_lp.mean()),
        "completions/mean_words": float(np.mean([len(t.split()) for g in texts for t in g])),
        "completions/mean_tokens": float(np.mean([len(s.tokens) for s in seqs])),
        "completions/clipped_frac": float(np.mean([s.stop_reason == "length" for s in seqs])),
    }


def evaluate_heldout(sampler, tokenizer, task, heldout, cfg: Config, meter: CostMeter
                     ) -> dict[str, float]:
    """Greedy accuracy of the step's updated weights on held-out problems (the same scoring
    code as evaluate.py); its tokens are billed to the step."""
    params = types.SamplingParams(max_tokens=cfg.max_tokens, temperature=0.0, seed=cfg.seed)
    rows = score_arithmetic(sampler, tokenizer, heldout, params, task)
    summary = summarize(rows)
    meter.add(prompt=sum(prompt_token_counts([task.messages(p) for p in heldout], tokenizer)[0]),
              sampled=sum(row["tokens"] for row in rows))
    return {"eval/accuracy": summary["accuracy"], "eval/reward": summary["reward"]}


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
