"""How close one RL step of train_rl.py comes to the critical path against a slow service.

The local backend with an injected per-call latency stands in for Tinker: every call resolves no
sooner than LATENCY after it was submitted, and round trips of concurrent calls overlap, as
network round trips do. Compute is kept tiny (tiny-chat, 8-token completions) so the round trips
dominate. For batch sizes 4, 8 and 16 (group size 4) this measures, in one process:

- ours: the wall time of step 2 of `train_rl.main` (its own `time/step`; step 1 also waits for
  the first sampling client, which later steps get while they train);
- seed: the seed notebook's loop on the same backend: one `.result()` per problem's samples,
  then forward_backward and optim_step submitted together and waited on;
- critical: the round trips a step cannot avoid doing in sequence, as the issue states them:
  save weights -> sampler, all samples, forward_backward + optim_step: 3 x latency;
- compute: the same step with no latency (what the local engine itself costs).

    python bench/pipelining.py                # about two minutes on 2 cores
    python bench/pipelining.py --latency 0.5 --batch_sizes 8
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from tinker import types  # noqa: E402

import local_tinker  # noqa: E402
import train_rl  # noqa: E402
from common.advantages import compute_advantages  # noqa: E402
from common.datums import chat_tokens, rollout_datum  # noqa: E402
from common.tasks import ARITHMETIC  # noqa: E402

GROUP, MAX_TOKENS = 4, 8


def ours(batch_size: int, latency: float, root: Path) -> float:
    """`time/step` of step 2 of train_rl.main (of 3; the last step also saves)."""
    import os

    os.environ["LOCAL_TINKER_LATENCY_S"] = str(latency)
    log_dir = root / f"ours-{batch_size}-{latency}"
    train_rl.main(train_rl.Config(
        backend="local", log_dir=log_dir, wandb_mode="disabled", batch_size=batch_size,
        group_size=GROUP, max_tokens=MAX_TOKENS, max_steps=3, concise_bonus_after=0,
        eval_problems=0, sample_every=0, save_every=0))
    second = json.loads((log_dir / "metrics.jsonl").read_text().splitlines()[1])
    return second["time/step"]


def seed_loop(batch_size: int, latency: float, root: Path) -> float:
    """The seed notebook's step: each problem's samples waited on in turn."""
    with local_tinker.local_service(root, latency_s=latency) as (service, _):
        return seed_step(service, batch_size)


def seed_step(service, batch_size: int) -> float:
    trainer = service.create_lora_training_client("tiny-chat", rank=8, seed=0).result()
    tokenizer = trainer.get_tokenizer()
    started = time.perf_counter()
    sampler = trainer.save_weights_and_get_sampling_client().result()
    rollouts = []
    for i in range(batch_size):
        problem = ARITHMETIC.sample(0, i)
        prompt = chat_tokens(tokenizer, ARITHMETIC.messages(problem), add_generation_prompt=True)
        response = sampler.sample(types.ModelInput.from_ints(prompt), GROUP, types.SamplingParams(
            max_tokens=MAX_TOKENS, temperature=0.8, seed=i)).result()
        rollouts.append((prompt, response.sequences))
    rewards = np.array([[len(s.tokens) for s in seqs] for _, seqs in rollouts], dtype=float)
    advantages = compute_advantages(rewards + np.arange(GROUP), "group").advantages_P_G
    data = [rollout_datum(p, s.tokens, s.logprobs, advantages[i, g])
            for i, (p, seqs) in enumerate(rollouts) for g, s in enumerate(seqs)]
    fwd_bwd = trainer.forward_backward(data, "importance_sampling")
    optim = trainer.optim_step(types.AdamParams(learning_rate=1e-4))
    fwd_bwd.result(), optim.result()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[4, 8, 16])
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-pipelining-"))
    ours(2, 0.0, root)  # warm-up: model build, imports
    print(f"one RL step, group size {GROUP}, {MAX_TOKENS}-token completions, "
          f"{args.latency * 1000:.0f} ms per call")
    print(f"{'batch':>5} {'ours s':>7} {'seed s':>7} {'critical s':>10} {'compute s':>9} "
          f"{'ours/critical':>13} {'seed/ours':>9}")
    ratios = {}
    for batch_size in args.batch_sizes:
        compute = ours(batch_size, 0.0, root)
        critical = 3 * args.latency
        mine = ours(batch_size, args.latency, root)
        seed = seed_loop(batch_size, args.latency, root)
        ratios[batch_size] = (mine / critical, seed / mine)
        print(f"{batch_size:>5} {mine:>7.2f} {seed:>7.2f} {critical:>10.2f} {compute:>9.2f} "
              f"{mine / critical:>12.2f}x {seed / mine:>8.1f}x")
    batch = 8 if 8 in ratios else args.batch_sizes[0]
    print(f"headline (batch {batch}): {ratios[batch][0]:.2f}x the critical path, "
          f"{ratios[batch][1]:.1f}x faster than the seed's sequential loop")


if __name__ == "__main__":
    main()
