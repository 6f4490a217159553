"""RL with verifiable rewards (the seed's Test 2): GRPO-style advantages, importance-sampling loss.

Each step samples `group_size` completions for each of `batch_size` problems of the task from the
current weights, scores them with the task's reward, normalises rewards within each problem's
group into advantages, and takes one optimizer step on the completions with a policy loss. The
default task is the seed's ("add adjacent pairs, then multiply"; reward: format 0.1 + correct 1.0,
plus a conciseness bonus after --concise_bonus_after); `--task dataset:FILE`, `--task
reasoning_gym:NAME` and `--reward FILE.py:FUNCTION` bring your own (common/tasks.py).

Every sampling request is submitted before any is awaited, forward_backward goes out with
optim_step, and the next sampler is requested before the step's results are awaited: on Tinker
a step costs about two round trips instead of the seed's batch_size + 2.

Deviations from the seed's notebook (and the textbook):
- advantages are normalised per problem (GRPO) by default; `--advantage batch` is the seed's
  whole-batch normalisation. Groups whose rewards all tie carry no signal and are skipped.
- problems are addressed by seed and index, so runs repeat and resume exactly.
- one gradient step per batch (no PPO epochs), no KL penalty; the sampler/learner KL is logged.
- `--max_steps_off_policy K` samples up to K batches ahead of the learner (the cookbook's async
  mode, but batch s is always sampled by the weights after step s-1-K, so runs still repeat
  exactly); the policy losses weight each token by learner/sampler probability ratios.

Shape suffixes: `_P` per problem of the batch, `_G` per sample of a problem's group, `_D` per
datum trained on, `_T` per token.

    python train_rl.py --lr 2e-4   # the seed's run: on Tinker with TINKER_API_KEY, else locally
                                   # on tiny-instruct (reward rises over the 10 steps)
    python train_rl.py --task dataset:data/arithmetic_qa.jsonl --reward my_reward.py:score
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from common.advantages import compute_advantages
from common.backend import TINY_MODELS, refusals_name, tokenizer_for, types
from common.cli import run_main
from common.config import (
    LOCAL_DEFAULT_MODEL,
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
from common.costs import Estimate, estimate_rl, price_for, prompt_token_counts
from common.datums import chat_tokens, decode_completion, rollout_datum
from common.evaluation import score_problems, spread, summarize
from common.runfiles import write_atomic
from common.runs import Run, claim_run, due, start_run
from common.seeding import derive_seed
from common.tasks import Problem, Task, TaskConfig, fingerprint, make_task, solved

HEADLINE = ["reward/mean", "rl/accuracy", "eval/accuracy", "completions/mean_words"]


@dataclass
class Config(ServiceConfig, TaskConfig, TrainingConfig, TrackingConfig, CheckpointConfig):
    """RL with verifiable rewards on the seed's arithmetic task, your dataset, a generated
    reasoning task or your own reward; every flag below."""

    concise_bonus_after: int | None = 6
    """arithmetic: add the conciseness bonus to the reward after this step (the seed: 6).
    None: never."""
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
    """Held-out problems per evaluation, spread over the held-out set (greedy decoding)."""


def validate(cfg: Config) -> None:
    check_common(cfg)
    require_at_least(cfg, group_size=1, eval_problems=0, concise_bonus_after=0,
                     max_steps_off_policy=0)
    require(cfg.group_size >= 2 or cfg.advantage != "group", "group_size",
            "1 leaves group advantages always zero; use >= 2 or --advantage batch")
    require(finite(cfg.temperature) and cfg.temperature > 0, "temperature",
            f"must be a number > 0 for RL, got {cfg.temperature}")


def main(cfg: Config) -> dict[str, float]:
    cfg = resolved(cfg, os.environ)
    validate(cfg)
    claim = None if cfg.dry_run else claim_run(cfg, "train_rl", may_change=("eval_problems",),
                                               recorded={"data_fingerprint": fingerprint(cfg)})
    task = make_task(cfg)
    if claim is None:
        print(dry_run(cfg, task).format(f"dry run: train_rl on {cfg.model} ({cfg.backend})"))
        return {}
    if (cfg.task == "arithmetic" and cfg.model in TINY_MODELS and cfg.model != LOCAL_DEFAULT_MODEL
            and not cfg.load_checkpoint):
        print(f"note: {cfg.model} has never seen the arithmetic task's answer tags; for learning, "
              f"use the default {LOCAL_DEFAULT_MODEL} or an SFT warm start (--load_checkpoint)")
    with start_run(claim, job_type="rl") as run:
        training_client, tokenizer = run.training_client, run.tokenizer
        heldout_P = spread(task.heldout(), cfg.eval_problems)
        heldout_prompt_tokens = sum(prompt_token_counts([p.messages for p in heldout_P],
                                                        tokenizer)[0])  # billed per evaluation
        ahead = SampledAhead(run, task, cfg.max_steps_off_policy)
        # Steps where every group tied (no datum, no update): a run can look finished and
        # have trained nothing, so the count is logged, summarised and printed at the end.
        untrained_steps = int(run.last_metrics.get("rl/steps_without_training", 0))
        sampler = training_client.save_weights_and_get_sampling_client()
        metrics: dict[str, float] = {}
        for step in run.steps(cfg.max_steps, desc="rl"):
            t0 = time.perf_counter()
            # 1. Sample group_size completions per problem from the newest weights. With K > 0
            #    the batches of steps up to step+K are submitted now and trained when they come.
            for later in ahead.steps_to_sample(step, cfg.max_steps):
                ahead.put(sample_batch(sampler.result(), task, tokenizer, cfg, later, step - 1))
            batch = ahead.take(step)
            with refusals_name(f"--max_tokens {cfg.max_tokens} / --temperature {cfg.temperature}"):
                groups_P_G = batch.sequences()
            run.meter.add(prompt=sum(map(len, batch.prompts_P)),
                          sampled=sum(len(s.tokens) for group in groups_P_G for s in group))
            t_sampled = time.perf_counter()

            # 2. Reward every completion (the arithmetic task's concise bonus after its step).
            concise = cfg.concise_bonus_after is not None and step > cfg.concise_bonus_after
            texts_P_G = [[decode_completion(tokenizer, s.tokens) for s in group]
                         for group in groups_P_G]
            rewards_P_G = [[task.reward(problem, text, concise) for text in texts]
                           for problem, texts in zip(batch.problems_P, texts_P_G, strict=True)]

            # 3. Advantages: rewards normalised within each problem's group; tied groups dropped.
            totals_P_G = np.array([[r["total"] for r in group] for group in rewards_P_G])
            adv = compute_advantages(totals_P_G, cfg.advantage)

            # 4. Datums: prompt + completion, the sampler's logprobs, the advantage per token.
            kept_D = [(batch.prompts_P[p], seq, float(adv.advantages_P_G[p, g]))
                      for p in np.flatnonzero(adv.keep_P) for g, seq in enumerate(groups_P_G[p])]
            datums_D = [rollout_datum(prompt, seq.tokens, seq.logprobs, advantage)
                        for prompt, seq, advantage in kept_D]

            # 5. One optimizer step; the next sampler is queued behind it (it samples the
            #    updated weights) before anything is awaited.
            if datums_D:
                fwd_bwd = training_client.forward_backward(datums_D, cfg.loss_fn)
                optim = training_client.optim_step(types.AdamParams(learning_rate=cfg.lr))
            sampler = training_client.save_weights_and_get_sampling_client()
            train_metrics = (update_metrics(fwd_bwd.result(), optim.result(), kept_D)
                             if datums_D else {})
            run.meter.add(trained=sum(d.model_input.length for d in datums_D))
            untrained_steps += not datums_D

            # 6. Log: rewards, training, held-out accuracy when due, the samples table.
            metrics = {**rollout_metrics(groups_P_G, texts_P_G, rewards_P_G, adv),
                       **train_metrics, "rl/staleness": batch.staleness,
                       "rl/steps_without_training": untrained_steps, "train/lr": cfg.lr,
                       "progress/step": step, "progress/done_frac": step / cfg.max_steps,
                       "time/sample": t_sampled - t0, "time/train": time.perf_counter() - t_sampled}
            if heldout_P and due(step, cfg.eval_every, cfg.max_steps):
                metrics.update(evaluate_heldout(sampler.result(), tokenizer, task, heldout_P,
                                                heldout_prompt_tokens, cfg, run))
            if due(step, cfg.sample_every, cfg.max_steps):
                log_samples(run, step, batch.problems_P, groups_P_G, texts_P_G, rewards_P_G,
                            adv.advantages_P_G, task.reward_parts)
            metrics["time/step"] = time.perf_counter() - t0
            run.log(metrics, step)
            run.save_if_due(step)
            run.show(reward=f"{metrics['reward/mean']:.2f}",
                     **({"acc": f"{metrics['rl/accuracy']:.0%}"} if "rl/accuracy" in metrics
                        else {}))
        run.finish(metrics, HEADLINE, warning=untrained_warning(
            untrained_steps, int(metrics.get("progress/step", run.done_steps))))
    return metrics


def problem_indices(step: int, batch_size: int) -> range:
    """The task's problem indices that step `step` trains on (problems are addressed by index)."""
    return range((step - 1) * batch_size, step * batch_size)


@dataclass
class Batch:
    """One step's problems, their prompt tokens and their sampled groups."""

    step: int
    sampler_step: int  # the learner step whose weights sampled it
    problems_P: list[Problem]
    prompts_P: list[list[int]]
    groups_P: list[Any]  # per problem: a sample future, or its sequences (restored on resume)

    @property
    def staleness(self) -> int:
        """Updates between the weights that sampled this batch and those that train on it."""
        return self.step - 1 - self.sampler_step

    def sequences(self) -> list[list[types.SampledSequence]]:
        return [g if isinstance(g, list) else g.result().sequences for g in self.groups_P]


def step_prompts(task: Task, tokenizer: Any, cfg: Config, step: int
                 ) -> tuple[list[Problem], list[list[int]]]:
    """The step's problems (addressed by seed and index) and their prompt tokens."""
    problems_P = [task.train(cfg.seed, i) for i in problem_indices(step, cfg.batch_size)]
    return problems_P, [chat_tokens(tokenizer, p.messages, add_generation_prompt=True)
                        for p in problems_P]


def sample_batch(sampler: Any, task: Task, tokenizer: Any, cfg: Config, step: int,
                 sampler_step: int) -> Batch:
    """Submit (without awaiting) group_size samples of each of the step's problems."""
    problems_P, prompts_P = step_prompts(task, tokenizer, cfg, step)
    futures_P = [sampler.sample(types.ModelInput.from_ints(prompt), cfg.group_size,
                                types.SamplingParams(max_tokens=cfg.max_tokens,
                                                     temperature=cfg.temperature,
                                                     seed=derive_seed("rl", cfg.seed, step, p)))
                 for p, prompt in enumerate(prompts_P)]
    return Batch(step, sampler_step, problems_P, prompts_P, futures_P)


def update_metrics(output: Any, optim: Any, kept_D: list) -> dict[str, float]:
    """Loss per completion token, grad norm, and the mean gap between the sampler's and the
    learner's logprobs of the sampled tokens (> 0 for stale batches)."""
    diffs_D = [np.asarray(seq.logprobs, np.float32) - out["logprobs"].to_numpy()[-len(seq.tokens):]
               for (_, seq, _), out in zip(kept_D, output.loss_fn_outputs, strict=True)
               if len(seq.tokens)]
    completion_tokens = sum(len(seq.tokens) for _, seq, _ in kept_D)
    metrics = {"train/loss": output.metrics["loss:sum"] / max(1, completion_tokens),
               "rl/kl_sample_train": float(np.mean(np.concatenate(diffs_D))) if diffs_D else 0.0}
    if "grad_norm" in (optim.metrics or {}):
        metrics["train/grad_norm"] = optim.metrics["grad_norm"]
    return metrics


def untrained_warning(untrained_steps: int, steps: int) -> str | None:
    """The end-of-run warning for steps that trained nothing (None when every step trained)."""
    if not untrained_steps:
        return None
    which = "every step" if untrained_steps >= steps else f"{untrained_steps} of {steps} steps"
    return (f"trained on nothing in {which}: every group's rewards were tied, so no datum had "
            "a non-zero advantage")


def rollout_metrics(groups_P_G: list, texts_P_G: list, rewards_P_G: list, adv: Any
                    ) -> dict[str, float]:
    rewards = [r for group in rewards_P_G for r in group]
    seqs = [s for group in groups_P_G for s in group]
    sampled_lp_T = np.concatenate([np.asarray(s.logprobs) for s in seqs if s.tokens] or [[0.0]])
    correct = [solved(r) for r in rewards]
    return {
        "reward/mean": float(np.mean([r["total"] for r in rewards])),
        "reward/std": float(np.std([r["total"] for r in rewards])),
        **{f"reward/{part}": float(np.mean([r[part] for r in rewards]))
           for part in rewards[0] if part != "total"},
        **({"rl/accuracy": float(np.mean(correct))} if None not in correct else {}),
        "rl/frac_groups_zero_std": adv.frac_groups_zero_std,
        # Mean surprisal of the sampled tokens: a cheap per-token entropy estimate.
        "rl/entropy": float(-sampled_lp_T.mean()),
        "completions/mean_words": float(np.mean([len(t.split()) for g in texts_P_G for t in g])),
        "completions/mean_tokens": float(np.mean([len(s.tokens) for s in seqs])),
        "completions/clipped_frac": float(np.mean([s.stop_reason == "length" for s in seqs])),
    }


def evaluate_heldout(sampler: Any, tokenizer: Any, task: Task, heldout_P: list[Problem],
                     prompt_tokens: int, cfg: Config, run: Run) -> dict[str, float]:
    """Greedy accuracy of the step's updated weights on held-out problems (evaluate.py's
    scoring); its tokens (`prompt_tokens` of prompts) are billed to the step."""
    params = types.SamplingParams(max_tokens=cfg.max_tokens, temperature=0.0, seed=cfg.seed)
    rows = score_problems(sampler, tokenizer, heldout_P, params, task)
    summary = summarize(rows)
    run.meter.add(prompt=prompt_tokens, sampled=sum(row["tokens"] for row in rows))
    return {"eval/reward": summary["reward"],
            **({"eval/accuracy": summary["accuracy"]} if "accuracy" in summary else {})}


def log_samples(run: Run, step: int, problems_P: list[Problem], groups_P_G: list,
                texts_P_G: list, rewards_P_G: list, advantages_P_G: np.ndarray,
                parts: tuple[str, ...]) -> None:
    """Every rollout of this step: the user turn, completion, reward parts and advantage."""
    rows = [[step, p, g, problem.messages[-1]["content"], texts_P_G[p][g], problem.answer,
             *(r[part] for part in parts), r["total"], float(advantages_P_G[p, g]),
             len(groups_P_G[p][g].tokens)]
            for p, problem in enumerate(problems_P) for g, r in enumerate(rewards_P_G[p])]
    run.tracker.log_table("samples", ["step", "group", "sample", "prompt", "completion", "answer",
                                      *parts, "reward", "advantage", "completion_tokens"],
                          rows, step)


class SampledAhead:
    """Batches sampled ahead of the learner, at most K = --max_steps_off_policy steps.

    Batch s is always sampled by the weights after step max(0, s - 1 - K), whatever the timing,
    so a run repeats exactly. A checkpoint after step S also stores the batches already sampled
    for the steps after S (rollouts/after-S.json): their weights are not in the checkpoint, so a
    resumed run reads them instead of sampling them again.
    """

    def __init__(self, run: Run, task: Task, steps_ahead: int) -> None:
        self.run, self.task, self.steps_ahead = run, task, steps_ahead
        self.batches: dict[int, Batch] = {}
        self.dir = run.tracker.run_dir / "rollouts"
        if steps_ahead:
            if run.done_steps:
                self.batches = self._load(run.done_steps)
            run.before_save.append(self._save)

    def steps_to_sample(self, step: int, max_steps: int) -> list[int]:
        """The steps whose batches are due now: this one, and up to K after it."""
        return [s for s in range(step, min(step + self.steps_ahead, max_steps) + 1)
                if s not in self.batches]

    def put(self, batch: Batch) -> None:
        self.batches[batch.step] = batch

    def take(self, step: int) -> Batch:
        return self.batches.pop(step)

    def _save(self, step: int) -> None:
        ahead = {str(s): {"sampler_step": b.sampler_step,
                          "groups": [[{"tokens": q.tokens, "logprobs": q.logprobs,
                                       "stop_reason": q.stop_reason, "sequence_id": q.sequence_id}
                                      for q in group] for group in b.sequences()]}
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
            groups_P = [[types.SampledSequence(
                stop_reason=q["stop_reason"], sequence_id=q["sequence_id"],
                tokens_np=np.asarray(q["tokens"], np.int32),
                logprobs_np=np.asarray(q["logprobs"], np.float32)) for q in group]
                for group in saved["groups"]]
            batches[int(s)] = Batch(int(s), saved["sampler_step"], *step_prompts(
                self.task, self.run.tokenizer, self.run.cfg, int(s)), groups_P)
        return batches


def dry_run(cfg: Config, task: Task) -> Estimate:
    """Upper bounds on this run's tokens and dollars from the config alone (no backend call)."""
    tokenizer = tokenizer_for(cfg.model)  # None: not available offline, so chars/4
    # The longest prompt among every problem the run will see bounds every prompt.
    problems = [task.train(cfg.seed, i) for step in range(1, cfg.max_steps + 1)
                for i in problem_indices(step, cfg.batch_size)]
    prompts, exact = prompt_token_counts([p.messages for p in problems], tokenizer)
    estimate = estimate_rl(max(prompts), cfg.batch_size, cfg.group_size, cfg.max_tokens,
                           cfg.max_steps, price_for(cfg.model, cfg.backend), exact=exact)
    heldout = spread(task.heldout(), cfg.eval_problems)
    evals = sum(due(s, cfg.eval_every, cfg.max_steps) for s in range(1, cfg.max_steps + 1))
    if not heldout:
        return estimate
    heldout_prompts = sum(prompt_token_counts([p.messages for p in heldout], tokenizer)[0])
    return estimate.extra(prompt=evals * heldout_prompts,
                          sampled=evals * len(heldout) * cfg.max_tokens,
                          note=f"plus {evals} held-out evaluation(s) of {len(heldout)} problems "
                               f"(at most {cfg.max_tokens} tokens each)")


if __name__ == "__main__":
    raise SystemExit(run_main(main, Config))
