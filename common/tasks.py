"""Tasks: what train_rl.py trains on and evaluate.py scores, chosen by `--task`.

A task gives problem k of a seed (index-addressable, so runs repeat and resume exactly), each
problem's chat messages and reference answer, a reward breakdown with a `total`, and a fixed
held-out split that never overlaps training. Sources, spelled the same in both scripts:

- `arithmetic` (default): the seed's "add adjacent pairs, then multiply" (common/arithmetic.py),
  its prompt and reward unchanged (format 0.1, correct 1.0, the concise bonus after
  --concise_bonus_after); held-out: data/arithmetic_heldout.jsonl or --heldout.
- `dataset:SPEC`: rows of a local file (JSONL, CSV, parquet) or a hub dataset org/name[:config],
  through `datasets`. The prompt is --prompt_field (default: the first of question / prompt /
  problem, or a `messages` list), the reference answer --answer_field (GSM8K's "... #### 72"
  means 72). Held-out: --heldout SPEC, else the hub dataset's `test` split, else a seeded
  --heldout_fraction of the rows; training drops every row whose prompt is held out.
- `reasoning_gym:NAME`: reasoning-gym's generator NAME (keyword arguments as JSON in
  --task_config), problem k = an item drawn by seed and k from training streams of 10,000 items
  each; its own `score_answer` grades; held-out: 300 items of a stream of their own, kept out of
  training.

Rewards (--reward): `answer` (default: 0.1 for an answer in the expected form, `<answer>X</answer>`
or with --answer_format boxed `\\boxed{X}`, plus 1.0 when math-verify says it equals the
reference; arithmetic keeps the seed's reward), `exact` (string equality after trimming), or
`FILE.py:FUNCTION`, the user's `(completion: str, row: dict) -> float | dict` (a dict holds reward
parts and a `total`), loaded from the file without installing anything.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from common.arithmetic import (
    DEFAULT_HELDOUT,
    SYSTEM_PROMPT,
    TRAIN_STREAM,
    Difficulty,
    build_messages,
    problem_at,
)
from common.arithmetic import Problem as ArithmeticProblem
from common.data import DatasetError, as_messages, file_fingerprint, is_file_spec, load_rows
from common.rewards import (
    CORRECT_REWARD,
    RewardValueError,
    answer_parts,
    answer_reward,
    checked_reward,
    compute_reward,
    extract_answer,
    reference_answer,
)
from common.seeding import derive_seed, seeded_rng

DEFAULT_SYSTEM_PROMPT = {
    "tags": "Solve the problem. Put your final answer in <answer>X</answer> tags.",
    "boxed": "Solve the problem. Put your final answer in \\boxed{X}.",
}
PROMPT_FIELDS = ("question", "prompt", "problem")
RG_TRAIN_SIZE = 10_000  # a few reasoning-gym generators precompute their items: keep it modest
RG_HELDOUT_SIZE = 300


class TaskError(ValueError):
    """A task that cannot be built or a reward that cannot be computed; names the flag or row."""


@dataclass
class TaskConfig:
    """The task flags train_rl.py and evaluate.py share (same spelling, same meaning)."""

    # --- task
    task: str = "arithmetic"
    """arithmetic (the seed's task), dataset:SPEC (a .jsonl/.csv/.parquet file or a hub dataset
    org/name[:config]), or reasoning_gym:NAME (any of reasoning-gym's generators)."""
    prompt_field: str | None = None
    """Dataset column with the prompt. Default: the first of question, prompt, problem, or a
    messages list."""
    answer_field: str = "answer"
    """Dataset column with the reference answer (GSM8K's "... #### 72" means 72)."""
    heldout: str | None = None
    """Held-out problems: a file or hub dataset. Default: the task's own (arithmetic: the shipped
    data/arithmetic_heldout.jsonl; a hub dataset: its test split; else --heldout_fraction)."""
    heldout_fraction: float = 0.1
    """Share of a dataset's rows held out when it has no test split and --heldout is not given."""
    task_config: str | None = None
    """reasoning_gym keyword arguments as JSON, e.g. '{"min_terms": 2, "max_terms": 3}'."""
    system_prompt: str | None = None
    """System turn (TEXT, or @FILE to read it). Default: the seed's for arithmetic; for other
    tasks one asking for the final answer in <answer>X</answer> tags (or \\boxed{X})."""
    reward: str = "answer"
    """answer (right answer by math-verify 1.0 + expected form 0.1), exact (string equality), or
    FILE.py:FUNCTION, your (completion, row) -> float | dict with a 'total'."""
    answer_format: Literal["tags", "boxed"] = "tags"
    """Where the answer is read from: <answer>X</answer> tags, or the last \\boxed{X}."""
    pair_counts: str = "1,2,3"
    """arithmetic: pairs per problem, comma-separated (the seed: 1,2,3, i.e. 2, 4 or 6 numbers)."""
    large_share: float = 0.3
    """arithmetic: share of two-digit numbers (10-19); the rest are 1-9, as in the seed."""
    concise_needs_answer: bool = True
    """arithmetic: pay the conciseness bonus only with an answer tag. The seed pays it for any
    short text, which a model that is rarely right games by answering nothing;
    --noconcise_needs_answer restores the seed's reward exactly."""


@dataclass
class Problem:
    """One problem as the scripts see it, whatever the task."""

    messages: list[dict[str, str]]
    """The prompt: chat messages up to (not including) the assistant turn."""
    answer: str
    """The reference answer, for grading and tables."""
    row: dict[str, Any]
    """What a reward function receives: the dataset row, reasoning-gym's entry, or
    {numbers, answer, pair_count} for arithmetic."""
    where: str
    """Where it came from, for errors: "data/x.jsonl row 17", "training problem 40"."""
    part: str | None = None
    """Its slice in evaluation breakdowns ("2 pairs", "num_terms=3"), if the task has slices."""


Grader = Callable[[Problem, str], dict[str, float]]


@dataclass
class Task:
    """A task's problems and reward (build one with `make_task`)."""

    spec: str
    train: Callable[[int, int], Problem]
    """(seed, index) -> training problem `index`; depends on nothing else."""
    heldout: Callable[[], list[Problem]]
    """The fixed held-out problems (never training problems)."""
    grade: Grader
    """(problem, completion) -> reward parts and `total` (without the concise bonus)."""
    reward_parts: tuple[str, ...]
    concise_needs_answer: bool | None = None
    """Set for the seed's reward, which alone has the concise bonus."""
    reward_spec: str = "answer"

    def reward(self, problem: Problem, completion: str, concise: bool = False
               ) -> dict[str, float]:
        """Reward parts and `total` of one completion; `concise` adds the seed's bonus."""
        if self.concise_needs_answer is not None:
            return compute_reward(completion, int(problem.answer), concise,
                                  self.concise_needs_answer)
        try:
            parts = self.grade(problem, completion)
        except RewardValueError as exc:
            raise TaskError(f"--reward {self.reward_spec}: on {problem.where}: {exc}") from None
        if set(parts) != {*self.reward_parts, "total"}:
            raise TaskError(f"--reward {self.reward_spec}: on {problem.where} it returned parts "
                            f"{sorted(parts)}, before {sorted(self.reward_parts)}; a reward's "
                            "parts must be the same on every call")
        return parts


def solved(reward: dict[str, float]) -> bool | None:
    """Full marks on correctness; None when the reward has no `correct` part."""
    return reward["correct"] >= CORRECT_REWARD if "correct" in reward else None


def make_task(cfg: TaskConfig, heldout_only: bool = False) -> Task:
    """The task `cfg.task` with its reward; TaskError (one line, naming the flag) if it cannot
    be built. `heldout_only` (evaluate.py) skips loading what only training needs."""
    source, _, name = cfg.task.partition(":")
    system_prompt = _system_prompt(cfg)
    arithmetic_flags = {k: v for k, v in (("pair_counts", "1,2,3"), ("large_share", 0.3))
                        if getattr(cfg, k) != v}
    if source != "arithmetic" and arithmetic_flags:
        raise TaskError(f"--{next(iter(arithmetic_flags))}: only for --task arithmetic")
    if source == "arithmetic" and not name:
        task = _arithmetic(cfg, system_prompt or SYSTEM_PROMPT)
    elif source == "dataset" and name:
        task = _dataset(cfg, name, system_prompt or DEFAULT_SYSTEM_PROMPT[cfg.answer_format],
                        heldout_only)
    elif source == "reasoning_gym" and name:
        task = _reasoning_gym(cfg, name,
                              system_prompt or DEFAULT_SYSTEM_PROMPT[cfg.answer_format])
    else:
        raise TaskError(f"--task {cfg.task}: expected arithmetic, dataset:SPEC or "
                        "reasoning_gym:NAME")
    if cfg.task_config is not None and source != "reasoning_gym":
        raise TaskError("--task_config: only for --task reasoning_gym:NAME")
    if task.concise_needs_answer is not None and (cfg.reward, cfg.answer_format) != ("answer",
                                                                                   "tags"):
        task.concise_needs_answer = None  # the seed's reward only as the seed wrote it
        task.grade, task.reward_parts = _answer_grader(cfg.answer_format), ("format", "correct")
    task.reward_spec = cfg.reward
    if cfg.reward == "exact":
        task.grade = _exact_grader(cfg.answer_format)
        task.reward_parts = ("format", "correct")
    elif cfg.reward != "answer":
        task.grade, task.reward_parts = _user_reward(cfg.reward, task)
    return task


def _system_prompt(cfg: TaskConfig) -> str | None:
    text = cfg.system_prompt
    if text is None or not text.startswith("@"):
        return text
    path = Path(text[1:])
    if not path.is_file():
        raise TaskError(f"--system_prompt {text}: no such file {path}")
    return path.read_text(encoding="utf-8").strip()


def _answer_grader(answer_format: Literal["tags", "boxed"]) -> Grader:
    return lambda problem, completion: answer_reward(completion, problem.answer, answer_format)


def _exact_grader(answer_format: Literal["tags", "boxed"]) -> Grader:
    return lambda problem, completion: answer_reward(completion, problem.answer, answer_format,
                                                     exact=True)


# ---------------------------------------------------------------------------------------
# arithmetic


def _arithmetic(cfg: TaskConfig, system_prompt: str) -> Task:
    try:
        difficulty = Difficulty(tuple(int(p) for p in cfg.pair_counts.split(",")),
                                large_share=cfg.large_share)
    except ValueError as exc:
        raise TaskError(f"--pair_counts/--large_share: {exc}") from None
    heldout_spec = cfg.heldout or str(DEFAULT_HELDOUT)

    def train(seed: int, index: int) -> Problem:
        return arithmetic_problem(problem_at(TRAIN_STREAM, seed, index, difficulty),
                                  system_prompt, f"training problem {index}")

    def heldout() -> list[Problem]:
        rows = load_rows(heldout_spec, where=f"--heldout {heldout_spec}")
        problems = []
        for number, row in enumerate(rows, start=1):
            try:
                problems.append(arithmetic_problem(ArithmeticProblem.from_row(row), system_prompt,
                                                   f"{heldout_spec} row {number}"))
            except ValueError as exc:
                raise DatasetError(f"--heldout {heldout_spec} row {number}: {exc}") from None
        return problems

    return Task("arithmetic", train, heldout, _answer_grader("tags"),
                ("format", "correct", "concise"), cfg.concise_needs_answer)


def arithmetic_problem(item: ArithmeticProblem, system_prompt: str = SYSTEM_PROMPT,
                       where: str = "") -> Problem:
    """An arithmetic problem as the scripts see it; its slice is its pair count."""
    pairs = f"{item.pair_count} pair{'s' if item.pair_count > 1 else ''}"
    return Problem(build_messages(item, system_prompt), str(item.answer), item.to_row(), where,
                   pairs)


# ---------------------------------------------------------------------------------------
# dataset:SPEC


def _dataset(cfg: TaskConfig, spec: str, system_prompt: str, heldout_only: bool) -> Task:
    def problems(rows: list[dict[str, Any]], source: str, flag: str) -> list[Problem]:
        return [_row_problem(row, source, n, flag, cfg, system_prompt)
                for n, row in enumerate(rows, start=1)]

    flag = f"--task dataset:{spec}"
    if cfg.heldout is not None:
        heldout = problems(load_rows(cfg.heldout, where=f"--heldout {cfg.heldout}"),
                           cfg.heldout, "--heldout")
        train = [] if heldout_only else problems(load_rows(spec, where=flag), spec, flag)
    elif not is_file_spec(spec) and _has_test_split(spec):
        heldout = problems(load_rows(spec, "test", where=flag), f"{spec} (test)", flag)
        train = [] if heldout_only else problems(load_rows(spec, where=flag), spec, flag)
    else:
        everything = problems(load_rows(spec, where=flag), spec, flag)
        if not 0 < cfg.heldout_fraction < 1:
            raise TaskError(f"--heldout_fraction: must be in (0, 1), got {cfg.heldout_fraction}")
        order = list(range(len(everything)))
        seeded_rng("dataset-heldout", 0).shuffle(order)  # fixed: the yardstick of every run
        n_heldout = max(1, round(len(everything) * cfg.heldout_fraction))
        if len(everything) - n_heldout < 1:
            raise TaskError(f"{flag}: {len(everything)} row(s) leave nothing to train on after "
                            "holding out; add rows or pass --heldout")
        heldout = [everything[i] for i in sorted(order[:n_heldout])]
        train = [everything[i] for i in sorted(order[n_heldout:])]
    # Never train on a held-out prompt, whichever row it came from.
    held_prompts = {json.dumps(p.messages) for p in heldout}
    train = [p for p in train if json.dumps(p.messages) not in held_prompts]
    if not heldout_only and not train:
        raise TaskError(f"{flag}: every training row's prompt is also held out")

    def train_problem(seed: int, index: int) -> Problem:
        epoch, position = divmod(index, len(train))
        order = list(range(len(train)))
        seeded_rng("dataset", seed, epoch).shuffle(order)  # each epoch its own order
        return train[order[position]]

    return Task(f"dataset:{spec}", train_problem, lambda: heldout,
                _answer_grader(cfg.answer_format), ("format", "correct"))


def _has_test_split(spec: str) -> bool:
    import datasets

    name, _, config = spec.partition(":")
    try:
        return "test" in datasets.get_dataset_split_names(name, config or None)
    except Exception:  # offline and not cached, or no split info: load_rows will say why
        return False


def _row_problem(row: dict[str, Any], source: str, number: int, flag: str, cfg: TaskConfig,
                 system_prompt: str) -> Problem:
    def fail(message: str) -> TaskError:
        return TaskError(f"{flag} row {number}: {message}")

    field_name = cfg.prompt_field or next((f for f in PROMPT_FIELDS if row.get(f) is not None),
                                          "messages")
    prompt = row.get(field_name)
    if prompt is None:
        raise fail(f"no prompt column ({cfg.prompt_field or ' / '.join(PROMPT_FIELDS)} or "
                   f"messages); the row has {sorted(row)}. Name it with --prompt_field")
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        try:
            messages = as_messages(prompt, field_name)
        except ValueError as exc:
            raise fail(str(exc)) from None
        if messages[-1]["role"] == "assistant":  # a chat row's own answer: not part of the prompt
            messages = messages[:-1]
    if not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": system_prompt}, *messages]
    answer = row.get(cfg.answer_field)
    if answer is None or not str(answer).strip():
        raise fail(f"no '{cfg.answer_field}' (the reference answer); the row has {sorted(row)}. "
                   "Name its column with --answer_field")
    return Problem(messages, reference_answer(answer), dict(row), f"{source} row {number}")


def fingerprint(cfg: TaskConfig) -> dict[str, str]:
    """sha256 prefixes of the local files the task reads, from the flags alone (nothing is
    loaded): a run's config keeps them, so a rerun refuses a file that changed."""
    source, _, spec = cfg.task.partition(":")
    files = {"data": spec if source == "dataset" else None, "heldout": cfg.heldout,
             "reward": cfg.reward.rpartition(":")[0] or None}
    return {k: fp for k, path in files.items() if (fp := file_fingerprint(path))}


# ---------------------------------------------------------------------------------------
# reasoning_gym:NAME


def _reasoning_gym(cfg: TaskConfig, name: str, system_prompt: str) -> Task:
    import reasoning_gym
    from reasoning_gym.factory import DATASETS

    if name not in DATASETS:
        close = difflib.get_close_matches(name, DATASETS, n=4)
        hint = f"; did you mean {', '.join(close)}?" if close else " (see reasoning_gym's docs)"
        raise TaskError(f"--task reasoning_gym:{name}: no such reasoning-gym dataset{hint}")
    try:
        options = json.loads(cfg.task_config) if cfg.task_config else {}
    except json.JSONDecodeError as exc:
        raise TaskError(f"--task_config: not valid JSON ({exc.msg})") from None
    if not isinstance(options, dict):
        raise TaskError(f"--task_config: expected a JSON object of keyword arguments, got "
                        f"{type(options).__name__}")

    def generator(seed: int, size: int) -> Any:
        try:
            return reasoning_gym.create_dataset(name, seed=seed, size=size, **options)
        except Exception as exc:  # a bad keyword or value: reasoning-gym's own words
            raise TaskError(f"--task_config {cfg.task_config}: reasoning_gym:{name} refused it "
                            f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
                            ) from None

    def problem(dataset: Any, index: int, where: str) -> Problem:
        entry = dataset[index]
        messages = [{"role": "system", "content": system_prompt},
                    {"role": "user", "content": entry["question"]}]
        return Problem(messages, str(entry["answer"]), entry, where, _rg_part(entry))

    held_data = generator(derive_seed("reasoning-gym-heldout", 0, name), RG_HELDOUT_SIZE)
    heldout = [problem(held_data, i, f"held-out item {i}") for i in range(RG_HELDOUT_SIZE)]
    held_questions = {p.row["question"] for p in heldout}
    streams: dict[tuple[int, int, int], Any] = {}

    def train(seed: int, index: int) -> Problem:
        epoch, position = divmod(index, RG_TRAIN_SIZE)
        # A held-out question is skipped by drawing the item from the next stream: a fixed
        # path per index, so problem k stays problem k.
        for attempt in range(20):
            key = (seed, epoch, attempt)
            if key not in streams:
                streams[key] = generator(derive_seed("reasoning-gym", seed, name, epoch, attempt),
                                         RG_TRAIN_SIZE)
            item = problem(streams[key], position, f"training problem {index}")
            if item.row["question"] not in held_questions:
                return item
        raise TaskError(f"--task reasoning_gym:{name}: with this --task_config the generator has "
                        f"too few distinct problems: its {RG_HELDOUT_SIZE} held-out ones leave "
                        "none to train on; widen --task_config")

    def grade(item: Problem, completion: str) -> dict[str, float]:
        answer = extract_answer(completion, cfg.answer_format)
        if answer is None:
            return answer_parts(False, 0.0)
        return answer_parts(True, float(held_data.score_answer(answer, item.row)))

    return Task(f"reasoning_gym:{name}", train, lambda: heldout, grade, ("format", "correct"))


def _rg_part(entry: dict[str, Any]) -> str | None:
    """The item's value of its generator's first difficulty knob (e.g. "num_terms=3")."""
    metadata = entry.get("metadata") or {}
    for key in metadata.get("difficulty") or {}:
        if key in metadata:
            return f"{key}={metadata[key]}"
    return None


# ---------------------------------------------------------------------------------------
# --reward FILE.py:FUNCTION


def _user_reward(spec: str, task: Task) -> tuple[Grader, tuple[str, ...]]:
    """The user's function as a grader, and its reward parts, found by calling it once on the
    first held-out problem's reference answer (so a broken file fails before any work)."""
    path_text, _, function = spec.rpartition(":")
    path = Path(path_text)
    if not path_text.endswith(".py") or not function:
        raise TaskError(f"--reward {spec}: expected answer, exact or FILE.py:FUNCTION")
    if not path.is_file():
        raise TaskError(f"--reward {spec}: no such file {path}")
    module_spec = importlib.util.spec_from_file_location(f"user_reward_{path.stem}", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # the user's file: their error, one line
        raise TaskError(f"--reward {spec}: {path} failed to load ({type(exc).__name__}: "
                        f"{exc})") from None
    user_function = getattr(module, function, None)
    if not callable(user_function):
        raise TaskError(f"--reward {spec}: {path} has no function {function!r}")

    def grade(problem: Problem, completion: str) -> dict[str, float]:
        try:
            value = user_function(completion, dict(problem.row))
        except Exception as exc:
            raise TaskError(f"--reward {spec}: raised {type(exc).__name__}: {exc} on "
                            f"{problem.where}") from None
        return checked_reward(value)

    probe = task.heldout()[0]
    try:
        parts = grade(probe, f"<answer>{probe.answer}</answer>")
    except RewardValueError as exc:
        raise TaskError(f"--reward {spec}: on {probe.where}: {exc}") from None
    return grade, tuple(k for k in parts if k != "total")
