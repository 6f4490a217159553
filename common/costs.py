"""Run economics: the tokens a run sends to the backend and what they cost at Tinker's prices.

What is billed how (Tinker bills three per-token rates, in USD per million tokens):
- prefill: prompt tokens. Each sampling request is counted once, even when it asks for
  `num_samples` completions, because the prompt is processed once. Forward-only passes
  (SFT held-out loss through `forward`, `compute_logprobs`) also count as prefill.
- sample: every generated token.
- train: every token of a datum sent to `forward_backward` (its `model_input.length`), whatever
  its loss weight. The prompt part of an SFT or RL datum goes forward and backward too.
The per-step metrics `tokens/prompt`, `tokens/sampled` and `tokens/trained` count everything the
step sent, held-out evaluation and sample tables included, because all of it is billed.
`tokens/cumulative/*` and `cost/cumulative_usd` add up the whole run and carry across resumes.

Where prices come from: `data/tinker_prices.json`. It holds Tinker's published prices
(https://thinkingmachines.ai/tinker/) as of 2026-01-05, for the only two models confirmed on that
date: Qwen/Qwen3-4B-Instruct-2507 (prefill 0.07, sample 0.22, train 0.22) and Qwen/Qwen3-8B
(0.13, 0.40, 0.40). Any other model logs tokens only and says so once. To give it a price, add
it to the file from the Tinker console or pricing page. Runs on the local backend cost $0.

Approximations:
- Not modelled: prefix-cache discounts on prefill, promotions and checkpoint storage. A logged
  figure is what the list prices give, not an invoice. Steps that a crash threw away before a
  resume were billed but are no longer in metrics.jsonl, so they are not counted.
- Dry-run estimates count tokens exactly when the model's tokenizer is available offline
  (`common.backend.tokenizer_for`). Otherwise they use characters / 4 plus a few template
  tokens per chat message (`approx_tokens`), and the printed estimate says so.
- SFT estimates charge each step `batch_size` x the mean row length. Over whole epochs with
  `batch_size` dividing the rows this is exact. Otherwise it is the expected value, because the
  rows left out of each epoch's ragged last batch depend on that epoch's shuffle.
- RL estimates are upper bounds: every completion is assumed to run to `max_tokens` and every
  group to be trained on. Real runs skip groups whose rewards are all equal.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

DEFAULT_PRICES = Path(__file__).resolve().parent.parent / "data" / "tinker_prices.json"
PRICE_FILE = "data/tinker_prices.json"  # as messages name it, relative to the repository
BACKENDS = ("tinker", "local")
KINDS = ("prompt", "sampled", "trained")
"""Token kinds, in the order they are reported; each maps to one rate of `Prices`."""
RATES = ("prefill", "sample", "train")
# Qwen-style chat templates wrap each message in <|im_start|>, role, "\n", ..., <|im_end|>, "\n",
# and the generation prompt is <|im_start|>assistant\n. The approximate counts add these.
TEMPLATE_TOKENS_PER_MESSAGE = 5
GENERATION_PROMPT_TOKENS = 3

Conversation = Sequence[Mapping[str, str]]


class PriceFileError(ValueError):
    """The price file is missing or malformed. The message names the file."""


@dataclass(frozen=True)
class Prices:
    """USD per million tokens for one model. `as_of` is when they were read (None: local, $0)."""

    prefill: float
    sample: float
    train: float
    as_of: str | None = None

    def usd(self, prompt: int = 0, sampled: int = 0, trained: int = 0) -> float:
        """Dollars: prompt tokens at prefill, sampled at sample, trained at train."""
        return (prompt * self.prefill + sampled * self.sample + trained * self.train) / 1e6


LOCAL_PRICES = Prices(0.0, 0.0, 0.0)
"""The local backend runs on this machine, so it costs nothing per token."""


def load_prices(path: str | Path = DEFAULT_PRICES) -> dict[str, Prices]:
    """Model name -> Prices from a price file (see data/tinker_prices.json for the layout)."""
    path = Path(path)

    def fail(problem: str) -> PriceFileError:
        return PriceFileError(f"price file {path}: {problem}")

    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise fail("not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"cannot be read ({type(exc).__name__}: {exc})") from None
    except json.JSONDecodeError as exc:
        raise fail(f"not valid JSON ({exc})") from None
    if not isinstance(table, dict) or not isinstance(table.get("models"), dict):
        raise fail("expected an object with a 'models' mapping of model name -> "
                   "{prefill, sample, train}")
    as_of = table.get("as_of")
    if not isinstance(as_of, str) or not as_of.strip():
        raise fail("'as_of' (the date the prices were read) is missing")
    prices = {}
    for model, entry in table["models"].items():
        if not isinstance(entry, dict):
            raise fail(f"model {model!r}: expected {{prefill, sample, train}}, got {entry!r}")
        missing = [rate for rate in RATES if rate not in entry]
        if missing:
            raise fail(f"model {model!r}: missing {', '.join(missing)}")
        for rate in RATES:
            value = entry[rate]
            # bool is an int subclass; `true` as a price is a typo, not $1.
            if (isinstance(value, bool) or not isinstance(value, int | float)
                    or not math.isfinite(value) or value < 0):
                raise fail(f"model {model!r}: {rate} must be a number >= 0, got {value!r}")
        prices[model] = Prices(*(float(entry[rate]) for rate in RATES), as_of=as_of)
    return prices


def price_for(model: str, backend: str, prices: Mapping[str, Prices] | None = None
              ) -> Prices | None:
    """Zero prices on the local backend. On Tinker, the model's prices, or None if unknown.

    `backend` is the resolved one ("tinker" or "local", as `common.config.resolved` gives it).
    The price file is only read for Tinker runs, so local runs never depend on it.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} (resolve 'auto' first), "
                         f"got {backend!r}")
    if backend == "local":
        return LOCAL_PRICES
    table = load_prices() if prices is None else prices
    return table.get(model)


def describe_prices(prices: Prices | None, model: str = "") -> str:
    """One phrase naming the prices in use, for console lines and estimate tables."""
    if prices is None:
        return f"no price for {model}" if model else "no price for this model"
    if prices == LOCAL_PRICES:
        return "local backend"
    rates = (f"prefill ${prices.prefill:g}, sample ${prices.sample:g}, train ${prices.train:g} "
             "per 1M tokens")
    who = f"{model} at " if model else ""
    return f"{who}Tinker prices of {prices.as_of}: {rates}"


def format_usd(usd: float) -> str:
    """$0, $1,234.56, or under a cent enough decimals to show it: $0.0012, $0.000033."""
    if usd == 0:
        return "$0"
    if usd >= 0.01:
        return f"${usd:,.2f}"
    if usd >= 0.0001:
        return f"${usd:.4f}"
    return f"${usd:.6f}" if usd >= 0.000001 else "<$0.000001"


class CostMeter:
    """Counts a run's tokens step by step and prices them. One per run.

        meter = CostMeter(cfg.model, cfg.backend)
        meter.add(prompt=..., sampled=...)   # by the code that spends, as it spends
        metrics.update(meter.step())         # every step: the tokens added since the last one
        print(meter.summary_line())          # at the end
    """

    def __init__(self, model: str, backend: str, prices: Mapping[str, Prices] | None = None,
                 echo: Callable[[str], None] = print) -> None:
        self.model = model
        self.backend = backend
        self.price = price_for(model, backend, prices)
        self._echo = echo
        self._tokens = dict.fromkeys(KINDS, 0)
        self._pending = dict.fromkeys(KINDS, 0)
        self._usd = 0.0
        self._warned = False

    def add(self, prompt: int = 0, sampled: int = 0, trained: int = 0) -> None:
        """Count tokens spent in the current step (reported by the next `step()`)."""
        for kind, n in {"prompt": prompt, "sampled": sampled, "trained": trained}.items():
            if n < 0:
                raise ValueError(f"{kind} tokens must be >= 0, got {n}")
            self._pending[kind] += int(n)  # numpy integers in, plain ints out (JSON, W&B)

    def step(self, prompt: int = 0, sampled: int = 0, trained: int = 0) -> dict[str, float]:
        """End a step: its tokens (those `add`ed plus these). Returns that step's `tokens/*`,
        `tokens/cumulative/*` and, when the price is known, `cost/step_usd` and
        `cost/cumulative_usd`."""
        self.add(prompt, sampled, trained)
        counts, self._pending = self._pending, dict.fromkeys(KINDS, 0)
        for kind, n in counts.items():
            self._tokens[kind] += n
        metrics: dict[str, float] = {f"tokens/{kind}": n for kind, n in counts.items()}
        metrics.update({f"tokens/cumulative/{kind}": n for kind, n in self._tokens.items()})
        if self.price is None:
            if not self._warned:
                self._warned = True
                self._echo(f"costs: no Tinker price for {self.model} in {PRICE_FILE}, "
                           "so only tokens are logged (add its prices to log cost/*)")
            return metrics
        step_usd = self.price.usd(**counts)
        self._usd += step_usd
        metrics["cost/step_usd"] = step_usd
        metrics["cost/cumulative_usd"] = self._usd
        return metrics

    def restore(self, last_metrics: Mapping[str, Any]) -> None:
        """Continue a resumed run's cumulative counts from the last metrics row the run kept.

        Call it after `tracker.truncate_after(done_steps)`, with the run's last metrics row.
        An empty row (nothing logged yet) leaves the meter at zero.
        """
        if not last_metrics:
            return
        keys = [f"tokens/cumulative/{kind}" for kind in KINDS]
        if any(key not in last_metrics for key in keys):
            self._echo("costs: the resumed run's last metrics row has no tokens/cumulative/* "
                       "counts (logged before costs were tracked?); counting from zero")
            return
        self._tokens = {kind: int(last_metrics[key]) for kind, key in zip(KINDS, keys, strict=True)}
        usd = last_metrics.get("cost/cumulative_usd")
        if isinstance(usd, int | float) and math.isfinite(usd):
            self._usd = float(usd)
        else:  # the price was unknown then: price the tokens so far at today's price, if any
            self._usd = self.price.usd(**self._tokens) if self.price is not None else 0.0

    def totals(self) -> dict[str, float]:
        """Whole-run counts (and dollars when priced), for the run summary."""
        out: dict[str, float] = {f"tokens/cumulative/{k}": n for k, n in self._tokens.items()}
        if self.price is not None:
            out["cost/cumulative_usd"] = self._usd
        return out

    def summary_line(self) -> str:
        """E.g. "tokens: 1,234 prompt, 5,678 sampled, 9,012 trained; cost $0.0012 (...)"."""
        t = self._tokens
        tokens = (f"tokens: {t['prompt']:,} prompt, {t['sampled']:,} sampled, "
                  f"{t['trained']:,} trained")
        if self.price is None:
            cost = f"cost unknown (no price for {self.model})"
        elif self.price == LOCAL_PRICES:
            cost = "cost $0 (local backend)"
        else:
            cost = (f"cost {format_usd(self._usd)} ({self.model} at Tinker prices of "
                    f"{self.price.as_of})")
        return f"{tokens}; {cost}"


# ---------------------------------------------------------------------------------------------
# Dry-run estimates: token counts from the data and the config, no backend call.


@dataclass(frozen=True)
class Estimate:
    """Tokens and dollars of a planned run. Token dicts are keyed by KINDS."""

    steps: int
    per_step: dict[str, int]
    """One training step's tokens (held-out evaluations and extras excluded)."""
    total: dict[str, int]
    """The whole run's tokens, with evaluations and extras."""
    per_step_usd: float | None
    total_usd: float | None
    """Dollars. None when the model's price is unknown."""
    exact: bool
    """Whether token counts come from the model's tokenizer. False means chars/4."""
    upper_bound: bool = False
    """Whether the numbers are upper bounds (RL: every completion runs to max_tokens)."""
    prices: Prices | None = None
    notes: tuple[str, ...] = ()

    def extra(self, prompt: int = 0, sampled: int = 0, trained: int = 0, note: str = ""
              ) -> Estimate:
        """Add whole-run tokens that do not happen every step (held-out evaluation, samples)."""
        total = {k: self.total[k] + n for k, n in zip(KINDS, (prompt, sampled, trained),
                                                        strict=True)}
        return replace(self, total=total, total_usd=_usd(self.prices, total),
                       notes=(*self.notes, note) if note else self.notes)

    def format(self, title: str = "") -> str:
        """A small table: per step and whole run, prompt / sampled / trained tokens and USD."""
        qualifiers = [q for q, on in (("upper bound", self.upper_bound),
                                      ("approximate (chars/4)", not self.exact)) if on]
        head = title or "Estimated tokens and cost"
        prices = (describe_prices(self.prices) if self.prices is not None else
                  f"unknown for this model, tokens only (add it to {PRICE_FILE})")
        lines = [head + (f" ({', '.join(qualifiers)})" if qualifiers else "") + ":",
                 f"  prices: {prices}",
                 f"  {'':<22}{'prompt':>13}{'sampled':>13}{'trained':>13}{'USD':>12}"]
        for label, tokens, usd in (("per step", self.per_step, self.per_step_usd),
                                   (f"whole run ({self.steps:,} steps)", self.total,
                                    self.total_usd)):
            money = "unknown" if usd is None else format_usd(usd)
            lines.append(f"  {label:<22}" + "".join(f"{tokens[k]:>13,}" for k in KINDS)
                         + f"{money:>12}")
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)


def _usd(prices: Prices | None, tokens: Mapping[str, int]) -> float | None:
    if prices is None:
        return None
    return prices.usd(tokens["prompt"], tokens["sampled"], tokens["trained"])


def _estimate(steps: int, per_step: dict[str, int], total: dict[str, int],
              prices: Prices | None, exact: bool, upper_bound: bool, notes: tuple[str, ...]
              ) -> Estimate:
    return Estimate(steps, per_step, total, _usd(prices, per_step), _usd(prices, total), exact,
                    upper_bound, prices, notes)


def estimate_sft(token_counts: Sequence[int], batch_size: int, steps: int,
                 eval_tokens_per_eval: int = 0, evals: int = 0, prices: Prices | None = None,
                 *, exact: bool = True) -> Estimate:
    """Tokens and dollars of an SFT run, from per-row trained token counts.

    `token_counts` are the training rows' datum lengths (`datum_token_counts`). Each step trains
    on `batch_size` rows and is charged `batch_size` x their mean length (see the module
    docstring for when that is exact). Each of the `evals` held-out evaluations is one forward
    pass over `eval_tokens_per_eval` tokens, billed at prefill. `exact`: the counts come from
    the model's tokenizer.
    """
    if not token_counts:
        raise ValueError("token_counts is empty: no training rows")
    if batch_size < 1 or steps < 0 or evals < 0 or eval_tokens_per_eval < 0:
        raise ValueError(f"need batch_size >= 1 and steps, evals, eval tokens >= 0; got "
                         f"{batch_size}, {steps}, {evals}, {eval_tokens_per_eval}")
    rows, tokens = len(token_counts), sum(token_counts)
    # Rounded once per figure from the exact fraction, so totals do not compound rounding.
    per_step = {"prompt": 0, "sampled": 0, "trained": round(tokens * batch_size / rows)}
    total = {"prompt": eval_tokens_per_eval * evals, "sampled": 0,
             "trained": round(tokens * batch_size * steps / rows)}
    notes = ((f"whole run includes {evals} held-out evaluation(s) of "
              f"{eval_tokens_per_eval:,} tokens each (forward only, billed as prefill)",)
             if evals and eval_tokens_per_eval else ())
    return _estimate(steps, per_step, total, prices, exact, False, notes)


def estimate_rl(prompt_tokens: int, batch_size: int, group_size: int, max_tokens: int,
                steps: int, prices: Prices | None = None, *, exact: bool = True) -> Estimate:
    """Upper bounds for an RL run, with `prompt_tokens` the longest prompt (or a bound on it).

    Per step: batch_size prompts prefilled once per sampling request, at most
    batch_size x group_size x max_tokens sampled, and at most
    batch_size x group_size x (prompt + max_tokens) trained. Each datum is in fact one token
    shorter, and groups with equal rewards are skipped.
    """
    if min(prompt_tokens, steps) < 0 or min(batch_size, group_size, max_tokens) < 1:
        raise ValueError(f"need batch_size, group_size, max_tokens >= 1 and prompt_tokens, "
                         f"steps >= 0; got {batch_size}, {group_size}, {max_tokens}, "
                         f"{prompt_tokens}, {steps}")
    rollouts = batch_size * group_size
    per_step = {"prompt": batch_size * prompt_tokens, "sampled": rollouts * max_tokens,
                "trained": rollouts * (prompt_tokens + max_tokens)}
    total = {k: n * steps for k, n in per_step.items()}
    return _estimate(steps, per_step, total, prices, exact, True, ())


def approx_tokens(text: str) -> int:
    """About four characters per token: an approximation for English text with BPE tokenizers,
    used only when the model's tokenizer is not available offline."""
    return math.ceil(len(text) / 4)


def _approx_chat_tokens(messages: Conversation, add_generation_prompt: bool) -> int:
    return (sum(approx_tokens(m["content"]) + TEMPLATE_TOKENS_PER_MESSAGE for m in messages)
            + (GENERATION_PROMPT_TOKENS if add_generation_prompt else 0))


def _chat_token_counts(conversations: Sequence[Conversation], tokenizer: Any,
                       add_generation_prompt: bool) -> tuple[list[int], bool]:
    if tokenizer is None:
        return [_approx_chat_tokens(c, add_generation_prompt) for c in conversations], False
    from common.datums import chat_tokens  # the same rendering the scripts train on

    return [len(chat_tokens(tokenizer, c, add_generation_prompt)) for c in conversations], True


def datum_token_counts(conversations: Sequence[Conversation], tokenizer: Any
                       ) -> tuple[list[int], bool]:
    """(per conversation, tokens its SFT datum trains on; exact?).

    A datum is the rendered conversation minus one token (the shift in common.datums). The
    counts are exact with a tokenizer and chars/4 plus template tokens without one.
    """
    counts, exact = _chat_token_counts(conversations, tokenizer, add_generation_prompt=False)
    return [max(0, n - 1) for n in counts], exact


def prompt_token_counts(prompts: Sequence[Conversation], tokenizer: Any
                        ) -> tuple[list[int], bool]:
    """(per prompt, its tokens with the generation prompt; exact?), as sampling requests send."""
    return _chat_token_counts(prompts, tokenizer, add_generation_prompt=True)
