"""Datum alignment (SFT and RL), decoding, seed derivation, dataset loading and row validation,
config checks."""

import json
import random

import numpy as np
import pytest

import train_rl
from common.cli import parse_config
from common.config import ConfigError, resolved
from common.data import DatasetError, load_chat_data, row_to_conversation
from common.datums import (
    DatumError,
    chat_tokens,
    conversation_datum,
    decode_completion,
    rollout_datum,
    weighted_nll,
)
from common.seeding import SEED_RANGE, derive_seed, seeded_rng
from local_tinker.models import build_tiny_chat_tokenizer
from train_sft import Config as SFTConfig
from train_sft import lr_at

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_chat_tokenizer()


def test_sft_datum_matches_the_seed_alignment(tokenizer):
    messages = [{"role": "user", "content": "What's the weather like today?"},
                {"role": "assistant", "content": "foo"}]
    datum = conversation_datum(tokenizer, messages, max_length=512)
    tokens = chat_tokens(tokenizer, messages, add_generation_prompt=False)
    prompt = chat_tokens(tokenizer, messages[:1], add_generation_prompt=True)
    assert datum.model_input.to_ints() == tokens[:-1]
    targets = datum.loss_fn_inputs["target_tokens"].to_numpy().tolist()
    weights = datum.loss_fn_inputs["weights"].to_numpy()
    assert targets == tokens[1:]
    # The seed: weights = [0]*len(prompt) + [1]*completion, then shifted by one.
    assert weights.tolist() == ([0] * len(prompt) + [1] * (len(tokens) - len(prompt)))[1:]
    trained = tokenizer.decode([t for t, w in zip(targets, weights, strict=True) if w])
    assert trained == "foo<|im_end|>\n"


def test_decode_completion_drops_the_end_of_turn(tokenizer):
    """The one decoding of sampled tokens (training rewards, evaluation, sample tables)."""
    tokens = tokenizer.encode("Add pairs: 3+5=8\n<answer>8</answer>", add_special_tokens=False)
    text = decode_completion(tokenizer, [*tokens, tokenizer.eos_token_id])
    assert text == "Add pairs: 3+5=8\n<answer>8</answer>"
    assert decode_completion(tokenizer, np.asarray(tokens, np.int32)) == text  # SDK arrays too
    assert decode_completion(tokenizer, []) == ""


def test_seed_derivation_is_stable_and_streams_are_unrelated():
    # The key format is part of the shipped data (held-out set, tiny models' corpora): these
    # values were drawn by `random.Random("eval:7:3")` before seeding.py existed.
    assert derive_seed("eval", 7, 3) == random.Random("eval:7:3").randrange(2**31)
    assert seeded_rng("arithmetic", 0, 5).random() == random.Random("arithmetic:0:5").random()
    seeds = {derive_seed(stream, 0, step, i) for stream in ("rl", "sft-samples")
             for step in range(1, 11) for i in range(8)}
    assert len(seeds) == 160 and all(0 <= s < SEED_RANGE for s in seeds)
    assert derive_seed("rl", 0, 1, 2) != derive_seed("rl", 0, 2, 1) != derive_seed("rl", 1, 1, 2)


def test_rl_datum_alignment(tokenizer):
    prompt, completion = [5, 6, 7, 8], [9, 10, 11]
    datum = rollout_datum(prompt, completion, [-0.1, -0.2, -0.3], advantage=1.5)
    inputs = {k: v.to_numpy().tolist() for k, v in datum.loss_fn_inputs.items()}
    assert datum.model_input.to_ints() == [5, 6, 7, 8, 9, 10]
    assert inputs["target_tokens"] == [6, 7, 8, 9, 10, 11]
    assert np.allclose(inputs["logprobs"], [0, 0, 0, -0.1, -0.2, -0.3])
    assert inputs["advantages"] == [0, 0, 0, 1.5, 1.5, 1.5]
    with pytest.raises(AssertionError, match="logprobs: 2 values, 3 tokens"):
        rollout_datum(prompt, completion, [-0.1, -0.2], advantage=1.0)


def test_weighted_nll_counts_only_weighted_tokens(tokenizer):
    from tinker import types
    datum = conversation_datum(tokenizer, [{"role": "user", "content": "q"},
                                           {"role": "assistant", "content": "a"}], 64)
    n = datum.model_input.length
    output = types.ForwardBackwardOutput(
        loss_fn_output_type="ArrayRecord", metrics={},
        loss_fn_outputs=[{"logprobs": types.TensorData.from_numpy(np.full(n, -2.0, np.float32))}])
    nll, weights = weighted_nll(output, [datum])
    assert weights == 3.0 and nll == pytest.approx(6.0)  # "a", "<|im_end|>", "\n"


def test_over_long_conversation(tokenizer):
    with pytest.raises(DatumError, match="over --max_length 10"):
        conversation_datum(tokenizer, [{"role": "user", "content": "a long question"},
                                       {"role": "assistant", "content": "x"}], max_length=10)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


GOOD = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}


@pytest.mark.parametrize("bad_row, problem", [
    ({"messages": []}, "'messages' is empty"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "unknown role 'wizard'"),
    ({"messages": [{"role": "user", "content": "only a question"}]}, "not an assistant turn"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]},
     "final assistant turn is empty"),
    ({"text": "no chat here"}, "no 'messages'"),
])
def test_bad_rows_name_file_and_row(tmp_path, bad_row, problem):
    path = write_jsonl(tmp_path / "chats.jsonl", [GOOD, GOOD, bad_row])
    with pytest.raises(DatasetError, match=f"chats.jsonl row 3: .*{problem}"):
        load_chat_data(path)
    data = load_chat_data(path, skip_invalid=True)
    assert len(data.conversations) == 2 and data.skipped == 1


def test_dataset_sources(tmp_path):
    assert len(load_chat_data("foo").conversations) == 20
    csv = tmp_path / "pc.csv"
    csv.write_text("prompt,completion\nhello,world\nhow are you,fine\n")
    data = load_chat_data(str(csv))
    assert data.conversations[1] == [{"role": "user", "content": "how are you"},
                                     {"role": "assistant", "content": "fine"}]
    solutions = load_chat_data("arithmetic-solutions", size=10, seed=1)
    assert len(solutions.conversations) == 10
    assert "<answer>" in solutions.conversations[0][-1]["content"]
    with pytest.raises(DatasetError, match="no such file"):
        load_chat_data(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DatasetError, match="unsupported file type '.txt'"):
        (tmp_path / "notes.txt").write_text("x")
        load_chat_data(str(tmp_path / "notes.txt"))
    with pytest.raises(DatasetError, match="nonsense: not a file"):
        load_chat_data("nonsense")
    with pytest.raises(DatasetError, match="--dataset nobody/no-such-dataset: could not load"):
        load_chat_data("nobody/no-such-dataset")  # HF_HUB_OFFLINE=1: fails fast, named
    (tmp_path / "broken.jsonl").write_text('{"messages": [\n')
    with pytest.raises(DatasetError, match="broken.jsonl line 1: not valid JSON"):
        load_chat_data(str(tmp_path / "broken.jsonl"))


def test_prompt_completion_with_message_prompt():
    row = {"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
           "completion": "c"}
    assert [m["role"] for m in row_to_conversation(row)] == ["system", "user", "assistant"]


def test_config_parsing_aliases_yaml_and_errors(tmp_path):
    cfg = parse_config(SFTConfig, ["--learning_rate=1e-4", "--batch_size", "4"])
    assert cfg.lr == 1e-4 and cfg.batch_size == 4
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("lr: 3.0e-4\nepochs: 2\n")
    cfg = parse_config(SFTConfig, ["--config_path", str(yaml_file), "--epochs", "7"])
    assert cfg.lr == 3e-4 and cfg.epochs == 7
    yaml_file.write_text("lr: 3.0e-4\nbatchsize: 2\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown keys \['batchsize'\]"):
        parse_config(SFTConfig, ["--config_path", str(yaml_file)])
    yaml_file.write_text("lr: [1,\n")
    with pytest.raises(ConfigError, match="c.yaml: not valid YAML"):
        parse_config(SFTConfig, [f"--config_path={yaml_file}"])
    with pytest.raises(ConfigError, match="no such file"):
        parse_config(SFTConfig, ["--config_path", str(tmp_path / "nope.yaml")])
    with pytest.raises(ConfigError, match="unrecognized arguments: --bogus"):
        parse_config(SFTConfig, ["--bogus", "1"])
    with pytest.raises(ConfigError, match="unrecognized arguments: --learning_rat"):
        parse_config(SFTConfig, ["--learning_rat", "1e-4"])  # no argparse prefix matching


def test_resolved_defaults_depend_on_backend_and_model():
    local = resolved(SFTConfig(), {}, lr=5e-4, tiny_lr=2e-3)
    assert (local.backend, local.model, local.lr) == ("local", "tiny-instruct", 2e-3)
    remote = resolved(SFTConfig(), {"TINKER_API_KEY": "k"}, lr=5e-4, tiny_lr=2e-3)
    assert (remote.backend, remote.model, remote.lr) == (
        "tinker", "Qwen/Qwen3-4B-Instruct-2507", 5e-4)
    explicit = resolved(SFTConfig(lr=1e-5), {}, lr=5e-4, tiny_lr=2e-3)
    assert explicit.lr == 1e-5


def test_warm_start_takes_the_model_of_its_source_run(tmp_path):
    (tmp_path / "config.yaml").write_text("model: tiny-math\nlr: 0.001\n")
    warm = resolved(train_rl.Config(load_checkpoint=str(tmp_path)), {}, lr=2e-4, tiny_lr=2e-4)
    assert (warm.model, warm.lr) == ("tiny-math", 2e-4)
    same = resolved(train_rl.Config(load_checkpoint=str(tmp_path), model="tiny-math"), {},
                    lr=2e-4, tiny_lr=2e-4)
    assert same.model == "tiny-math"
    with pytest.raises(ConfigError, match="--model: tiny-chat differs from tiny-math"):
        resolved(train_rl.Config(load_checkpoint=str(tmp_path), model="tiny-chat"), {},
                 lr=2e-4, tiny_lr=2e-4)


def test_lr_schedules():
    assert lr_at(1, 10, 1.0, "constant") == 1.0
    assert [lr_at(s, 10, 1.0, "constant", warmup_steps=4) for s in (1, 2, 4, 5)] == [
        0.25, 0.5, 1.0, 1.0]
    assert lr_at(1, 10, 1.0, "linear") == 1.0 and lr_at(10, 10, 1.0, "linear") == pytest.approx(0.1)
    assert lr_at(1, 10, 1.0, "cosine") == 1.0
    assert lr_at(6, 10, 1.0, "cosine") == pytest.approx(0.5)  # halfway through the decay
