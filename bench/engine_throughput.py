"""Local engine speed on tiny-chat against plain transformers / PyTorch + peft baselines.

Sampling: one RL step's worth (8 problems x 8 samples, up to 256 tokens at temperature 0.8)
through `SamplingClient.sample` (eight requests submitted together, batched by the worker)
against one `model.generate` call on the same model and the same 64 left-padded prompts.
Training: `forward_backward` + `optim_step` on the 64 resulting RL datums (importance sampling)
against a plain loop on an identical LoRA model: one padded forward, the same per-token loss,
backward, AdamW step. Tokens per second each way, best of `--repeats`, in one process.

    python bench/engine_throughput.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tinker import types  # noqa: E402

import local_tinker  # noqa: E402
from common.datums import chat_tokens, rollout_datum  # noqa: E402
from common.tasks import ARITHMETIC  # noqa: E402

PROBLEMS, GROUP, MAX_TOKENS, TEMPERATURE = 8, 8, 256, 0.8


def best_of(repeats: int, run) -> tuple[float, int]:
    """(fastest seconds, tokens) over `repeats` runs."""
    results = [run() for _ in range(repeats)]
    return min(r[0] for r in results), results[0][1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    with local_tinker.local_service(tempfile.mkdtemp(prefix="bench-engine-")) as (service, server):
        measure(args.repeats, service, server.runtime)


def measure(repeats: int, service, runtime) -> None:
    """Through the SDK and the local server, against torch on the same weights in-process."""
    trainer = service.create_lora_training_client("tiny-chat", rank=32, seed=0).result()
    tokenizer = trainer.get_tokenizer()
    sampler = trainer.save_weights_and_get_sampling_client().result()
    prompts = [chat_tokens(tokenizer, ARITHMETIC.messages(ARITHMETIC.sample(0, i)), True)
               for i in range(PROBLEMS)]
    params = types.SamplingParams(max_tokens=MAX_TOKENS, temperature=TEMPERATURE)
    trained = runtime.models[trainer.model_id]
    model = trained.model  # the same weights for the baselines
    stop_ids = trained.base.stop_token_ids

    def ours_sample():
        started = time.perf_counter()
        futures = [sampler.sample(types.ModelInput.from_ints(p), GROUP,
                                  params.model_copy(update={"seed": i}))
                   for i, p in enumerate(prompts)]
        responses = [f.result() for f in futures]
        return time.perf_counter() - started, sum(len(s.tokens) for r in responses
                                                  for s in r.sequences)

    def plain_generate():
        rows = [p for p in prompts for _ in range(GROUP)]
        width = max(map(len, rows))
        ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        started = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True,
                                 temperature=TEMPERATURE, top_k=0, max_new_tokens=MAX_TOKENS,
                                 eos_token_id=list(stop_ids),
                                 pad_token_id=tokenizer.pad_token_id)
        new = out[:, width:]
        stops = torch.isin(new, torch.tensor(list(stop_ids)))
        # Tokens up to and including the first stop token, as the engine counts them.
        lengths = torch.where(stops.any(1), stops.int().argmax(1) + 1, new.shape[1])
        return time.perf_counter() - started, int(lengths.sum())

    sample_ours = best_of(repeats, ours_sample)
    sample_plain = best_of(repeats, plain_generate)

    responses = [f.result() for f in [sampler.sample(types.ModelInput.from_ints(p), GROUP,
                                                     params.model_copy(update={"seed": i}))
                                      for i, p in enumerate(prompts)]]
    rng = np.random.default_rng(0)
    data = [rollout_datum(p, s.tokens, s.logprobs, float(rng.normal()))
            for p, r in zip(prompts, responses, strict=True) for s in r.sequences if s.tokens]
    train_tokens = sum(d.model_input.length for d in data)

    def ours_train():
        started = time.perf_counter()
        trainer.forward_backward(data, "importance_sampling")
        trainer.optim_step(types.AdamParams(learning_rate=1e-5)).result()
        return time.perf_counter() - started, train_tokens

    baseline = runtime.models[service.create_lora_training_client(
        "tiny-chat", rank=32, seed=0).result().model_id].model
    optimizer = torch.optim.AdamW([p for p in baseline.parameters() if p.requires_grad],
                                  lr=1e-5, betas=(0.9, 0.95), eps=1e-12, weight_decay=0.0)
    inputs = [d.model_input.to_ints() for d in data]
    width = max(map(len, inputs))
    ids = torch.tensor([x + [0] * (width - len(x)) for x in inputs])
    targets = torch.tensor([d.loss_fn_inputs["target_tokens"].to_numpy().tolist()
                            + [0] * (width - d.model_input.length) for d in data])
    sampled = torch.tensor(np.stack([np.pad(d.loss_fn_inputs["logprobs"].to_numpy(),
                                            (0, width - d.model_input.length)) for d in data]))
    advantages = torch.tensor(np.stack([np.pad(d.loss_fn_inputs["advantages"].to_numpy(),
                                               (0, width - d.model_input.length)) for d in data]))

    def plain_train():
        started = time.perf_counter()
        logits = baseline(input_ids=ids).logits.float()
        logprobs = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
        loss = -(torch.exp(logprobs - sampled) * advantages).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started, train_tokens

    train_ours = best_of(repeats, ours_train)
    train_plain = best_of(repeats, plain_train)

    print(f"tiny-chat, {PROBLEMS} problems x {GROUP} samples, up to {MAX_TOKENS} tokens, "
          f"{torch.get_num_threads()} threads")
    print(f"{'':34}{'ours tok/s':>12}{'plain tok/s':>13}{'ratio':>8}")
    rows = [("sampling (vs model.generate)", sample_ours, sample_plain),
            ("train step (vs torch+peft loop)", train_ours, train_plain)]
    for name, (t_ours, n_ours), (t_plain, n_plain) in rows:
        print(f"{name:34}{n_ours / t_ours:>12,.0f}{n_plain / t_plain:>13,.0f}"
              f"{(n_ours / t_ours) / (n_plain / t_plain):>7.2f}x")
    ratios = [(n1 / t1) / (n2 / t2) for _, (t1, n1), (t2, n2) in rows]
    print(f"headline: sampling {ratios[0]:.2f}x and training {ratios[1]:.2f}x the plain baselines")


if __name__ == "__main__":
    main()
