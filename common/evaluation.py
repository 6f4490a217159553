"""Scoring sampled answers on held-out data, and the numbers an evaluation reports.

- `score_arithmetic`: one sampled answer per held-out problem, rewarded as in training.
- `score_chat`: held-out NLL per completion token (teacher-forced, `compute_logprobs`) plus
  exact match of a sampled answer, for chat datasets such as the seed's "foo" set.
- `summarize` / `summarize_chat`: means, and Wilson 95% intervals for every accuracy, because a
  held-out set of a few hundred problems leaves several points of sampling noise.
- `run_curves`, `final_and_best`, `config_differences`, `markdown_table`: comparing runs.

Every problem's request is submitted before any result is awaited: on Tinker each call is a
network round trip, so waiting in between would cost one round trip per problem.
Used by evaluate.py and, for periodic held-out accuracy, by train_rl.py.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tinker import types
from tqdm import tqdm

from common.datums import chat_tokens, conversation_datum
from common.rewards import compute_reward, parse_answer
from common.tasks import Problem, build_messages
from common.tracking import METRICS, read_metrics

REWARD_PARTS = ("format", "correct", "concise")
"""compute_reward's parts; rows and summaries carry them as reward_<part>."""


T = TypeVar("T")


def spread(items: Sequence[T], n: int) -> list[T]:
    """`n` items spread evenly over `items`: the shipped held-out file is sorted by pair count,
    so its first N would all be one difficulty."""
    n = min(n, len(items))
    return [items[i * len(items) // n] for i in range(n)]


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (z=1.96: 95%); n=0 gives (0, 1).

    Unlike the normal approximation it stays inside [0, 1] and is not zero-width at 0/n or n/n,
    which is where a small eval of a weak base model or a solved task sits.
    """
    if n == 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    p = successes / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # Clamped: at 0/n and n/n the bound is 0 or 1 exactly, up to rounding.
    return max(0.0, center - half), min(1.0, center + half)


def problem_params(params: types.SamplingParams, index: int) -> types.SamplingParams:
    """`params` with a seed of its own for problem `index` (unchanged when params.seed is None).

    Per problem rather than shared, so a problem's answer does not depend on which other
    problems are in the batch; derived through a string seed, so seeds 0 and 1 do not just
    shift the same draws by one problem.
    """
    if params.seed is None:
        return params
    seed = random.Random(f"eval:{params.seed}:{index}").randrange(2**31)
    return params.model_copy(update={"seed": seed})


def score_arithmetic(
    sampling_client: Any,
    tokenizer: Any,
    problems: Sequence[Problem],
    params: types.SamplingParams,
    concise_bonus: bool = False,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """One sampled answer per problem, scored with the training reward; one row per problem."""
    prompts_P = [chat_tokens(tokenizer, build_messages(p), add_generation_prompt=True)
                 for p in problems]
    futures_P = [sampling_client.sample(types.ModelInput.from_ints(tokens), 1,
                                        problem_params(params, index))
                 for index, tokens in enumerate(prompts_P)]
    rows = []
    for problem, future in tqdm(zip(problems, futures_P, strict=True), total=len(problems),
                                desc="eval", disable=not progress, dynamic_ncols=True):
        sequence = future.result().sequences[0]
        # Special tokens kept: a reader should see whether the answer ended with <|im_end|>
        # or ran into max_tokens. The seed's reward also sees this decoded text.
        completion = tokenizer.decode(list(sequence.tokens), skip_special_tokens=False)
        reward = compute_reward(completion, problem.answer, concise_bonus)
        rows.append({
            "numbers": ", ".join(map(str, problem.numbers)),
            "pair_count": problem.pair_count,
            "answer": problem.answer,
            "completion": completion,
            "parsed": parse_answer(completion),
            **{f"reward_{part}": reward[part] for part in REWARD_PARTS},
            "reward": reward["total"],
            "correct": reward["correct"] > 0,
            "words": len(completion.split()),
            "tokens": len(sequence.tokens),
            "stop_reason": sequence.stop_reason,
        })
    return rows


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _accuracy(correct: Sequence[bool]) -> dict[str, float]:
    low, high = wilson_interval(sum(correct), len(correct))
    return {"accuracy": _mean([float(c) for c in correct]), "low": low, "high": high,
            "n": len(correct)}


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy with its Wilson interval, reward means, lengths, and accuracy per pair count."""
    overall = _accuracy([bool(r["correct"]) for r in rows])
    by_pair_count = {
        k: _accuracy([bool(r["correct"]) for r in rows if r["pair_count"] == k])
        for k in sorted({r["pair_count"] for r in rows})
    }
    return {
        "accuracy": overall["accuracy"],
        "accuracy_low": overall["low"],
        "accuracy_high": overall["high"],
        "reward": _mean([r["reward"] for r in rows]),
        **{f"reward_{part}": _mean([r[f"reward_{part}"] for r in rows]) for part in REWARD_PARTS},
        "words": _mean([r["words"] for r in rows]),
        "tokens": _mean([r["tokens"] for r in rows]),
        "n": len(rows),
        "by_pair_count": by_pair_count,
    }


def score_chat(
    sampling_client: Any,
    tokenizer: Any,
    conversations: Sequence[Sequence[Mapping[str, str]]],
    params: types.SamplingParams,
    max_length: int = 2048,
    progress: bool = False,
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
    logprob_futures = [sampling_client.compute_logprobs(types.ModelInput.from_ints(t))
                       for t in full_C]
    sample_futures = [sampling_client.sample(types.ModelInput.from_ints(t), 1,
                                             problem_params(params, index))
                      for index, t in enumerate(prompts_C)]
    end_of_turn = tokenizer.eos_token_id
    rows = []
    items = zip(conversations, datums_C, logprob_futures, sample_futures, strict=True)
    for conversation, datum, logprob_future, sample_future in tqdm(
            items, total=len(conversations), desc="eval", disable=not progress,
            dynamic_ncols=True):
        # compute_logprobs gives [None, lp(t1 | t0), ...]: entry i scores token i, so entries
        # 1: line up with the datum's targets and weights.
        logprobs = logprob_future.result()[1:]
        weights = datum.loss_fn_inputs["weights"].to_numpy()
        nll = -sum(float(lp) * float(w) for lp, w in zip(logprobs, weights, strict=True) if w)
        sequence = sample_future.result().sequences[0]
        tokens = list(sequence.tokens)
        answer_tokens = tokens[:-1] if tokens and tokens[-1] == end_of_turn else tokens
        answer = tokenizer.decode(answer_tokens, skip_special_tokens=False).strip()
        reference = conversation[-1]["content"]
        rows.append({
            "prompt": conversation[-2]["content"] if len(conversation) > 1 else "",
            "reference": reference,
            "completion": tokenizer.decode(tokens, skip_special_tokens=False),
            "exact_match": answer == reference.strip(),
            "nll": nll,
            "reference_tokens": int(weights.sum()),
            "words": len(answer.split()),
            "tokens": len(tokens),
            "stop_reason": sequence.stop_reason,
        })
    return rows


def summarize_chat(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """NLL per reference token (pooled over rows, as train_sft's eval/loss) and exact match."""
    match = _accuracy([bool(r["exact_match"]) for r in rows])
    n_tokens = sum(r["reference_tokens"] for r in rows)
    return {
        "nll": sum(r["nll"] for r in rows) / n_tokens if n_tokens else math.nan,
        "exact_match": match["accuracy"],
        "exact_match_low": match["low"],
        "exact_match_high": match["high"],
        "words": _mean([r["words"] for r in rows]),
        "tokens": _mean([r["tokens"] for r in rows]),
        "n": len(rows),
    }


# ---------------------------------------------------------------------------------------
# Comparing runs from the files they leave behind.


def run_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl of a run as {key: [(step, value), ...]}, numeric values only."""
    if not (Path(run_dir) / METRICS).is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl (is it a training run directory?)")
    curves: dict[str, list[tuple[int, float]]] = {}
    for row in read_metrics(Path(run_dir)):
        for key, value in row.items():
            if key not in ("step", "_time") and isinstance(value, int | float) \
                    and not isinstance(value, bool):
                curves.setdefault(key, []).append((int(row["step"]), float(value)))
    return curves


def final_and_best(points: Sequence[tuple[int, float]], key: str) -> tuple[float, float]:
    """(last value, best value) of a curve; best is the minimum for losses, else the maximum."""
    finite = [v for _, v in points if math.isfinite(v)]
    if not points or not finite:
        return math.nan, math.nan
    best = min(finite) if "loss" in key else max(finite)
    return points[-1][1], best


def config_differences(configs: Mapping[str, Mapping[str, Any]],
                       ignore: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """{key: {run: value}} for the config keys whose values are not all equal.

    A key missing from a run's config shows as None for that run.
    """
    keys = sorted({k for config in configs.values() for k in config} - set(ignore))
    differences = {}
    for key in keys:
        values = {run: config.get(key) for run, config in configs.items()}
        if len({json.dumps(v, sort_keys=True, default=str) for v in values.values()}) > 1:
            differences[key] = values
    return differences


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
