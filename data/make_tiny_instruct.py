"""Make `tiny-instruct`: tiny-math fine-tuned on the task's instructions, the local default model.

The seed's Test 2 starts from an *instruct* model that already follows the system prompt some
of the time: 27% right at step 1, many answers cut off at 256 tokens, and ten RL steps at
lr 2e-4 on a fresh rank-8 LoRA lift it to 75-100%. tiny-math knows the arithmetic but not the
instructions (it answers "Answer: 48", never `<answer>48</answer>`), so from it a fresh LoRA
earns reward 0 and learns nothing. This script gives it the instruct model's habits on the
task, merged into the weights, so that `python train_rl.py --lr 2e-4` learns with no flags:

- data: the task's prompts (system prompt + numbers) with the warm-start solutions of
  `common.arithmetic.solutions_dataset`: answer tags always, a share of answers that open with
  "Let me think about this step by step." and re-check the work until they run past 256
  tokens (cut off: no answer, reward 0), and a share with an arithmetic slip;
- training: every weight of tiny-math (no LoRA, so nothing to merge), loss on the assistant
  turn only, AdamW with warmup and cosine decay.

The result is measured the way train_rl samples (temperature 0.8, up to 256 tokens, the
training reward) on fresh problems, and written to the card with the recipe. Output:
`local_tinker/weights/tiny-instruct.safetensors` (~3.4 MB, fp32) and its `.json` card, in about
7 minutes on 2 CPU cores shared with other jobs (the shipped file was made with
OMP_NUM_THREADS=1; other thread counts give slightly different floats):

    python data/make_tiny_instruct.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

# Run as a plain script from anywhere: put the repository root on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.arithmetic import (  # noqa: E402
    Difficulty,
    build_messages,
    problem_at,
    solutions_dataset,
)
from common.datums import chat_tokens  # noqa: E402
from common.rewards import compute_reward  # noqa: E402
from local_tinker.models import (  # noqa: E402
    TINY_INSTRUCT_WEIGHTS,
    build_tiny_math,
    save_shipped,
    train_every_weight,
)

SEED = 0
EVAL_PREFIX = "tiny-instruct-eval"  # its own problem stream: not training, not held-out
EVAL_PER_PAIR_COUNT = 64
EVAL_TEMPERATURE = 0.8  # train_rl's (the seed's) rollout temperature
EVAL_MAX_TOKENS = 256  # train_rl's (the seed's) completion limit
# Verbose answers are trained on up to this many completion tokens: past 256 nothing reaches the
# task (sampling stops there), and the shorter sequences halve the cost of a step.
TRAIN_COMPLETION_TOKENS = 320


@torch.no_grad()
def sampled_accuracy(model, tokenizer, per_pair_count: int = EVAL_PER_PAIR_COUNT,
                     seed: int = SEED) -> dict[str, dict[int, float]]:
    """Accuracy, answer-tag rate and cut-off rate per pair count, sampled as train_rl does."""
    pad, stop = tokenizer.pad_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")
    result: dict[str, dict[int, float]] = {"accuracy": {}, "format": {}, "clipped": {},
                                           "words": {}}
    for pair_count in Difficulty().pair_counts:
        only = Difficulty((pair_count,))
        problems = [problem_at(EVAL_PREFIX, seed, i, only) for i in range(per_pair_count)]
        prompts = [chat_tokens(tokenizer, build_messages(p), add_generation_prompt=True)
                   for p in problems]
        width = max(map(len, prompts))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + pair_count)
            out = model.generate(input_ids=ids, attention_mask=(ids != pad).long(),
                                 max_new_tokens=EVAL_MAX_TOKENS, do_sample=True,
                                 temperature=EVAL_TEMPERATURE, top_k=0, top_p=1.0,
                                 eos_token_id=stop, pad_token_id=pad)
        completions = out[:, width:].tolist()
        texts = [tokenizer.decode(c, skip_special_tokens=True) for c in completions]
        rewards = [compute_reward(t, p.answer) for p, t in zip(problems, texts, strict=True)]
        n = len(problems)
        result["accuracy"][pair_count] = round(sum(r["correct"] > 0 for r in rewards) / n, 3)
        result["format"][pair_count] = round(sum(r["format"] > 0 for r in rewards) / n, 3)
        result["clipped"][pair_count] = round(sum(stop not in c for c in completions) / n, 3)
        result["words"][pair_count] = round(sum(len(t.split()) for t in texts) / n, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch_size", type=int, default=16, help="conversations per step")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--verbose_rate", type=float, default=0.6,
                        help="share of answers that re-check their work past 256 tokens")
    parser.add_argument("--error_rate", type=float, default=0.1,
                        help="share of answers with an arithmetic slip")
    parser.add_argument("--eval_per_pair_count", type=int, default=EVAL_PER_PAIR_COUNT,
                        help="fresh problems per pair count for the card's measurement")
    parser.add_argument("--out", type=Path, default=TINY_INSTRUCT_WEIGHTS)
    args = parser.parse_args()

    base = build_tiny_math()  # the arithmetic-pretrained network this model starts from
    model, tokenizer = base.fresh_copy().train(), base.tokenizer
    pad = tokenizer.pad_token_id
    rows = solutions_dataset(args.steps * args.batch_size, SEED, Difficulty(),
                             error_rate=args.error_rate, verbose_rate=args.verbose_rate)

    def batch_at(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        batch = rows[step * args.batch_size:(step + 1) * args.batch_size]
        prompt_lens = [len(chat_tokens(tokenizer, r["messages"][:-1], add_generation_prompt=True))
                       for r in batch]
        full = [chat_tokens(tokenizer, r["messages"], add_generation_prompt=False)[
                    :n + TRAIN_COMPLETION_TOKENS] for r, n in zip(batch, prompt_lens, strict=True)]
        width = max(map(len, full))
        # Loss on the assistant turn only (its <|im_end|> included), as train_sft's datums.
        return (torch.tensor([t + [pad] * (width - len(t)) for t in full]),
                torch.tensor([[-100] * n + t[n:] + [-100] * (width - len(t))
                              for t, n in zip(full, prompt_lens, strict=True)]))

    def report(step: int, loss: float) -> None:
        print(f"step {step}/{args.steps}  loss {loss:.3f}  {time.monotonic() - started:.0f}s",
              flush=True)

    torch.manual_seed(SEED)
    started = time.monotonic()
    final_loss = train_every_weight(model, args.steps, args.lr, min(30, args.steps), batch_at,
                                    report, report_every=10)

    model.eval()
    measured = sampled_accuracy(model, tokenizer, args.eval_per_pair_count)
    print(f"sampled at T={EVAL_TEMPERATURE}, {EVAL_MAX_TOKENS} tokens: {measured}", flush=True)

    card = {
        "made_by": "data/make_tiny_instruct.py",
        "starts_from": "tiny-math",
        "data": {"dataset": "arithmetic-solutions (common.arithmetic.solutions_dataset)",
                 "rows": len(rows), "seed": SEED, "verbose_rate": args.verbose_rate,
                 "error_rate": args.error_rate},
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": SEED,
        "trained": "every weight (full fine-tune; nothing to merge)",
        "train_completion_tokens": TRAIN_COMPLETION_TOKENS,
        "torch_threads": torch.get_num_threads(),
        "final_loss": round(final_loss, 4),
        "sampled": {"temperature": EVAL_TEMPERATURE, "max_tokens": EVAL_MAX_TOKENS,
                    "problems_per_pair_count": args.eval_per_pair_count, **measured},
        "seconds": round(time.monotonic() - started),
        "torch": torch.__version__,
    }
    save_shipped(model, args.out, card)


if __name__ == "__main__":
    main()
