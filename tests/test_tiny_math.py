"""tiny-math: the shipped pretrained arithmetic base model, and the script that makes it."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from tinker import types

import local_tinker
from local_tinker.models import TINY_MATH_WEIGHTS, build_tiny_chat, build_tiny_math

ROOT = Path(__file__).resolve().parent.parent


def load_maker():
    spec = importlib.util.spec_from_file_location("make_tiny_math", ROOT / "data/make_tiny_math.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_weights_do_the_arithmetic_their_card_claims():
    maker = load_maker()
    card = json.loads(TINY_MATH_WEIGHTS.with_suffix(".json").read_text())
    base = build_tiny_math()
    measured = maker.plain_accuracy(base.model, base.tokenizer)
    claimed = {int(k): v for k, v in card["greedy_accuracy_plain_format"].items()}
    assert measured == pytest.approx(claimed, abs=0.02)
    assert measured[1] >= 0.9  # one pair (an addition) is what the RL demo builds on
    untrained = build_tiny_chat()
    assert maker.plain_accuracy(untrained.model, untrained.tokenizer) == {1: 0.0, 2: 0.0, 3: 0.0}


def test_local_backend_serves_tiny_math(service_client):
    sampler = service_client.create_sampling_client(base_model="tiny-math").result()
    tokenizer = build_tiny_chat().tokenizer
    prompt = types.ModelInput.from_ints(tokenizer.encode("12, 7, 3, 4\n", add_special_tokens=False))
    params = types.SamplingParams(max_tokens=80, temperature=0.0, stop=["\nAnswer"])
    result = sampler.sample(prompt, num_samples=1, sampling_params=params).result()
    text = tokenizer.decode(result.sequences[0].tokens)
    assert text == "Add pairs: 12+7=19, 3+4=7\nMultiply: 19×7=133\nAnswer"
    assert result.sequences[0].stop_reason == "stop"
    assert "tiny-math" in local_tinker.available_models()


def test_missing_weights_name_the_script_that_makes_them(tmp_path):
    with pytest.raises(local_tinker.UnknownModelError, match="data/make_tiny_math.py"):
        build_tiny_math(tmp_path / "absent.safetensors")


def test_maker_writes_loadable_weights_and_card(tmp_path, monkeypatch):
    out = tmp_path / "tiny-math.safetensors"
    monkeypatch.setattr(sys, "argv", ["make_tiny_math.py", "--steps", "3", "--out", str(out)])
    load_maker().main()
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["steps"] == 3 and card["problems_seen"] == 3 * 32 * 3
    reloaded = build_tiny_math(out).model.state_dict()
    shipped = build_tiny_math().model.state_dict()
    assert reloaded.keys() == shipped.keys()
    assert any(not reloaded[k].equal(shipped[k]) for k in shipped)
