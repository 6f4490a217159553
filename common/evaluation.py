"""Scoring sampled answers on held-out data, and the numbers an evaluation reports.

- `score_problems`: one sampled answer per held-out problem of a task, rewarded by the task's
  reward (the training reward); `summarize`: accuracy with a Wilson 95% interval (a held-out set
  of a few hundred problems leaves several points of sampling noise), reward means, lengths, and
  accuracy per slice of the task (pair count, a reasoning-gym difficulty knob).
- `score_chat` / `summarize_chat`: held-out NLL per reference token (teacher-forced through
  `compute_logprobs`) and the exact-match rate of a sampled answer, for SFT chat data.

Requests go out a chunk ahead of the results being read (`in_flight`): on Tinker every call is a
network round trip, so waiting in between would cost one round trip per problem, while submitting
everything at once makes a batching sampler answer nothing until it has answered everything.
Used by evaluate.py and, for periodic held-out accuracy, by train_rl.py.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from tqdm import tqdm

from common.backend import types
from common.datums import chat_tokens, conversation_datum, decode_completion
from common.seeding import derive_seed
from common.tasks import Problem, Task, solved
from common.tracking import PROGRESS_REDRAW_S

T = TypeVar("T")
IN_FLIGHT_CHUNK = 32
"""Requests per chunk in flight. The local sampler batches what is queued, so a chunk is one
generation batch; two chunks out keep it busy while the previous chunk's results are read."""


def spread(items: Sequence[T], n: int) -> list[T]:
    """`n` items spread evenly over `items` (a held-out file sorted by difficulty must not give
    its first N, all of one difficulty)."""
    n = min(n, len(items))
    return [items[i * len(items) // n] for i in range(n)]


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (z=1.96: 95%); n=0 gives (0, 1). Unlike
    the normal approximation it stays inside [0, 1] and is not zero-width at 0/n or n/n."""
    if n == 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    p = successes / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, center - half), min(1.0, center + half)  # exactly 0 / 1 up to rounding


def problem_params(params: types.SamplingParams, index: int) -> types.SamplingParams:
    """`params` with a seed of its own for problem `index`, so a problem's answer does not
    depend on which other problems share its batch (unchanged when params.seed is None)."""
    if params.seed is None:
        return params
    return params.model_copy(update={"seed": derive_seed("eval", params.seed, index)})


F = TypeVar("F")


def in_flight(submit: Callable[[int], F], n: int, chunk: int = IN_FLIGHT_CHUNK) -> Iterator[F]:
    """`submit(0)`, ..., `submit(n - 1)` in order, each yielded for the caller to await, with
    the next chunk already queued while one is read."""
    pending: deque[F] = deque()
    submitted = 0
    for index in range(n):
        if index % chunk == 0:  # the previous chunk has been read: queue the one after next
            while submitted < min(n, index + 2 * chunk):
                pending.append(submit(submitted))
                submitted += 1
        yield pending.popleft()


def progress_bar(n: int, show: bool) -> tqdm:
    """A bar over `n` results; smoothing=0 keeps rate and ETA honest for bursts of a chunk."""
    return tqdm(total=n, desc="eval", disable=not show, dynamic_ncols=True, smoothing=0,
                mininterval=PROGRESS_REDRAW_S)


def score_problems(sampling_client: Any, tokenizer: Any, problems: Sequence[Problem],
                   params: types.SamplingParams, task: Task, concise_bonus: bool = False,
                   progress: bool = False) -> list[dict[str, Any]]:
    """One sampled answer per problem, scored with the task's reward; one row per problem."""
    prompts_P = [chat_tokens(tokenizer, p.messages, add_generation_prompt=True)
                 for p in problems]
    futures_P = in_flight(lambda i: sampling_client.sample(
        types.ModelInput.from_ints(prompts_P[i]), 1, problem_params(params, i)), len(problems))
    rows = []
    with progress_bar(len(problems), progress) as bar:
        for problem, future in zip(problems, futures_P, strict=True):
            sequence = future.result().sequences[0]
            completion = decode_completion(tokenizer, sequence.tokens)
            reward = task.reward(problem, completion, concise_bonus)
            rows.append({"prompt": problem.messages[-1]["content"], "answer": problem.answer,
                         "completion": completion, "part": problem.part,
                         **{f"reward_{k}": v for k, v in reward.items() if k != "total"},
                         "reward": reward["total"], "correct": solved(reward),
                         "words": len(completion.split()), "tokens": len(sequence.tokens),
                         "stop_reason": sequence.stop_reason})
            bar.update()
    return rows


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def accuracy(correct: Sequence[bool]) -> dict[str, float]:
    """Share correct, its Wilson 95% interval, and n."""
    low, high = wilson_interval(sum(correct), len(correct))
    return {"accuracy": _mean([float(c) for c in correct]), "low": low, "high": high,
            "n": len(correct)}


def part_order(part: str) -> list[Any]:
    """Natural order for slice names: "2 pairs" before "10 pairs", "num_terms=3" before 12."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", part)]


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy with its interval (when the reward has a `correct` part), reward means per
    part, lengths, and accuracy per slice of the task."""
    summary: dict[str, Any] = {}
    if rows and rows[0]["correct"] is not None:
        overall = accuracy([bool(r["correct"]) for r in rows])
        summary.update(accuracy=overall["accuracy"], accuracy_low=overall["low"],
                       accuracy_high=overall["high"])
        parts = sorted({r["part"] for r in rows if r["part"] is not None}, key=part_order)
        summary["by_part"] = {k: accuracy([bool(r["correct"]) for r in rows if r["part"] == k])
                              for k in parts}
    summary["reward"] = _mean([r["reward"] for r in rows])
    summary.update({k: _mean([r[k] for r in rows]) for k in (rows[0] if rows else {})
                    if k.startswith("reward_")})
    summary.update(words=_mean([r["words"] for r in rows]),
                   tokens=_mean([r["tokens"] for r in rows]), n=len(rows))
    return summary


def score_chat(sampling_client: Any, tokenizer: Any,
               conversations: Sequence[Sequence[Mapping[str, str]]],
               params: types.SamplingParams, max_length: int = 2048, progress: bool = False
               ) -> list[dict[str, Any]]:
    """Per conversation: NLL of the reference answer and one sampled answer, exact-matched.

    The NLL is teacher-forced with `compute_logprobs`, which a sampling client has on both
    backends, so no training client (and no LoRA copy) is needed to score a checkpoint. The
    weights are train_sft's (`conversation_datum`): the final assistant turn and its end of turn.
    """
    datums_C = [conversation_datum(tokenizer, c, max_length) for c in conversations]
    prompts_C = [chat_tokens(tokenizer, c[:-1], add_generation_prompt=True) for c in conversations]
    # A datum holds tokens[:-1] as input; the full sequence adds the last target back.
    full_C = [[*d.model_input.to_ints(), int(d.loss_fn_inputs["target_tokens"].to_numpy()[-1])]
              for d in datums_C]
    futures_C = in_flight(lambda i: (
        sampling_client.compute_logprobs(types.ModelInput.from_ints(full_C[i])),
        sampling_client.sample(types.ModelInput.from_ints(prompts_C[i]), 1,
                               problem_params(params, i))), len(conversations))
    rows = []
    with progress_bar(len(conversations), progress) as bar:
        for conversation, datum, (logprob_future, sample_future) in zip(
                conversations, datums_C, futures_C, strict=True):
            # compute_logprobs gives [None, lp(t1 | t0), ...]: entry i scores token i, so
            # entries 1: line up with the datum's targets and weights.
            logprobs = logprob_future.result()[1:]
            weights = datum.loss_fn_inputs["weights"].to_numpy()
            nll = -sum(float(lp) * float(w) for lp, w in zip(logprobs, weights, strict=True) if w)
            sequence = sample_future.result().sequences[0]
            completion = decode_completion(tokenizer, sequence.tokens)
            reference = conversation[-1]["content"]
            rows.append({"prompt": conversation[-2]["content"] if len(conversation) > 1 else "",
                         "reference": reference, "completion": completion,
                         "exact_match": completion.strip() == reference.strip(), "nll": nll,
                         "reference_tokens": int(weights.sum()),
                         "words": len(completion.split()), "tokens": len(sequence.tokens),
                         "stop_reason": sequence.stop_reason})
            bar.update()
    return rows


def summarize_chat(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """NLL per reference token (pooled over rows, as train_sft's eval/loss) and exact match."""
    match = accuracy([bool(r["exact_match"]) for r in rows])
    n_tokens = sum(r["reference_tokens"] for r in rows)
    return {"nll": sum(r["nll"] for r in rows) / n_tokens if n_tokens else math.nan,
            "exact_match": match["accuracy"], "exact_match_low": match["low"],
            "exact_match_high": match["high"], "words": _mean([r["words"] for r in rows]),
            "tokens": _mean([r["tokens"] for r in rows]), "n": len(rows)}


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table padded to aligned columns, so the same text reads well in a terminal."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
             for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")
