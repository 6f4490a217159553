"""How close an RL step of train_rl.py comes to its critical path against a slow service, on
policy (K=0) and pipelined off-policy (`--max_steps_off_policy K`).

The local backend with an injected per-call latency stands in for Tinker: every call resolves no
sooner than LATENCY after it was submitted (round trips of concurrent calls overlap, as network
round trips do), and the compute is real: the local default model (tiny-instruct, whose groups
do not tie, so every timed step trains) samples and trains the step's batch. Every timed step
must have trained tokens (`tokens/trained > 0`), or the bench fails: a step that skipped the
training round trip would be compared with a critical path that includes it.

Measured in one process, each on a server of its own:

- service alone: the median wall time of one step's sampling calls (all submitted, then all
  awaited), and of its training calls (forward_backward + optim_step + the next sampler,
  submitted together), each with nothing else running; at the latency and with none (compute);
- K=0, 1, 2: `train_rl.main` at --max_steps_off_policy K, the median `time/step` of its steady
  steps (step 1 fills the pipeline; the last max(K, 1) steps drain it and save);
- engine s: the server's busy (compute) seconds per step over the whole run of that K;
- critical path per step: K=0 must sample, then train: sampling + training. K>=1 may overlap
  them: max(sampling, training), but never under sampling compute + training compute, because
  the local engine runs one call at a time (Tinker's samplers and trainers are separate machines);
- seed: the seed notebook's loop on the same backend (each problem's samples awaited in turn,
  then forward_backward and optim_step), one step.

    python bench/pipelining.py                   # about five minutes on 2 busy cores
    python bench/pipelining.py --latency 2 --ks 0 1 --steps 5 --no_seed_loop
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from tinker import types  # noqa: E402

import local_tinker  # noqa: E402
import train_rl  # noqa: E402
from common.advantages import compute_advantages  # noqa: E402
from common.config import LOCAL_DEFAULT_MODEL  # noqa: E402
from common.datums import chat_tokens, decode_completion, rollout_datum  # noqa: E402

PROBE_REPEATS = 3
LORA_RANK = train_rl.Config.lora_rank  # the adapter train_rl trains, for the direct SDK loops


@dataclass
class Shape:
    """One RL step's batch, as train_rl's flags spell it."""

    model: str
    batch_size: int
    group_size: int
    max_tokens: int
    pair_counts: str


@dataclass
class KResult:
    k: int
    step_s: float
    sample_s: float
    train_s: float
    engine_busy_s: float  # the server's compute per step, averaged over the whole run
    staleness: float
    min_trained_tokens: int
    timed_steps: list[int]


def rl_config(shape: Shape, k: int, steps: int, log_dir: Path, base_url: str
              ) -> train_rl.Config:
    # The concise bonus from step 1 makes rewards vary by length within a group, so groups
    # rarely tie and steps train; W&B is off so the numbers are the loop's, not tracking's.
    return train_rl.Config(
        backend="local", base_url=base_url, model=shape.model, log_dir=log_dir,
        wandb_mode="disabled", batch_size=shape.batch_size, group_size=shape.group_size,
        max_tokens=shape.max_tokens, pair_counts=shape.pair_counts, max_steps=steps,
        concise_bonus_after=0, eval_problems=0, sample_every=0, save_every=0,
        max_steps_off_policy=k)


def timed_steps(steps: int, k: int) -> list[int]:
    """Steady steps: after step 1 (which waits for the first sampler and fills the pipeline),
    before the last max(k, 1) (which sample nothing ahead, and the last one also saves)."""
    return list(range(2, steps - max(k, 1) + 1))


def run_rl(shape: Shape, k: int, steps: int, latency: float, root: Path) -> KResult:
    """train_rl.main at --max_steps_off_policy k, on its own server with `latency` per call
    (its own, so that the engine's busy time is this run's alone)."""
    log_dir = root / f"k{k}-latency{latency}"
    with local_tinker.embedded(root / "server", latency_s=latency) as (url, server):
        train_rl.main(rl_config(shape, k, steps, log_dir, url))
        busy_s = server.scheduler.busy_s
    history = {row["step"]: row for row in
               map(json.loads, (log_dir / "metrics.jsonl").read_text().splitlines())}
    timed = timed_steps(steps, k)
    untrained = [s for s in timed if history[s].get("tokens/trained", 0) <= 0]
    if untrained:
        sys.exit(f"K={k}: steps {untrained} trained no tokens (every group tied), so they "
                 "cannot be compared with a critical path that trains; try easier "
                 "--pair_counts or a larger --group_size")

    def median(key: str) -> float:
        return statistics.median(history[s].get(key, 0.0) for s in timed)

    return KResult(k, median("time/step"), median("time/sample"), median("time/train"),
                   busy_s / steps, median("rl/staleness"),
                   min(int(history[s]["tokens/trained"]) for s in timed), timed)


def service_times(shape: Shape, latency: float, root: Path) -> tuple[float, float]:
    """Median wall seconds of one step's sampling calls and of its training calls, each alone."""
    task = train_rl.make_task(train_rl.Config(pair_counts=shape.pair_counts))
    with local_tinker.local_service(root / "probe", latency_s=latency) as (service, _):
        trainer = service.create_lora_training_client(shape.model, rank=LORA_RANK,
                                                      seed=0).result()
        tokenizer = trainer.get_tokenizer()
        sampler = trainer.save_weights_and_get_sampling_client().result()
        sample_s, train_s = [], []
        for repeat in range(PROBE_REPEATS + 1):  # the first is a warm-up
            problems = [task.train(0, repeat * shape.batch_size + i)
                        for i in range(shape.batch_size)]
            prompts = [chat_tokens(tokenizer, p.messages, add_generation_prompt=True)
                       for p in problems]
            started = time.perf_counter()
            futures = [sampler.sample(types.ModelInput.from_ints(prompt), shape.group_size,
                                      types.SamplingParams(max_tokens=shape.max_tokens,
                                                           temperature=0.8, seed=i))
                       for i, prompt in enumerate(prompts)]
            groups = [f.result().sequences for f in futures]
            sampled = time.perf_counter()
            rewards = [group_rewards(task, tokenizer, p, group)
                       for p, group in zip(problems, groups, strict=True)]
            fwd_bwd = trainer.forward_backward(kept_datums(prompts, groups, rewards),
                                               "importance_sampling")
            optim = trainer.optim_step(types.AdamParams(learning_rate=2e-4))
            next_sampler = trainer.save_weights_and_get_sampling_client()
            fwd_bwd.result(), optim.result()
            sampler = next_sampler.result()
            if repeat:
                sample_s.append(sampled - started)
                train_s.append(time.perf_counter() - sampled)
    return statistics.median(sample_s), statistics.median(train_s)


def group_rewards(task, tokenizer, problem, sequences) -> list[float]:
    """train_rl's reward (concise bonus on, as in the timed runs) of each sampled sequence."""
    return [task.reward(problem, decode_completion(tokenizer, s.tokens), True)["total"]
            for s in sequences]


def kept_datums(prompts, groups, rewards) -> list[types.Datum]:
    """The datums train_rl would send: groups whose rewards tie are dropped (all are sent if
    every group tied, so that the probe always trains)."""
    adv = compute_advantages(np.array(rewards), "group")
    kept = np.flatnonzero(adv.keep_P) if adv.keep_P.any() else range(len(groups))
    return [rollout_datum(prompts[p], seq.tokens, seq.logprobs, adv.advantages_P_G[p, g] or 1.0)
            for p in kept for g, seq in enumerate(groups[p])]


def seed_step(shape: Shape, latency: float, root: Path) -> float:
    """The seed notebook's step: each problem's samples awaited in turn, then training."""
    task = train_rl.make_task(train_rl.Config(pair_counts=shape.pair_counts))
    with local_tinker.local_service(root / "seed", latency_s=latency) as (service, _):
        trainer = service.create_lora_training_client(shape.model, rank=LORA_RANK,
                                                      seed=0).result()
        tokenizer = trainer.get_tokenizer()
        started = time.perf_counter()
        sampler = trainer.save_weights_and_get_sampling_client().result()
        prompts, groups, rewards = [], [], []
        for i in range(shape.batch_size):
            problem = task.train(0, i)
            prompt = chat_tokens(tokenizer, problem.messages, add_generation_prompt=True)
            group = sampler.sample(types.ModelInput.from_ints(prompt), shape.group_size,
                                   types.SamplingParams(max_tokens=shape.max_tokens,
                                                        temperature=0.8, seed=i)).result()
            prompts.append(prompt)
            groups.append(group.sequences)
            rewards.append(group_rewards(task, tokenizer, problem, group.sequences))
        fwd_bwd = trainer.forward_backward(kept_datums(prompts, groups, rewards),
                                           "importance_sampling")
        optim = trainer.optim_step(types.AdamParams(learning_rate=2e-4))
        fwd_bwd.result(), optim.result()
        return time.perf_counter() - started


def critical_path(k: int, sample_s: float, train_s: float, compute_s: float) -> float:
    """K=0 samples, then trains; K>=1 overlaps them, down to the engine's serial compute."""
    return sample_s + train_s if k == 0 else max(sample_s, train_s, compute_s)


def print_table(results: list[KResult], critical: dict[int, float]) -> None:
    print(f"{'K':>2} {'step s':>7} {'sample s':>8} {'train s':>7} {'engine s':>8} "
          f"{'staleness':>9} {'min trained tok':>15} {'critical s':>10} {'step/critical':>13} "
          f"{'vs K=0':>7}")
    base = next((r.step_s for r in results if r.k == 0), None)
    for r in results:
        speedup = f"{base / r.step_s:>6.2f}x" if base else f"{'-':>7}"
        print(f"{r.k:>2} {r.step_s:>7.2f} {r.sample_s:>8.2f} {r.train_s:>7.2f} "
              f"{r.engine_busy_s:>8.2f} {r.staleness:>9.1f} {r.min_trained_tokens:>15,} "
              f"{critical[r.k]:>10.2f} {r.step_s / critical[r.k]:>12.2f}x {speedup}")


def print_headline(results: list[KResult], critical: dict[int, float]) -> None:
    by_k = {r.k: r for r in results}
    parts = []
    if 0 in by_k:
        parts.append(f"K=0 {by_k[0].step_s / critical[0]:.2f}x its critical path (aim <= 1.2x)")
    if 1 in by_k:
        parts.append(f"K=1 {by_k[1].step_s / critical[1]:.2f}x the overlapped critical path "
                     "(aim <= 1.15x)")
    if 0 in by_k and 1 in by_k:
        parts.append(f"K=1 {by_k[0].step_s / by_k[1].step_s:.2f}x the throughput of K=0 "
                     "(aim >= 1.5x)")
    print("headline: " + "; ".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=4.0, help="seconds per call")
    parser.add_argument("--ks", type=int, nargs="+", default=[0, 1, 2],
                        help="--max_steps_off_policy values to compare")
    parser.add_argument("--steps", type=int, default=7, help="train_rl steps per K")
    parser.add_argument("--model", default=LOCAL_DEFAULT_MODEL,
                        help="a model whose groups tie (tiny-chat) makes the bench fail")
    parser.add_argument("--batch_size", type=int, default=2,
                        help="prompts per step: the local engine's sampling time grows with "
                             "prompts far more than with samples per prompt (measured)")
    parser.add_argument("--group_size", type=int, default=4)
    parser.add_argument("--max_tokens", type=int, default=48)
    parser.add_argument("--pair_counts", default="1", help="easy problems: groups rarely tie")
    parser.add_argument("--no_seed_loop", action="store_true", help="skip the seed's loop")
    parser.add_argument("--torch_threads", type=int, default=1,
                        help="1: on a shared 2-core machine two threads ran 9x slower")
    args = parser.parse_args()
    if args.steps < max(1, *args.ks) + 2:
        parser.error(f"--steps must be >= max(1, --ks) + 2 to time a steady step, "
                     f"got {args.steps}")
    import torch

    torch.set_num_threads(args.torch_threads)  # this process's own torch work
    # The embedded servers' workers set their threads themselves (local_tinker/threads.py).
    os.environ["LOCAL_TINKER_THREADS"] = str(args.torch_threads)
    shape = Shape(args.model, args.batch_size, args.group_size, args.max_tokens, args.pair_counts)
    root = Path(tempfile.mkdtemp(prefix="bench-pipelining-"))
    compute = service_times(shape, 0.0, root)
    sample_s, train_s = service_times(shape, args.latency, root) if args.latency else compute
    print(f"{shape.model}, batch {shape.batch_size} x group {shape.group_size}, up to "
          f"{shape.max_tokens} tokens, problems of {shape.pair_counts} pair(s), "
          f"{args.latency * 1000:.0f} ms per call, {args.torch_threads} torch thread(s)")
    print(f"service alone, median of {PROBE_REPEATS}: sampling {sample_s:.2f} s, training "
          f"{train_s:.2f} s (compute alone: sampling {compute[0]:.2f} s, training "
          f"{compute[1]:.2f} s)")
    critical = {k: critical_path(k, sample_s, train_s, sum(compute)) for k in args.ks}
    results = [run_rl(shape, k, args.steps, args.latency, root) for k in args.ks]
    spans = ", ".join(f"K={r.k}: {r.timed_steps[0]}-{r.timed_steps[-1]}" for r in results)
    print(f"medians over the steady steps ({spans} of {args.steps}); every timed step trained "
          "tokens")
    print_table(results, critical)
    print_headline(results, critical)
    if not args.no_seed_loop:
        seed = seed_step(shape, args.latency, root)
        ours = results[0]
        print(f"seed loop: {seed:.2f} s per step, {seed / ours.step_s:.1f}x K={ours.k}'s "
              f"{ours.step_s:.2f} s")


if __name__ == "__main__":
    main()
