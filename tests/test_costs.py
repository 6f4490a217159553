"""Run economics: price lookup, per-step and cumulative costs, resume, dry-run estimates."""

import json
import time

import pytest

from common.backend import tokenizer_for
from common.costs import (
    DEFAULT_PRICES,
    LOCAL_PRICES,
    CostMeter,
    PriceFileError,
    Prices,
    approx_tokens,
    datum_token_counts,
    estimate_rl,
    estimate_sft,
    format_usd,
    load_prices,
    price_for,
    prompt_token_counts,
)
from common.runfiles import read_metrics

pytestmark = pytest.mark.unit

QWEN_4B = "Qwen/Qwen3-4B-Instruct-2507"
QWEN_4B_PRICES = Prices(0.07, 0.22, 0.22, as_of="2026-01-05")


# --- the price file and lookup


def test_shipped_price_file_has_the_confirmed_prices():
    prices = load_prices()
    assert prices == {QWEN_4B: QWEN_4B_PRICES,
                      "Qwen/Qwen3-8B": Prices(0.13, 0.40, 0.40, as_of="2026-01-05")}
    table = json.loads(DEFAULT_PRICES.read_text())
    assert table["unit"] == "USD per million tokens" and "console" in table["note"]


def test_price_for_known_local_and_unknown_models():
    assert price_for(QWEN_4B, "tinker") == QWEN_4B_PRICES
    assert price_for(QWEN_4B, "local") == LOCAL_PRICES == Prices(0.0, 0.0, 0.0)
    assert price_for("tiny-chat", "local") == LOCAL_PRICES
    assert price_for("org/unpriced", "tinker") is None
    with pytest.raises(ValueError, match="resolve 'auto'"):
        price_for(QWEN_4B, "auto")


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not valid JSON"),
    ('{"as_of": "2026-01-05"}', "'models' mapping"),
    ('{"models": {}}', "'as_of'"),
    ('{"as_of": "x", "models": {"m": {"prefill": 1, "sample": 1}}}', "missing train"),
    ('{"as_of": "x", "models": {"m": {"prefill": 1, "sample": true, "train": 1}}}',
     "sample must be a number"),
    ('{"as_of": "x", "models": {"m": {"prefill": -1, "sample": 1, "train": 1}}}',
     "prefill must be a number"),
])
def test_malformed_price_file_error_names_the_file(tmp_path, content, problem):
    path = tmp_path / "prices.json"
    path.write_text(content)
    with pytest.raises(PriceFileError, match=problem) as info:
        load_prices(path)
    assert str(path) in str(info.value)
    with pytest.raises(PriceFileError, match="not found"):
        load_prices(tmp_path / "missing.json")


# --- the meter


def test_step_cost_against_the_price_file_then_cumulative():
    meter = CostMeter(QWEN_4B, "tinker")
    first = meter.step(prompt=1_000_000, sampled=2_000_000, trained=3_000_000)
    # 1M x 0.07 + 2M x 0.22 + 3M x 0.22 = 0.07 + 0.44 + 0.66
    assert first["cost/step_usd"] == pytest.approx(1.17)
    assert first["cost/cumulative_usd"] == pytest.approx(1.17)
    assert {k: first[k] for k in ("tokens/prompt", "tokens/sampled", "tokens/trained")} == {
        "tokens/prompt": 1_000_000, "tokens/sampled": 2_000_000, "tokens/trained": 3_000_000}
    meter.step(prompt=1_000_000)  # 0.07
    third = meter.step(trained=1_000_000)  # 0.22
    assert third["cost/step_usd"] == pytest.approx(0.22)
    assert third["cost/cumulative_usd"] == pytest.approx(1.17 + 0.07 + 0.22)
    assert third["tokens/trained"] == 1_000_000
    assert [third[f"tokens/cumulative/{k}"] for k in ("prompt", "sampled", "trained")] == [
        2_000_000, 2_000_000, 4_000_000]
    assert meter.totals() == {"tokens/cumulative/prompt": 2_000_000,
                              "tokens/cumulative/sampled": 2_000_000,
                              "tokens/cumulative/trained": 4_000_000,
                              "cost/cumulative_usd": third["cost/cumulative_usd"]}
    assert meter.summary_line() == (
        "tokens: 2,000,000 prompt, 2,000,000 sampled, 4,000,000 trained; "
        f"cost $1.46 ({QWEN_4B} at Tinker prices of 2026-01-05)")
    with pytest.raises(ValueError, match="sampled tokens must be >= 0"):
        meter.step(sampled=-1)


def test_small_costs_keep_four_decimals():
    meter = CostMeter(QWEN_4B, "tinker")
    meter.step(trained=5_000)  # 5e3 x 0.22 / 1e6 = $0.0011
    assert meter.summary_line().endswith(f"cost $0.0011 ({QWEN_4B} at Tinker prices of 2026-01-05)")


def test_local_backend_costs_zero(capsys):
    meter = CostMeter("tiny-chat", "local")
    metrics = meter.step(prompt=10, sampled=20, trained=30)
    assert metrics["cost/step_usd"] == 0 and metrics["cost/cumulative_usd"] == 0
    assert meter.summary_line() == ("tokens: 10 prompt, 20 sampled, 30 trained; "
                                    "cost $0 (local backend)")
    assert capsys.readouterr().out == ""


def test_unknown_price_logs_tokens_only_and_says_so_once(capsys):
    meter = CostMeter("org/unpriced", "tinker")
    for _ in range(3):
        metrics = meter.step(prompt=1, sampled=2, trained=3)
    assert not any(k.startswith("cost/") for k in metrics)
    assert metrics["tokens/cumulative/trained"] == 9
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "org/unpriced" in lines[0] and "only tokens" in lines[0]
    assert "cost/cumulative_usd" not in meter.totals()
    assert meter.summary_line().endswith("cost unknown (no price for org/unpriced)")


def test_restore_continues_cumulative_counts_exactly(tmp_path):
    original = CostMeter(QWEN_4B, "tinker")
    rows = [{"step": s, **original.step(prompt=123 * s, sampled=4567, trained=8901 + s)}
            for s in (1, 2, 3, 4)]
    # The run kept steps 1-2 (its checkpoint), so steps 3-4 are redone after the resume.
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows[:2]) + '{"step": 3, "tok')  # cut short
    resumed = CostMeter(QWEN_4B, "tinker")
    resumed.restore(read_metrics(tmp_path)[-1])
    redone = [resumed.step(prompt=123 * s, sampled=4567, trained=8901 + s) for s in (3, 4)]
    for key in ("tokens/cumulative/prompt", "tokens/cumulative/sampled",
                "tokens/cumulative/trained"):
        assert redone[-1][key] == rows[-1][key]
    assert redone[-1]["cost/cumulative_usd"] == pytest.approx(rows[-1]["cost/cumulative_usd"],
                                                              rel=1e-12)
    assert resumed.totals() == pytest.approx(original.totals(), rel=1e-12)


def test_restore_edge_cases(tmp_path, capsys):
    assert read_metrics(tmp_path) == []
    meter = CostMeter(QWEN_4B, "tinker")
    meter.restore({})  # nothing logged yet: stays at zero, silently
    meter.restore({"step": 5, "train/loss": 1.0})  # a row from before costs were tracked
    assert "counting from zero" in capsys.readouterr().out
    assert meter.totals()["tokens/cumulative/trained"] == 0
    # Tokens logged while the price was unknown: priced at today's price.
    meter.restore({"tokens/cumulative/prompt": 0, "tokens/cumulative/sampled": 0,
                   "tokens/cumulative/trained": 1_000_000})
    assert meter.totals()["cost/cumulative_usd"] == pytest.approx(0.22)


# --- dry-run estimates


def test_estimate_sft_by_hand():
    # Mean row 25 tokens x batch 2 = 50 trained per step; 3 steps = 150.
    # Evaluations: 2 x 7 tokens = 14 prompt (prefill).
    est = estimate_sft([10, 20, 30, 40], batch_size=2, steps=3, eval_tokens_per_eval=7,
                       evals=2, prices=QWEN_4B_PRICES)
    assert est.per_step == {"prompt": 0, "sampled": 0, "trained": 50}
    assert est.total == {"prompt": 14, "sampled": 0, "trained": 150}
    assert est.per_step_usd == pytest.approx(50 * 0.22 / 1e6)
    assert est.total_usd == pytest.approx((150 * 0.22 + 14 * 0.07) / 1e6)
    assert est.exact and not est.upper_bound
    # Two whole epochs with batch_size dividing the rows: exactly the rows twice over.
    assert estimate_sft([10, 20, 30, 40], 2, steps=4).total["trained"] == 2 * 100
    # Unknown price: tokens only.
    assert estimate_sft([10, 20, 30, 40], 2, 3).total_usd is None
    with pytest.raises(ValueError, match="no training rows"):
        estimate_sft([], 2, 3)


def test_estimate_rl_upper_bounds_by_hand():
    # batch 8, group 4, prompt 100, max_tokens 50, 10 steps
    est = estimate_rl(100, batch_size=8, group_size=4, max_tokens=50, steps=10,
                      prices=QWEN_4B_PRICES)
    assert est.per_step == {"prompt": 800, "sampled": 8 * 4 * 50, "trained": 8 * 4 * 150}
    assert est.total == {"prompt": 8_000, "sampled": 16_000, "trained": 48_000}
    assert est.total_usd == pytest.approx((8_000 * 0.07 + 16_000 * 0.22 + 48_000 * 0.22) / 1e6)
    assert est.upper_bound
    # Occasional extras (held-out evaluation) go into the whole run, not the per-step row.
    more = est.extra(prompt=1_000, sampled=2_000, note="held-out evaluation: 1 x 20 problems")
    assert more.per_step == est.per_step
    assert more.total == {"prompt": 9_000, "sampled": 18_000, "trained": 48_000}
    assert more.total_usd == pytest.approx(est.total_usd + (1_000 * 0.07 + 2_000 * 0.22) / 1e6)
    table = more.format("dry run: train_rl")
    assert "upper bound" in table and "held-out evaluation" in table and "18,000" in table
    assert "Tinker prices of 2026-01-05" in table


def test_estimate_format_says_approximate_unknown_and_local():
    approx = estimate_sft([10], 1, 2, exact=False)
    assert "approximate (chars/4)" in approx.format()
    assert "unknown" in approx.format() and "tokens only" in approx.format()
    local = estimate_sft([10], 1, 2, prices=LOCAL_PRICES)
    assert "local backend" in local.format() and "$0" in local.format()


@pytest.mark.parametrize("usd, text", [(0, "$0"), (1234.567, "$1,234.57"), (0.0012, "$0.0012"),
                                       (0.000033, "$0.000033"), (1e-9, "<$0.000001")])
def test_format_usd(usd, text):
    assert format_usd(usd) == text


def test_approx_tokens():
    assert approx_tokens("") == 0
    assert approx_tokens("abcd") == 1
    assert approx_tokens("abcde") == 2
    assert approx_tokens("x" * 400) == 100


# --- tokenizers and counts


def test_tiny_chat_counts_match_the_datums_the_scripts_build():
    from common.datums import chat_tokens, conversation_datum

    tokenizer = tokenizer_for("tiny-chat")
    assert tokenizer is not None
    rows = [[{"role": "user", "content": "Say foo."}, {"role": "assistant", "content": "foo"}],
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
             {"role": "assistant", "content": "<answer>4</answer>"}]]
    counts, exact = datum_token_counts(rows, tokenizer)
    assert exact
    assert counts == [conversation_datum(tokenizer, r, 2048).model_input.length for r in rows]
    prompts, exact = prompt_token_counts([r[:-1] for r in rows], tokenizer)
    assert exact
    assert prompts == [len(chat_tokens(tokenizer, r[:-1], add_generation_prompt=True))
                       for r in rows]
    # Without a tokenizer: chars/4 plus 5 template tokens a message (3 for the generation
    # prompt). "Say foo." -> 2 + 5, "foo" -> 1 + 5; the datum drops one token.
    approx, exact = datum_token_counts(rows[:1], None)
    assert not exact and approx == [2 + 5 + 1 + 5 - 1]
    assert prompt_token_counts([rows[0][:1]], None) == ([2 + 5 + 3], False)


def test_tokenizer_for_an_uncached_model_is_none_quickly():
    start = time.perf_counter()
    assert tokenizer_for("org/not-cached") is None
    assert time.perf_counter() - start < 10
