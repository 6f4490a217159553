"""What serving the local backend over HTTP costs: per call, and per training step.

Per call (tiny-chat, one process, the same server): the SDK's round trip through HTTP against
calling the server's runtime directly, for forward_backward (16 chat datums), optim_step and
sample (4 prompts x 4 samples x 16 tokens), median and p95 of --calls calls each.

Per step: train_sft.py and train_rl.py run through the SDK for --steps steps; each step's wall
time (`time/step`) beside the time the server's worker spent computing, and the HTTP overhead
the per-call numbers predict for the step's calls.

    python bench/http_overhead.py              # about two minutes on 2 idle cores
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tinker import types  # noqa: E402

import local_tinker  # noqa: E402
from common.datums import chat_tokens, conversation_datum  # noqa: E402
from common.tasks import ARITHMETIC  # noqa: E402


def timings(call, n: int) -> tuple[float, float]:
    call()  # warm-up
    seconds = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    seconds.sort()
    return statistics.median(seconds), seconds[int(0.95 * (len(seconds) - 1))]


def per_call(n: int) -> dict[str, tuple[tuple[float, float], tuple[float, float]]]:
    root = Path(tempfile.mkdtemp(prefix="bench-http-"))
    with local_tinker.local_service(root) as (service, server):
        runtime = server.runtime
        trainer = service.create_lora_training_client("tiny-chat", rank=8, seed=0).result()
        tokenizer = trainer.get_tokenizer()
        data = [conversation_datum(tokenizer, [{"role": "user", "content": f"question {i}?"},
                                               {"role": "assistant", "content": "foo"}], 512)
                for i in range(16)]
        fwd = types.ForwardBackwardInput(data=data, loss_fn="cross_entropy")
        adam = types.AdamParams(learning_rate=0.0)
        prompts = [types.ModelInput.from_ints(chat_tokens(
            tokenizer, ARITHMETIC.messages(ARITHMETIC.sample(0, i)), add_generation_prompt=True))
            for i in range(4)]
        params = types.SamplingParams(max_tokens=16, temperature=1.0, seed=0)
        sampler = trainer.save_weights_and_get_sampling_client().result()
        sampler_id = next(iter(runtime.samplers))
        from local_tinker.engine import SampleRequest

        requests = [SampleRequest(p.to_ints(), 4, params, 0) for p in prompts]
        return {
            "forward_backward": (
                timings(lambda: trainer.forward_backward(data, "cross_entropy").result(), n),
                timings(lambda: runtime.forward_backward(trainer.model_id, fwd, True), n)),
            "optim_step": (
                timings(lambda: trainer.optim_step(adam).result(), n),
                timings(lambda: runtime.optim_step(trainer.model_id, adam), n)),
            "sample (4 prompts)": (
                timings(lambda: [f.result() for f in [sampler.sample(p, 4, params)
                                                      for p in prompts]], n),
                timings(lambda: runtime.sample(sampler_id, requests), n)),
        }


def per_step(script: str, steps: int) -> tuple[float, float]:
    """(median time/step, server compute per step) of a script run through the SDK, against a
    server started here (the script reaches it with --base_url, as a second terminal would)."""
    root = Path(tempfile.mkdtemp(prefix=f"bench-{script}-"))
    module = __import__(script)
    with local_tinker.embedded(root / "checkpoints") as (url, server):
        config = module.Config(backend="local", base_url=url, log_dir=root / "run",
                               wandb_mode="disabled", max_steps=steps, save_every=0,
                               sample_every=0)
        busy_before = server.scheduler.busy_s
        module.main(config)
        busy = server.scheduler.busy_s - busy_before
    rows = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["time/step"] for r in rows), busy / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    calls = per_call(args.calls)
    print(f"per call, tiny-chat, {args.calls} calls each ({os.cpu_count()} cores)")
    print(f"{'call':22}{'http median':>12}{'direct median':>14}{'http p95':>10}"
          f"{'direct p95':>11}{'overhead':>10}")
    overhead = {}
    for name, ((http_med, http_p95), (direct_med, direct_p95)) in calls.items():
        overhead[name] = http_med - direct_med
        print(f"{name:22}{http_med * 1e3:>10.1f}ms{direct_med * 1e3:>12.1f}ms"
              f"{http_p95 * 1e3:>8.1f}ms{direct_p95 * 1e3:>9.1f}ms{overhead[name] * 1e3:>8.1f}ms")
    print(f"\nper step, {args.steps} steps through the SDK")
    print(f"{'script':12}{'step':>9}{'compute':>10}{'http (calls x overhead)':>26}{'share':>8}")
    for script in ("train_sft", "train_rl"):
        step, busy = per_step(script, args.steps)
        # SFT: forward_backward + optim_step (+ a sampler snapshot); RL: the same plus sampling.
        predicted = overhead["forward_backward"] + 2 * overhead["optim_step"]
        if script == "train_rl":
            predicted += 2 * overhead["sample (4 prompts)"]
        print(f"{script:12}{step * 1e3:>7.0f}ms{busy * 1e3:>8.0f}ms{predicted * 1e3:>24.1f}ms"
              f"{predicted / step:>8.1%}")


if __name__ == "__main__":
    main()
