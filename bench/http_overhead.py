"""What serving the local backend over HTTP costs: per call, and per training step.

Per call (tiny-chat, one process, one server): the SDK's round trip through HTTP against the
same runtime call made directly on the server's worker thread (the thread the HTTP path
computes on, so both sides run with the same torch threads: an earlier version called the
runtime from the main thread, whose torch threads differed, and printed "overhead -220 ms").
Calls: forward_backward (16 chat datums), optim_step (after a forward_backward, so there are
gradients to apply), sample (4 prompts x 4 samples x 16 tokens). Each side is warmed up, then
the sides alternate call by call for --calls rounds; the overhead is the median of the paired
differences with their IQR, refused when negative or lost in the noise (bench/guards.py).

Per step: train_sft.py and train_rl.py through the SDK; each step's median wall time
(`time/step`) and the share of it the per-call overheads account for.

    python bench/http_overhead.py              # about two minutes on 2 idle cores
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tinker import types  # noqa: E402

import local_tinker  # noqa: E402
from bench.guards import Spread, alternate, load_note, on_worker, overhead, timed  # noqa: E402
from common.arithmetic import TRAIN_STREAM, build_messages, problem_at  # noqa: E402
from common.datums import chat_tokens, conversation_datum  # noqa: E402
from local_tinker.engine import SampleRequest  # noqa: E402


def per_call(rounds: int) -> dict[str, dict[str, list[float]]]:
    root = Path(tempfile.mkdtemp(prefix="bench-http-"))
    with local_tinker.local_service(root) as (service, server):
        runtime = server.runtime
        trainer = service.create_lora_training_client("tiny-chat", rank=8, seed=0).result()
        model_id = trainer.model_id
        tokenizer = trainer.get_tokenizer()
        data = [conversation_datum(tokenizer, [{"role": "user", "content": f"question {i}?"},
                                               {"role": "assistant", "content": "foo"}], 512)
                for i in range(16)]
        fwd = types.ForwardBackwardInput(data=data, loss_fn="cross_entropy")
        adam = types.AdamParams(learning_rate=0.0)  # the weights stay put between rounds
        prompts = [chat_tokens(tokenizer, build_messages(problem_at(TRAIN_STREAM, 0, i)), True)
                   for i in range(4)]
        params = types.SamplingParams(max_tokens=16, temperature=1.0, seed=0)
        sampler = trainer.save_weights_and_get_sampling_client().result()
        sampler_id = next(iter(runtime.samplers))
        requests = [SampleRequest(p, 4, params, 0) for p in prompts]

        def direct(call: Callable[[], Any], lane: str = model_id) -> Callable[[], Any]:
            return lambda: on_worker(server, lane, call)

        def then_time(prepare: Callable[[], Any], call: Callable[[], Any]) -> Callable[[], float]:
            return lambda: (prepare(), timed(call))[1]

        fb_direct = direct(lambda: runtime.forward_backward(model_id, fwd, True))
        return {
            "forward_backward": alternate({
                "http": lambda: timed(lambda: trainer.forward_backward(
                    data, "cross_entropy").result()),
                "direct": lambda: timed(fb_direct)}, rounds),
            "optim_step": alternate({
                "http": then_time(fb_direct, lambda: trainer.optim_step(adam).result()),
                "direct": then_time(fb_direct, direct(lambda: runtime.optim_step(model_id,
                                                                                 adam)))},
                rounds),
            "sample (4 prompts)": alternate({
                "http": lambda: timed(lambda: [f.result() for f in [
                    sampler.sample(types.ModelInput.from_ints(p), 4, params)
                    for p in prompts]]),
                "direct": lambda: timed(direct(lambda: runtime.sample(sampler_id, requests),
                                               sampler_id))}, rounds),
        }


def per_step(script: str, steps: int) -> list[float]:
    """time/step of every step of a script run through the SDK, against a server started here
    (the script reaches it with --base_url, as a second terminal would)."""
    root = Path(tempfile.mkdtemp(prefix=f"bench-{script}-"))
    module = __import__(script)
    with local_tinker.embedded(root / "checkpoints") as (url, _):
        module.main(module.Config(backend="local", base_url=url, log_dir=root / "run",
                                  wandb_mode="disabled", max_steps=steps, save_every=0,
                                  sample_every=0))
    rows = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    return [r["time/step"] for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=30, help="alternated rounds per call")
    parser.add_argument("--steps", type=int, default=10, help="train_sft steps (0: skip)")
    parser.add_argument("--rl_steps", type=int, default=3, help="train_rl steps (0: skip)")
    args = parser.parse_args()
    if min(args.calls, args.steps, args.rl_steps) < 0 or args.calls < 2:
        parser.error("--calls must be >= 2, --steps and --rl_steps >= 0")
    print(f"per call, tiny-chat, {args.calls} alternated rounds after a warm-up; {load_note()}")
    calls = per_call(args.calls)
    print(f"{'call':20}{'http median':>12}{'direct median':>14}{'http IQR':>15}"
          f"{'direct IQR':>15}   overhead (paired)")
    for name, sides in calls.items():
        http, direct = Spread.of(sides["http"]), Spread.of(sides["direct"])
        print(f"{name:20}{http.median * 1e3:>10.1f}ms{direct.median * 1e3:>12.1f}ms"
              f"{f'{http.low * 1e3:.1f}..{http.high * 1e3:.1f}':>15}"
              f"{f'{direct.low * 1e3:.1f}..{direct.high * 1e3:.1f}':>15}   "
              f"{overhead(sides['http'], sides['direct']).text}")
    print(f"\nper step, through the SDK (first step left out); {load_note()}")
    print(f"{'script':12}{'step':>9}   HTTP cost of its calls (from the paired overheads above)")
    # SFT: forward_backward + optim_step; RL: the same plus two sampling rounds.
    script_calls = {"train_sft": ["forward_backward", "optim_step"],
                    "train_rl": ["forward_backward", "optim_step", "sample (4 prompts)",
                                 "sample (4 prompts)"]}
    for script, steps in (("train_sft", args.steps), ("train_rl", args.rl_steps)):
        if not steps:
            continue
        step_s = per_step(script, steps)
        step = statistics.median(step_s[1:] or step_s)
        verdicts = [overhead(calls[name]["http"], calls[name]["direct"])
                    for name in script_calls[script]]
        if any(v.refused for v in verdicts):
            share = "not computed: a call's overhead was refused above"
        else:
            cost = sum(v.value or 0.0 for v in verdicts)
            share = f"{cost * 1e3:.1f} ms, {cost / step:.1%} of the step"
        print(f"{script:12}{step * 1e3:>7.0f}ms   {share}")
    print(f"{load_note()} at the end")


if __name__ == "__main__":
    main()
