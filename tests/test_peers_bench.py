"""bench/peers.py: a 2-step smoke of every side (ours and TRL, SFT and RL).

TRL is not part of the main install (bench/requirements.txt), so this skips without it; run it
from the bench venv: `.venv-bench/bin/python -m pytest -m e2e tests/test_peers_bench.py`.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.e2e
def test_peers_smoke(tmp_path):
    out = tmp_path / "peers.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "peers.py"), "--sft_steps", "2", "--sft_batch", "4",
         "--rl_steps", "2", "--rl_problems", "2", "--group", "2", "--max_tokens", "64",
         # tiny-instruct writes answer tags, so rewards differ within a group and train_rl trains
         # (a 2-step warm start of tiny-math never does: every group ties, no loss is logged).
         "--rl_model", "tiny-instruct", "--repeats", "1", "--threads", "1", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "headline: SFT: ours" in proc.stdout and "RL: ours" in proc.stdout
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"ours-sft", "trl-sft", "ours-rl", "trl-rl"}
    for side, r in results.items():
        assert r["steps"] == 2, side
        assert r["s_per_step"] > 0 and r["tokens_per_s"] > 0 and r["peak_rss_mb"] > 0, side
        assert r["loop_s_per_step"] > 0, side  # step start to step start: two steps, one gap
        assert math.isfinite(r["final_loss"]), side
    # Same init, same first batch, same loss: the first SFT step's loss agrees.
    assert results["ours-sft"]["losses"][0] == pytest.approx(results["trl-sft"]["losses"][0],
                                                             rel=1e-4)
    # Same batches, so the same trained tokens; the same problems and group shape for RL.
    assert results["ours-sft"]["tokens"] == results["trl-sft"]["tokens"]
    assert results["ours-rl"]["sampled_tokens"] <= 2 * 2 * 2 * 64
    assert results["trl-rl"]["sampled_tokens"] <= 2 * 2 * 2 * 64
    assert 0 <= results["trl-rl"]["final_reward"] and 0 <= results["ours-rl"]["final_reward"]


@pytest.mark.e2e
def test_peers_interleaved_smoke():
    # Both SFT sides at once, in turns of 2 steps: 2 timed turns each after an untimed one.
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "peers.py"), "--sides", "ours-sft,trl-sft",
         "--sft_batch", "4", "--interleave", "2", "--turns", "2", "--threads", "1", "--compile"],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 turns of 2 steps a side" in proc.stdout
    assert "torch.compile: ours," in proc.stdout  # and the first step (compiling) went untimed
    assert proc.stdout.count("of a core while paused") == 2
    assert "headline: SFT: ours" in proc.stdout and "turn by turn" in proc.stdout
