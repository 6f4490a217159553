"""The local backend's `compile` setting: training passes through torch.compile give the eager
results (up to float rounding), with one graph for every batch shape; where compiling fails,
training goes on eagerly and the log says why. Compiling takes a minute on a cold cache: e2e."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import local_tinker
from common.datums import conversation_datum

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent


def batches(tokenizer) -> list[list]:
    """Four SFT batches of different widths: a graph specialised to one shape would recompile."""
    return [[conversation_datum(tokenizer, [{"role": "user", "content": "q" * (5 + 7 * b + i)},
                                            {"role": "assistant", "content": "foo"}], 512)
             for i in range(4)] for b in range(4)]


def train(root: Path, compile: bool) -> tuple[list[float], list[np.ndarray], dict, object]:
    """Per step: loss:sum and the first datum's logprobs; then the losses of a forward-only
    pass and of a one-row forward_backward, the dynamo counters, and the trained model's
    compiled_logprobs."""
    import torch._dynamo
    from tinker import types

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    with local_tinker.local_service(root, compile=compile) as (service, server):
        trainer = service.create_lora_training_client("tiny-chat", rank=8, seed=0).result()
        data = batches(trainer.get_tokenizer())
        losses, logprobs = [], []
        for batch in data + data:
            out = trainer.forward_backward(batch, "cross_entropy").result()
            trainer.optim_step(types.AdamParams(learning_rate=5e-3)).result()
            losses.append(out.metrics["loss:sum"])
            logprobs.append(out.loss_fn_outputs[0]["logprobs"].to_numpy())
        losses.append(trainer.forward(data[0], "cross_entropy").result().metrics["loss:sum"])
        one_row = trainer.forward_backward(data[1][:1], "cross_entropy").result()  # eager too
        losses.append(one_row.metrics["loss:sum"])
        model = server.runtime.model(trainer.model_id).model
        stats = dict(torch._dynamo.utils.counters["stats"])
        return losses, logprobs, stats, getattr(model, "compiled_logprobs", None)


def test_compiled_training_matches_eager(tmp_path):
    eager_losses, eager_logprobs, _, none = train(tmp_path / "eager", compile=False)
    losses, logprobs, stats, compiled = train(tmp_path / "compiled", compile=True)
    assert none is None
    assert compiled is not None and compiled.compiled, "the setting did not compile"
    # One graph for every width; forward-only passes and a one-row batch stay eager.
    assert stats.get("unique_graphs") == 1, stats
    assert losses[-2] < 0.8 * losses[0]  # it trains: batch 0 after two epochs, against before
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-4)
    for ours, eager in zip(logprobs, eager_logprobs, strict=True):
        np.testing.assert_allclose(ours, eager, rtol=1e-4, atol=1e-5)


def test_compile_failure_trains_eagerly(tmp_path):
    """No C++ compiler (CXX names none, the cache is empty): one warning, then eager training
    with exactly the eager losses."""
    script = (
        "import sys, json\n"
        "from pathlib import Path\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from tests.test_compile import train\n"
        "root = Path(sys.argv[2])\n"
        "eager, _, _, _ = train(root / 'eager', compile=False)\n"
        "tried, _, _, compiled = train(root / 'compiled', compile=True)\n"
        "print(json.dumps({'eager': eager, 'tried': tried, 'fell_back': compiled.run is None}))\n"
    )
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"),
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor-cache")}
    done = subprocess.run([sys.executable, "-c", script, str(ROOT), str(tmp_path)], env=env,
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["fell_back"]
    assert result["tried"] == result["eager"]  # eager, bit for bit
    warnings = [line for line in done.stderr.splitlines() if "torch.compile failed" in line]
    assert len(warnings) == 1, done.stderr[-3000:]
    assert "training runs eagerly: InductorError: InvalidCxxCompiler" in warnings[0]


def test_the_scripts_server_compiles_when_the_environment_says_so(tmp_path):
    """LOCAL_TINKER_COMPILE=1 reaches the server train_sft.py starts, which says so; the run
    completes with the loss of its eager twin (both tracked offline in tmp_path)."""
    def run(name: str, compile: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "LOCAL_TINKER_COMPILE": compile, "WANDB_MODE": "offline",
               "LOCAL_TINKER_ROOT": str(tmp_path / "checkpoints")}
        return subprocess.run(
            [sys.executable, "train_sft.py", "--max_steps", "6",
             "--sample_every", "0", "--log_dir", str(tmp_path / name)],
            env=env, capture_output=True, text=True, cwd=ROOT, timeout=900)

    compiled, eager = run("compiled", "1"), run("eager", "0")
    assert compiled.returncode == 0 and eager.returncode == 0, compiled.stderr[-3000:]
    assert "training passes through torch.compile" in compiled.stderr
    assert "torch.compile" not in eager.stderr
    final = [json.loads(line)["train/loss"]
             for line in [(tmp_path / name / "metrics.jsonl").read_text().splitlines()[-1]
                          for name in ("compiled", "eager")]]
    assert final[0] == pytest.approx(final[1], rel=1e-4)
