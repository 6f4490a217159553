"""Pretrain `tiny-math`: the tiny-chat network with every weight trained on worked arithmetic.

A randomly initialised tiny-chat with LoRA never learns to read the numbers of a problem in the
few minutes a local RL demo has (see the README), so the local RL pipeline needs what Tinker's
base models already have: a pretrained base that knows some arithmetic. This script writes it.

The corpus: documents of three problems from the task's default difficulty, each written as
plain text or, every other one, as a chat exchange (user turn: the numbers), without answer
tags and without the task's system prompt:

    3, 5, 2, 4
    Add pairs: 3+5=8, 2+4=6
    Multiply: 8×6=48
    Answer: 48

So tiny-math is to this task roughly what an instruct model is to Tinker's users: it knows the
chat format and the arithmetic, not the task's instructions. Several problems per document
teach it to work on the *latest* list of numbers whatever came before, which is what it meets
behind the task's system prompt (whose worked example has numbers of its own). The system
prompt, `<answer>` tags and the warm start's habits are left to SFT; fixing those habits, to RL.

The output (`local_tinker/weights/tiny-math.safetensors`, ~3.4 MB, fp32) is shipped; this
script documents and reproduces it (about 18 minutes on 2 CPU cores):

    python data/make_tiny_math.py [--steps 1600]
"""

import argparse
import sys
import time
from pathlib import Path

import torch

# Run as a plain script from anywhere: put the repository root on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.arithmetic import (  # noqa: E402
    Difficulty,
    Problem,
    problem_at,
    work_lines,
)
from local_tinker.models import (  # noqa: E402
    TINY_MATH_WEIGHTS,
    build_tiny_chat,
    save_shipped,
    train_every_weight,
)

SEED = 0
CORPUS_PREFIX = "tiny-math-corpus"  # its own problem stream, unrelated to training and held-out
PROBLEMS_PER_DOCUMENT = 3
EVAL_PER_PAIR_COUNT = 50


def plain_solution(problem: Problem) -> str:
    """The corpus form of one problem: numbers, the two steps, the answer."""
    lines = [", ".join(map(str, problem.numbers)),
             *work_lines(problem.numbers, problem.sums, problem.answer),
             f"Answer: {problem.answer}"]
    return "\n".join(lines) + "\n"


def chat_solution(problem: Problem) -> str:
    """The same solution as a chat exchange: the numbers as the user turn, as the task asks."""
    numbers, _, steps = plain_solution(problem).partition("\n")
    return (f"<|im_start|>user\n{numbers}<|im_end|>\n"
            f"<|im_start|>assistant\n{steps.rstrip()}<|im_end|>\n")


def document(index: int) -> str:
    """Problems of the corpus, each as plain text or (every other one) as a chat exchange."""
    first = index * PROBLEMS_PER_DOCUMENT
    parts = []
    for k in range(first, first + PROBLEMS_PER_DOCUMENT):
        problem = problem_at(CORPUS_PREFIX, SEED, k, Difficulty())
        parts.append(chat_solution(problem) if k % 2 else plain_solution(problem))
    return "\n".join(parts)


@torch.no_grad()
def plain_accuracy(model, tokenizer) -> dict[int, float]:
    """Greedy accuracy on fresh problems in the corpus format, per pair count."""
    pad = tokenizer.pad_token_id
    scores = {}
    for pair_count in Difficulty().pair_counts:
        only = Difficulty((pair_count,))
        problems = [problem_at("tiny-math-eval", SEED, i, only)
                    for i in range(EVAL_PER_PAIR_COUNT)]
        prompts = [tokenizer(", ".join(map(str, p.numbers)) + "\n")["input_ids"] for p in problems]
        width = max(map(len, prompts))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = (ids != pad).long()
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=80,
                             do_sample=False, pad_token_id=pad)
        texts = tokenizer.batch_decode(out[:, width:])
        correct = sum(f"Answer: {p.answer}\n" in t.split("\n\n")[0] + "\n"
                      for p, t in zip(problems, texts, strict=True))
        scores[pair_count] = correct / len(problems)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1600)
    parser.add_argument("--batch_size", type=int, default=32, help="documents per step")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--out", type=Path, default=TINY_MATH_WEIGHTS)
    args = parser.parse_args()

    base = build_tiny_chat()  # the tiny-chat network and its fixed-seed initial weights
    model, tokenizer = base.fresh_copy().train(), base.tokenizer
    pad = tokenizer.pad_token_id

    def batch_at(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        docs = [tokenizer(document(step * args.batch_size + i))["input_ids"] + [pad]
                for i in range(args.batch_size)]
        width = max(map(len, docs))
        return (torch.tensor([d + [pad] * (width - len(d)) for d in docs]),
                torch.tensor([d + [-100] * (width - len(d)) for d in docs]))

    accuracy: dict[int, float] = {}

    def report(step: int, loss: float) -> None:
        model.eval()
        accuracy.update(plain_accuracy(model, tokenizer))
        model.train()
        print(f"step {step}/{args.steps}  loss {loss:.3f}  greedy accuracy by pair count "
              f"{accuracy}  {time.monotonic() - started:.0f}s", flush=True)

    started = time.monotonic()
    final_loss = train_every_weight(model, args.steps, args.lr, min(100, args.steps), batch_at,
                                    report, report_every=250)

    card = {
        "made_by": "data/make_tiny_math.py",
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": SEED,
        "problems_seen": args.steps * args.batch_size * PROBLEMS_PER_DOCUMENT,
        "final_loss": round(final_loss, 4),
        "greedy_accuracy_plain_format": accuracy,
        "seconds": round(time.monotonic() - started),
        "torch": torch.__version__,
    }
    save_shipped(model, args.out, card)


if __name__ == "__main__":
    main()
