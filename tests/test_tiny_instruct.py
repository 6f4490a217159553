"""tiny-instruct, the local default model: its card and its maker (the seed's RL code on it:
tests/test_seed_notebook.py)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from tinker import types

import local_tinker
from common.arithmetic import Problem, build_messages
from common.backend import get_tokenizer
from common.config import LOCAL_DEFAULT_MODEL
from common.datums import chat_tokens
from local_tinker.models import TINY_INSTRUCT, TINY_INSTRUCT_WEIGHTS, build_tiny_instruct

ROOT = Path(__file__).resolve().parent.parent


def load_maker():
    spec = importlib.util.spec_from_file_location(
        "make_tiny_instruct", ROOT / "data/make_tiny_instruct.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_instruct_is_the_local_default():
    assert LOCAL_DEFAULT_MODEL == TINY_INSTRUCT
    assert TINY_INSTRUCT in local_tinker.available_models()
    assert TINY_INSTRUCT_WEIGHTS.stat().st_size < 5_000_000  # "a few MB"


@pytest.mark.e2e  # ~30 s idle, over a minute on a loaded machine: 192 answers of 256 tokens
def test_shipped_weights_behave_as_their_card_says():
    card = json.loads(TINY_INSTRUCT_WEIGHTS.with_suffix(".json").read_text())
    base = build_tiny_instruct()
    measured = load_maker().sampled_accuracy(base.model, base.tokenizer)
    for kind in ("accuracy", "format", "clipped"):
        claimed = {int(k): v for k, v in card["sampled"][kind].items()}
        # Sampling is seeded, so this repeats on one machine; the margin covers other CPUs.
        assert measured[kind] == pytest.approx(claimed, abs=0.1), kind
    # The seed's instruct model on this task: right some of the time, often cut off.
    overall = sum(measured["accuracy"].values()) / 3
    assert 0.1 <= overall <= 0.45, measured
    assert sum(measured["clipped"].values()) / 3 >= 0.2, measured


def test_local_backend_serves_tiny_instruct_with_answer_tags(service_client):
    sampler = service_client.create_sampling_client(base_model=TINY_INSTRUCT).result()
    tokenizer = get_tokenizer(sampler, TINY_INSTRUCT)
    messages = build_messages(Problem((12, 7, 3, 4)))  # the task's system prompt + numbers
    prompt = types.ModelInput.from_ints(chat_tokens(tokenizer, messages, True))
    params = types.SamplingParams(max_tokens=256, temperature=0.8, seed=0)
    result = sampler.sample(prompt, num_samples=16, sampling_params=params).result()
    texts = [tokenizer.decode(s.tokens, skip_special_tokens=True) for s in result.sequences]
    assert any("<answer>133</answer>" in t for t in texts), texts


def test_missing_weights_name_the_script_that_makes_them(tmp_path):
    with pytest.raises(local_tinker.UnknownModelError, match="data/make_tiny_instruct.py"):
        build_tiny_instruct(tmp_path / "absent.safetensors")


def test_maker_writes_loadable_weights_and_card(tmp_path, monkeypatch):
    out = tmp_path / "tiny-instruct.safetensors"
    monkeypatch.setattr(sys, "argv", ["make_tiny_instruct.py", "--steps", "2", "--batch_size",
                                      "2", "--eval_per_pair_count", "2", "--out", str(out)])
    load_maker().main()
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["steps"] == 2 and card["data"]["rows"] == 4
    assert set(card["sampled"]["accuracy"]) == {"1", "2", "3"}
    reloaded = build_tiny_instruct(out).model.state_dict()
    shipped = build_tiny_instruct().model.state_dict()
    assert reloaded.keys() == shipped.keys()
    assert any(not reloaded[k].equal(shipped[k]) for k in shipped)
