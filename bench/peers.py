"""TRL side by side: train_sft.py against TRL's SFTTrainer, train_rl.py against its GRPOTrainer.

Each side trains the same local model from the same LoRA init (rank, alpha 32, seed: the local
backend's own recipe) with the same optimizer (AdamW, betas (0.9, 0.95), eps 1e-12, no weight
decay, no clipping, constant LR), batch shape and number of steps, on the same data in the same
order: SFT on the shipped `foo` conversations (tiny-chat), batch by batch as train_sft.py orders
them, loss on the final assistant turn only; RL on the project's problem stream (problem k of
seed s), `group` samples per problem at the same temperature and max tokens, scored by the
project's own reward (common/tasks.py), GRPO group advantages, no KL. The RL model is tiny-math
after a short SFT warm start (merged into a plain model directory both sides load): base
tiny-math never writes an answer tag, so all rewards would be 0 and train_rl would train on
nothing. Every side runs in its own process, so imports and peak memory do not mix; ours runs
train_sft.main / train_rl.main through the SDK and the embedded local server, as a user does.

With --interleave N the two SFT sides run at once, taking turns of N steps (each waits while the
other runs), and the headline pairs adjacent turns: this machine's speed drifts by up to a third
from minute to minute, which whole runs minutes apart cannot tell from a difference of a few %.

Measured per side: steady-state wall time per step, twice: over the whole loop (one step's start
to the next's, so what a side does between its steps counts: logging, fetching the next batch;
the headline's steps/s) and in each side's own timed window (train_*.py's time/step; TRL's
on_step_begin to on_step_end), each the median of the steps after the first, and before the
last, which carries train_sft's/train_rl's final checkpoint and samples table (all steps when
there are fewer than three); tokens per second (median over those steps; SFT: trained
tokens; RL: sampled + trained tokens, each side counting what it really processed: train_rl
skips groups whose rewards are all equal, TRL trains on every rollout), peak RSS of the process
and its growth over the RSS after imports, and the final loss / mean reward.

Not identical, because TRL does not allow it (see README "Benchmarks"): TRL refuses a LoRA
adapter on lm_head (its fused LM head reads lm_head.weight directly), which the local backend
always trains, so TRL's adapter is attention + MLP only; TRL's policy loss uses
log-probabilities at the sampling temperature, ours the raw ones (Tinker's definition); TRL
normalises the loss per token of the batch ("dapo"), ours is a sum (Tinker's `loss:sum`, so with
Adam only the per-step scale differs); TRL's group std is unbiased with eps 1e-4, ours population
with 1e-8; sampling: transformers' `generate` vs the local engine, so the same seed draws
different samples.

    python3 -m venv .venv-bench && .venv-bench/bin/pip install -r requirements.txt \\
        -r bench/requirements.txt
    .venv-bench/bin/python bench/peers.py --sides ours-sft,trl-sft     # ~2 min
    .venv-bench/bin/python bench/peers.py --sides ours-sft,trl-sft --interleave 50 --turns 16
    .venv-bench/bin/python bench/peers.py       # + RL 5 steps, 3 rounds: ~40 min on 2 busy cores
    .venv-bench/bin/python bench/peers.py --rl_steps 10 --max_tokens 128 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.guards import Spread, speed_ratio  # noqa: E402

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")  # no hub here: a lookup would retry for tens of seconds
os.environ.setdefault("WANDB_SILENT", "true")

SIDES = ("ours-sft", "trl-sft", "ours-rl", "trl-rl")
# A paused side may use this much of a core while the other side's turn runs (heartbeats, a
# logger's flush); more, and the turns time both sides' work together.
PAUSED_CPU_LIMIT = 0.05


# ---------------------------------------------------------------------------------------------
# Measurements shared by every side


def rss_now_mb() -> float:
    """Resident set size of this process now (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def steady(step_s: list[float]) -> list[int]:
    """Indices of the steps that time the loop itself: not the first (warm-up: allocator,
    first-call paths) and not the last (train_sft/train_rl save the final checkpoint and log
    a samples table there), unless that leaves nothing."""
    return list(range(1, len(step_s) - 1)) if len(step_s) >= 3 else list(range(len(step_s)))


def summarize(side: str, step_s: list[float], tokens: list[int], final: dict[str, float],
              rss_after_imports: float, extra: dict | None = None,
              step_starts: list[float] | None = None) -> dict:
    """`step_s`: each step's own timed window; `step_starts`: a clock reading at the same point
    of every step, whose differences time the whole loop (what the window leaves out included:
    logging, the next batch, the progress bar)."""
    keep = steady(step_s)
    starts = step_starts or []
    intervals = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    return {  # medians: other jobs on the machine make single steps slow at random
        "side": side,
        "steps": len(step_s),
        "s_per_step": statistics.median(step_s[i] for i in keep),
        "loop_s_per_step": statistics.median(intervals[i] for i in steady(intervals))
        if intervals else math.nan,
        "best_s_per_step": min(step_s[i] for i in keep),  # the least disturbed by other jobs
        "tokens_per_s": statistics.median(tokens[i] / step_s[i] for i in keep),
        "loop_s": sum(step_s),
        "tokens": sum(tokens),
        "peak_rss_mb": peak_rss_mb(),
        "rss_growth_mb": peak_rss_mb() - rss_after_imports,
        "threads": __import__("torch").get_num_threads(),
        "step_s": step_s,
        **final,
        **(extra or {}),
    }


def lora_model(base, rank: int, seed: int):
    """The local backend's LoRA on a fresh copy of `base` (local_tinker/runtime.py), less the
    adapter on lm_head: TRL refuses one (its fused LM head reads lm_head.weight directly, so the
    adapter would never train). lm_head comes last, so every other adapter's init is ours."""
    import peft
    import torch

    from local_tinker.models import lora_target_modules
    from local_tinker.runtime import LORA_ALPHA

    model = base.fresh_copy()
    config = peft.LoraConfig(r=rank, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                             target_modules=lora_target_modules(model, True, True, False))
    with torch.random.fork_rng(devices=[]):  # the same init as create_lora_training_client
        torch.manual_seed(seed)
        return peft.get_peft_model(model, config)


def trainer_args(spec: dict, out_dir: str, lr: float, batch: int, steps: int) -> dict:
    """TrainingArguments that match the local backend's optimizer and train_*.py's loop."""
    return dict(
        output_dir=out_dir, per_device_train_batch_size=batch, gradient_accumulation_steps=1,
        max_steps=steps, learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0,
        optim="adamw_torch", adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-12,
        weight_decay=0.0, max_grad_norm=0.0,  # AdamParams' defaults: no clipping
        bf16=False, fp16=False, gradient_checkpointing=False,  # fp32 like the local backend
        use_cpu=True, seed=spec["seed"], logging_steps=1, save_strategy="no",
        eval_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0,
        torch_compile=spec["trl_compile"],
    )


def step_timer():
    """A TrainerCallback that records each optimizer step's wall time and the logged loss."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.turns = Turns()
            self.step_s: list[float] = []
            self.starts: list[float] = []
            self.losses: list[float] = []
            self._t0 = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.turns.step()
            self._t0 = time.perf_counter()
            self.starts.append(self._t0)

        def on_step_end(self, args, state, control, **kwargs):
            self.step_s.append(time.perf_counter() - self._t0)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    return StepTimer()


def read_metrics(log_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()
            if line.strip()]


class Turns:
    """In a child under --interleave: at the start of step 1 and of every `every` steps after
    it, tell the parent and wait for its go. The two SFT sides then run in alternating turns of
    steps within one stretch of time, instead of in whole runs minutes apart, so this machine's
    drifting speed (a third from minute to minute) hits both sides alike."""

    def __init__(self) -> None:
        given = os.environ.get("PEERS_TURNS")  # "read fd,write fd,steps per turn"
        self.read_fd, self.write_fd, self.every = map(int, given.split(",")) if given else (0,) * 3
        self.steps = 0
        self.paused_s = self.paused_cpu_s = 0.0  # this process's CPU while the other side ran

    def step(self) -> None:
        if self.every and self.steps % self.every == 0:
            os.write(self.write_fd, b".")
            wall, cpu = time.perf_counter(), time.process_time()
            if os.read(self.read_fd, 1) != b"g":
                raise SystemExit("peers: the parent went away")
            self.paused_s += time.perf_counter() - wall
            self.paused_cpu_s += time.process_time() - cpu
        self.steps += 1

    def record(self) -> dict[str, float]:
        return {"paused_s": self.paused_s, "paused_cpu_s": self.paused_cpu_s}


# ---------------------------------------------------------------------------------------------
# SFT: train_sft.py vs SFTTrainer


def sft_plan(spec: dict) -> dict:
    """train_sft.py's batches (its split and per-epoch shuffle), as conversations per step."""
    import train_sft
    from common.data import load_chat_data
    from common.datums import conversation_datum
    from local_tinker.models import load_base_model

    cfg = sft_config(spec, log_dir=None)
    data = load_chat_data(cfg.dataset, cfg.dataset_split, cfg.skip_invalid, cfg.seed,
                          cfg.dataset_size)
    tokenizer = load_base_model(spec["sft_model"]).tokenizer
    split = train_sft.split_data(data, tokenizer, cfg)
    rows = data.conversations  # split_data keeps every row here (no skips, no eval split)
    steps_per_epoch = len(split.train_idx) // cfg.batch_size
    batches = []
    for step in range(1, cfg.max_steps + 1):
        epoch, slot = divmod(step - 1, steps_per_epoch)
        order = train_sft.epoch_order(len(split.train_idx), cfg.seed, epoch)
        batches.append([rows[split.train_idx[i]]
                        for i in order[slot * cfg.batch_size:(slot + 1) * cfg.batch_size]])
    tokens = [sum(conversation_datum(tokenizer, c, cfg.max_length).model_input.length
                  for c in batch) for batch in batches]
    return {"batches": batches, "tokens": tokens}


def sft_config(spec: dict, log_dir: Path | None):
    import train_sft

    return train_sft.Config(
        backend="local", model=spec["sft_model"], dataset="foo", eval_fraction=0.0,
        batch_size=spec["sft_batch"], max_steps=spec["sft_steps"], epochs=10**6,
        lr=spec["sft_lr"], lora_rank=spec["lora_rank"], seed=spec["seed"], log_dir=log_dir,
        wandb_mode="disabled", save_every=0, sample_every=0)


def run_ours(name: str, script: str, make_config, spec: dict, work: Path):
    """One of our training scripts, in this process: (its final metrics, its metrics.jsonl rows,
    RSS before it ran)."""
    import importlib

    import torch  # noqa: F401  (imported before the baseline, as on the TRL side)

    main = importlib.import_module(script).main
    if spec["compile"]:  # the embedded server's setting (common/backend.py reads it)
        os.environ["LOCAL_TINKER_COMPILE"] = "1"
    rss = rss_now_mb()
    final = main(make_config(spec, work / name))
    return final, read_metrics(work / name), rss


def run_ours_sft(spec: dict, work: Path) -> dict:
    import tinker

    turns, send = Turns(), tinker.TrainingClient.forward_backward

    def forward_backward(self, *args, **kwargs):  # one a step: no held-out set, no samples
        turns.step()
        return send(self, *args, **kwargs)

    if turns.every:  # only under --interleave: whole runs time the SDK as it ships
        tinker.TrainingClient.forward_backward = forward_backward
    final, rows, rss = run_ours("ours-sft", "train_sft", sft_config, spec, work)
    return summarize("ours-sft", [r["time/step"] for r in rows],
                     [r["tokens/trained"] for r in rows], {"final_loss": final["train/loss"]}, rss,
                     {"losses": [r["train/loss"] for r in rows], **turns.record()},
                     [r["_time"] for r in rows])


def run_trl_sft(spec: dict, work: Path) -> dict:
    import datasets
    import torch  # noqa: F401
    import trl
    from torch.utils.data import SequentialSampler

    from local_tinker.models import load_base_model

    rss = rss_now_mb()
    plan = spec["sft_plan"]
    rows = [{"prompt": conv[:-1], "completion": conv[-1:]} for batch in plan["batches"]
            for conv in batch]
    base = load_base_model(spec["sft_model"])
    model = lora_model(base, spec["lora_rank"], spec["seed"])

    class InOrder(trl.SFTTrainer):  # the dataset already holds train_sft's batches in order
        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

    timer = step_timer()
    trainer = InOrder(
        model=model, processing_class=base.tokenizer,
        train_dataset=datasets.Dataset.from_list(rows),
        args=trl.SFTConfig(**trainer_args(spec, str(work / "trl-sft"), spec["sft_lr"],
                                          spec["sft_batch"], spec["sft_steps"]),
                           max_length=2048, completion_only_loss=True, shuffle_dataset=False,
                           packing=False),
        callbacks=[timer])
    trainer.train()
    return summarize("trl-sft", timer.step_s, plan["tokens"], {"final_loss": timer.losses[-1]},
                     rss, {"losses": timer.losses, "trl": trl.__version__, **timer.turns.record()},
                     timer.starts)


# ---------------------------------------------------------------------------------------------
# RL: train_rl.py vs GRPOTrainer


def run_warm_start(spec: dict, work: Path) -> dict:
    """The RL base model: tiny-math after a short SFT on plain worked solutions, merged.

    Base tiny-math never writes an answer tag, so every reward would be 0 and train_rl would
    skip every group (nothing trained on our side). A short warm start on the task's own worked
    solutions (common/data.py; plain ones only, so answers fit in a few dozen tokens) gives
    groups with mixed rewards. Its LoRA is merged and saved as a plain Hugging Face model, which
    the local backend serves by path and TRL loads as is: both RL sides start from it.
    """
    import torch

    import train_sft
    from common.arithmetic import Difficulty, solutions_dataset
    from common.checkpoints import last_checkpoint
    from local_tinker.models import load_base_model
    from local_tinker.runtime import PLACEHOLDER_OWNER, Runtime, _assign, _lora_model

    data = work / "warm-start.jsonl"
    rows = solutions_dataset(spec["warm_rows"], spec["seed"], Difficulty(), verbose_rate=0.0)
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    log_dir = work / "warm-start"
    train_sft.main(train_sft.Config(
        backend="local", model="tiny-math", dataset=str(data), eval_fraction=0.0, batch_size=8,
        max_steps=spec["warm_steps"], epochs=10**6, lr=2e-3, lora_rank=spec["lora_rank"],
        seed=spec["seed"], log_dir=log_dir, wandb_mode="disabled", save_every=0, sample_every=0))
    path = last_checkpoint(log_dir, "sampler")["path"]
    directory, meta = Runtime(Path(os.environ["LOCAL_TINKER_ROOT"]), torch.device("cpu")) \
        .checkpoint(path, PLACEHOLDER_OWNER)  # the scripts' key wrote it
    base = load_base_model("tiny-math")
    model = _lora_model(base, meta["lora"], torch.device("cpu"))
    _assign(model, torch.load(directory / "adapter.pt", map_location="cpu"))
    out = Path(spec["warm_dir"])
    model.merge_and_unload().save_pretrained(out)
    base.tokenizer.save_pretrained(out)
    return {"side": "warm-start", "model": str(out),
            "final_loss": read_metrics(log_dir)[-1]["train/loss"]}


def rl_config(spec: dict, log_dir: Path | None):
    import train_rl

    return train_rl.Config(
        backend="local", model=spec["rl_model"], batch_size=spec["rl_problems"],
        group_size=spec["group"], max_steps=spec["rl_steps"], max_tokens=spec["max_tokens"],
        temperature=spec["temperature"], lr=spec["rl_lr"], lora_rank=spec["lora_rank"],
        seed=spec["seed"], loss_fn="importance_sampling", advantage="group", eval_problems=0,
        log_dir=log_dir, wandb_mode="disabled", save_every=0, sample_every=0)


def run_ours_rl(spec: dict, work: Path) -> dict:
    final, rows, rss = run_ours("ours-rl", "train_rl", rl_config, spec, work)
    # A step whose groups all tied trains nothing and logs no loss: NaN in its place.
    losses = [r.get("train/loss", math.nan) for r in rows]
    return summarize("ours-rl", [r["time/step"] for r in rows],
                     [r["tokens/sampled"] + r["tokens/trained"] for r in rows],
                     {"final_reward": final["reward/mean"], "final_accuracy": final["rl/accuracy"],
                      "mean_reward": statistics.mean(r["reward/mean"] for r in rows),
                      "final_loss": losses[-1]}, rss,
                     {"losses": losses,
                      "rewards": [r["reward/mean"] for r in rows],
                      "sampled_tokens": sum(r["tokens/sampled"] for r in rows),
                      "trained_tokens": sum(r["tokens/trained"] for r in rows)},
                     [r["_time"] for r in rows])


def run_trl_rl(spec: dict, work: Path) -> dict:
    import datasets
    import numpy as np
    import torch  # noqa: F401
    import trl

    import train_rl
    from common.datums import chat_tokens
    from local_tinker.models import load_base_model

    rss = rss_now_mb()
    cfg = rl_config(spec, None)
    task = train_rl.make_task(cfg)
    base = load_base_model(spec["rl_model"])
    n = cfg.batch_size * cfg.max_steps
    problems = [task.train(cfg.seed, k) for k in range(n)]  # train_rl's stream, in its order
    prompt_len = [len(chat_tokens(base.tokenizer, p.messages, True)) for p in problems]
    per_step: list[dict] = []

    def project_reward(prompts, completions, completion_ids, trainer_state, index, **_):
        """train_rl's reward (task.reward, the concise bonus after the same step)."""
        step = trainer_state.global_step + 1
        concise = cfg.concise_bonus_after is not None and step > cfg.concise_bonus_after
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        parts = [task.reward(problems[k], t, concise) for k, t in zip(index, texts, strict=True)]
        per_step.append({
            "reward": float(np.mean([r["total"] for r in parts])),
            "accuracy": float(np.mean([r["correct"] > 0 for r in parts])),
            "sampled": sum(map(len, completion_ids)),
            # TRL trains on every rollout (zero-advantage groups too): prompt + completion - 1
            "trained": sum(prompt_len[k] + len(c) - 1 for k, c in zip(index, completion_ids,
                                                                      strict=True)),
        })
        return [r["total"] for r in parts]

    rows = [{"prompt": p.messages, "index": k} for k, p in enumerate(problems)]
    timer = step_timer()
    trainer = trl.GRPOTrainer(
        model=lora_model(base, cfg.lora_rank, cfg.seed), processing_class=base.tokenizer,
        reward_funcs=project_reward, train_dataset=datasets.Dataset.from_list(rows),
        args=trl.GRPOConfig(
            **trainer_args(spec, str(work / "trl-rl"), cfg.lr, cfg.batch_size * cfg.group_size,
                           cfg.max_steps),
            num_generations=cfg.group_size, max_completion_length=cfg.max_tokens,
            temperature=cfg.temperature, top_p=1.0, top_k=0, beta=0.0, num_iterations=1,
            loss_type="dapo", scale_rewards="group", shuffle_dataset=False, use_vllm=False,
            log_completions=False),
        callbacks=[timer])
    trainer.train()
    tokens = [s["sampled"] + s["trained"] for s in per_step]
    return summarize("trl-rl", timer.step_s, tokens,
                     {"final_reward": per_step[-1]["reward"],
                      "final_accuracy": per_step[-1]["accuracy"],
                      "mean_reward": statistics.mean(s["reward"] for s in per_step),
                      "final_loss": timer.losses[-1]}, rss,
                     {"losses": timer.losses, "rewards": [s["reward"] for s in per_step],
                      "sampled_tokens": sum(s["sampled"] for s in per_step),
                      "trained_tokens": sum(s["trained"] for s in per_step),
                      "trl": trl.__version__}, timer.starts)


RUNNERS = {"ours-sft": run_ours_sft, "trl-sft": run_trl_sft, "ours-rl": run_ours_rl,
           "trl-rl": run_trl_rl, "warm-start": run_warm_start}


# ---------------------------------------------------------------------------------------------
# The parent: one subprocess per side, then the table


def side_command(side: str, spec_path: Path, work: Path) -> list[str]:
    """A child running one side, its result written to work/<side>.json."""
    return [sys.executable, __file__, "--one", side, "--spec", str(spec_path),
            "--out", str(work / f"{side}.json")]


def side_env(threads: int, **extra: str) -> dict[str, str]:
    # Both sides compute on the same torch threads (OMP_NUM_THREADS, which torch reads and the
    # local backend honours): the comparison is of the engines, not of thread defaults.
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), **extra}
    env.pop("LOCAL_TINKER_THREADS", None)
    return env


def run_side(side: str, spec_path: Path, work: Path, threads: int) -> dict:
    out = work / f"{side}.json"
    started = time.perf_counter()
    load = os.getloadavg()[0]
    proc = subprocess.run(side_command(side, spec_path, work), cwd=ROOT, capture_output=True,
                          text=True, env=side_env(threads))
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"{side} failed (exit {proc.returncode})")
    result = json.loads(out.read_text())
    result["process_s"] = time.perf_counter() - started
    result["load_before"] = load
    return result


def paused_cpu_share(result: dict) -> float:
    """Cores' worth of CPU a side used while paused for the other's turn."""
    return result["paused_cpu_s"] / result["paused_s"] if result["paused_s"] else 0.0


def run_interleaved(spec: dict, spec_path: Path, work: Path, threads: int, every: int,
                    turns: int) -> None:
    """Both SFT sides started together, then run in alternating turns of `every` steps (Turns),
    the order flipping each turn; the headline pairs each turn of ours with the adjacent one of
    TRL's. The first turn (warm-up) is not timed."""
    sides = ("ours-sft", "trl-sft")
    procs, go, done = {}, {}, {}
    for side in sides:
        go_read, go[side] = os.pipe()
        done[side], done_write = os.pipe()
        with open(work / f"{side}.log", "w") as log:
            procs[side] = subprocess.Popen(
                side_command(side, spec_path, work), cwd=ROOT, stdout=log,
                stderr=subprocess.STDOUT, pass_fds=(go_read, done_write),
                env=side_env(threads, PEERS_TURNS=f"{go_read},{done_write},{every}"))
        os.close(go_read)
        os.close(done_write)

    def failed(side: str) -> SystemExit:
        procs[side].wait()
        sys.stderr.write((work / f"{side}.log").read_text()[-8000:])
        return SystemExit(f"{side} failed (exit {procs[side].returncode})")

    def turn_ended(side: str) -> None:
        if os.read(done[side], 1) != b".":  # the child ended without reaching its turn
            raise failed(side)

    for side in sides:
        turn_ended(side)  # loaded and at its first step
    load_before = os.getloadavg()[0]
    s_per_step: dict[str, list[float]] = {side: [] for side in sides}
    for turn in range(turns + 1):
        for side in sides if turn % 2 == 0 else sides[::-1]:
            started = time.perf_counter()
            os.write(go[side], b"g")
            turn_ended(side)
            s_per_step[side].append((time.perf_counter() - started) / every)
    for side in sides:  # the last step, then the child writes its result and exits
        os.write(go[side], b"g")
        if procs[side].wait() != 0:
            raise failed(side)
    results = {side: json.loads((work / f"{side}.json").read_text()) for side in sides}
    for side, result in results.items():  # a side that skipped steps timed other work
        if result["steps"] != spec["sft_steps"]:
            raise SystemExit(f"refused: {side} ran {result['steps']} steps, not "
                             f"{spec['sft_steps']}")
    ours, theirs = s_per_step["ours-sft"][1:], s_per_step["trl-sft"][1:]
    tokens = sum(spec["sft_plan"]["tokens"])
    print(f"\nSFT: {spec['sft_model']}, foo, batch {spec['sft_batch']}, LoRA rank "
          f"{spec['lora_rank']}, lr {spec['sft_lr']:g}; {turns} turns of {every} steps a side, "
          f"taking turns (after one untimed turn each)")
    print(f"torch threads {threads} on both sides{compiled(spec)}, {os.cpu_count()} CPUs; "
          "1-min load average "
          f"{load_before:.1f} before the turns, {os.getloadavg()[0]:.1f} after")
    for side, times in (("ours-sft", ours), ("trl-sft", theirs)):
        spread = Spread.of(times)
        print(f"{side:10} {spread.median:.4f} s/step (IQR {spread.low:.4f}..{spread.high:.4f}), "
              f"final loss {results[side]['final_loss']:.4f}, "
              f"{paused_cpu_share(results[side]):.0%} of a core while paused")
    busy = [side for side in sides if paused_cpu_share(results[side]) > PAUSED_CPU_LIMIT]
    if busy:  # it took CPU from the other side's turns: the ratio would time both at once
        raise SystemExit(f"refused: {', '.join(busy)} kept over {PAUSED_CPU_LIMIT:.0%} of a core "
                         "busy while paused")
    print(f"headline: SFT: ours {speed_ratio(ours, theirs, tokens, tokens).text} TRL's steps/s, "
          "turn by turn over the whole loop")


def compiled(spec: dict) -> str:
    sides = [name for name, on in (("ours", spec["compile"]), ("TRL's", spec["trl_compile"]))
             if on]
    return f"; torch.compile: {' and '.join(sides)}" if sides else ""


def fmt(value: float, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:,.{digits}f}"


def median_runs(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Each side's median run by s/step (the lower middle one of an even count)."""
    return {side: sorted(rs, key=lambda r: r["s_per_step"])[(len(rs) - 1) // 2]
            for side, rs in runs.items()}


def report(runs: dict[str, list[dict]], spec: dict, threads: str) -> None:
    """Each side's median run in the table; the headline's ratios pair the sides' runs repeat
    by repeat (bench/guards.py), refused when a side did no work or noise swamps them."""
    results = median_runs(runs)
    print(f"\nSFT: {spec['sft_model']}, foo, batch {spec['sft_batch']}, {spec['sft_steps']} steps, "
          f"LoRA rank {spec['lora_rank']}, lr {spec['sft_lr']:g}")
    rl_model = (f"tiny-math + {spec['warm_steps']}-step SFT warm start"
                if spec.get("warm_dir") == spec["rl_model"] else spec["rl_model"])
    print(f"RL:  {rl_model}, {spec['rl_problems']} problems x {spec['group']} samples, "
          f"<= {spec['max_tokens']} tokens, T={spec['temperature']}, {spec['rl_steps']} steps, "
          f"lr {spec['rl_lr']:g}")
    loads = [r["load_before"] for rs in runs.values() for r in rs]
    print(f"torch threads {threads} on both sides{compiled(spec)}, {os.cpu_count()} CPUs; "
          "1-min load average "
          f"{min(loads):.1f}..{max(loads):.1f} before the sides' runs (other jobs share this "
          "machine)")
    print(f"{'side':10}{'loop s/step':>12}{'s/step':>9}{'best':>8}{'tok/s':>9}"
          f"{'peak MB':>9}{'+MB':>7}"
          f"{'final loss':>12}{'reward':>8}{'mean':>7}{'acc':>6}{'tokens':>9}")
    for side, r in results.items():
        print(f"{side:10}{fmt(r['loop_s_per_step'], 3):>12}{fmt(r['s_per_step'], 3):>9}"
              f"{fmt(r['best_s_per_step'], 3):>8}"
              f"{fmt(r['tokens_per_s'], 0):>9}"
              f"{fmt(r['peak_rss_mb'], 0):>9}{fmt(r['rss_growth_mb'], 0):>7}"
              f"{fmt(r.get('final_loss'), 4):>12}{fmt(r.get('final_reward')):>8}"
              f"{fmt(r.get('mean_reward')):>7}{fmt(r.get('final_accuracy')):>6}{r['tokens']:>9,}")
    print("loop s/step: the whole loop, one step's start to the next's (logging and the next "
          "batch included); s/step: the step's own timed window (train_*.py's time/step, TRL's "
          "on_step_begin to on_step_end); both medians over the steps after the first and before "
          "the last (best: the fastest window), of each side's median run; +MB: peak RSS over the "
          "RSS after imports; reward/acc: last step, mean: over all steps")
    lines = []
    for kind in ("sft", "rl"):
        ours, theirs = runs.get(f"ours-{kind}"), runs.get(f"trl-{kind}")
        if ours and theirs:
            work = (sum(r["tokens"] for r in ours), sum(r["tokens"] for r in theirs))
            loop = speed_ratio([r["loop_s_per_step"] for r in ours],
                               [r["loop_s_per_step"] for r in theirs], *work)
            steps = speed_ratio([r["s_per_step"] for r in ours],
                                [r["s_per_step"] for r in theirs], *work)
            tokens = speed_ratio([1 / r["tokens_per_s"] for r in ours],
                                 [1 / r["tokens_per_s"] for r in theirs], *work)
            rss = results[f"ours-{kind}"]["peak_rss_mb"] / results[f"trl-{kind}"]["peak_rss_mb"]
            lines.append(f"{kind.upper()}: ours {loop.text} TRL's steps/s over the whole loop "
                         f"({steps.text} in the steps' timed windows), {tokens.text} its "
                         f"tokens/s, {rss:.2f}x its peak RSS")
    print("headline: " + "; ".join(lines))
    for kind in ("rl",):
        ours, theirs = results.get(f"ours-{kind}"), results.get(f"trl-{kind}")
        if ours and theirs:
            print(f"RL tokens: ours sampled {ours['sampled_tokens']:,} / trained "
                  f"{ours['trained_tokens']:,}; TRL sampled {theirs['sampled_tokens']:,} / trained "
                  f"{theirs['trained_tokens']:,} (train_rl skips groups with equal rewards)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft_steps", type=int, default=20)
    parser.add_argument("--sft_batch", type=int, default=8)
    parser.add_argument("--sft_model", default="tiny-chat")
    parser.add_argument("--sft_lr", type=float, default=2e-3, help="train_sft's tiny-chat default")
    parser.add_argument("--rl_steps", type=int, default=5)
    parser.add_argument("--rl_problems", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--max_tokens", type=int, default=96,
                        help="3-pair worked answers need ~80 byte tokens: at 64 most are cut off")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--rl_model", default=None,
                        help="a local model dir; default: tiny-math after a short warm start (base "
                             "tiny-math and tiny-chat never write an answer tag, so every reward "
                             "is 0 and train_rl would skip every group)")
    parser.add_argument("--warm_steps", type=int, default=40, help="SFT steps of the warm start")
    parser.add_argument("--warm_rows", type=int, default=320)
    parser.add_argument("--rl_lr", type=float, default=2e-4, help="train_rl's default")
    parser.add_argument("--lora_rank", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sides", default=",".join(SIDES), help="comma-separated subset")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds of every side, in rotating order; medians over them")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for both sides (default: what the local backend "
                             "picks from cores and load, measured once at the start)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--interleave", type=int, default=0, metavar="STEPS",
                        help="SFT sides only: run both at once in alternating turns of STEPS "
                             "steps (--turns of them, timed) instead of whole runs in turn")
    parser.add_argument("--turns", type=int, default=30, help="timed turns with --interleave")
    parser.add_argument("--compile", action="store_true",
                        help="our sides' training passes through torch.compile (the local "
                             "backend's LOCAL_TINKER_COMPILE); the first step, which compiles, "
                             "is left out of the timings as always")
    parser.add_argument("--trl_compile", action="store_true",
                        help="TRL's sides with TrainingArguments(torch_compile=True)")
    parser.add_argument("--one", choices=[*SIDES, "warm-start"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:  # a child: one side, its result as JSON
        spec = json.loads(args.spec.read_text())
        work = Path(tempfile.mkdtemp(prefix=f"peers-{args.one}-"))
        os.environ["LOCAL_TINKER_ROOT"] = str(work / "checkpoints")
        args.out.write_text(json.dumps(RUNNERS[args.one](spec, work)))
        return

    sides = [s for s in args.sides.split(",") if s]
    unknown = set(sides) - set(SIDES)
    if unknown:
        parser.error(f"--sides: unknown {sorted(unknown)}; known: {', '.join(SIDES)}")
    spec = {k: getattr(args, k) for k in ("sft_steps", "sft_batch", "sft_model", "sft_lr",
                                          "rl_steps", "rl_problems", "group", "max_tokens",
                                          "temperature", "rl_model", "rl_lr", "lora_rank", "seed",
                                          "warm_steps", "warm_rows", "compile",
                                          "trl_compile")}
    if args.interleave:
        if sorted(sides) != ["ours-sft", "trl-sft"]:
            parser.error("--interleave takes --sides ours-sft,trl-sft")
        # an untimed turn, the timed ones, and one last step after the last pause
        spec["sft_steps"] = args.interleave * (args.turns + 1) + 1
    if "trl-sft" in sides:
        spec["sft_plan"] = sft_plan(spec)
    work = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    spec_path = work / "spec.json"
    if spec["rl_model"] is None and {"ours-rl", "trl-rl"} & set(sides):
        spec["rl_model"] = spec["warm_dir"] = str(work / "warm-start-model")
        spec_path.write_text(json.dumps(spec))
        print(f"warm start: tiny-math, {args.warm_steps} SFT steps ...", flush=True)
        warm = run_side("warm-start", spec_path, work)
        print(f"    final loss {warm['final_loss']:.3f}, {warm['process_s']:.0f} s", flush=True)
    spec_path.write_text(json.dumps(spec))
    threads = args.threads or picked_threads()
    if args.interleave:
        run_interleaved(spec, spec_path, work, threads, args.interleave, args.turns)
        return
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for repeat in range(args.repeats):
        shift = repeat % len(sides)
        for side in sides[shift:] + sides[:shift]:  # rotating order: load hits every side
            print(f"[{repeat + 1}/{args.repeats}] {side} ...", flush=True)
            r = run_side(side, spec_path, work, threads)
            print(f"    loop {fmt(r['loop_s_per_step'], 3)} s/step, window "
                  f"{fmt(r['s_per_step'], 3)} s/step, {fmt(r['tokens_per_s'], 0)} tok/s, "
                  f"process {r['process_s']:.0f} s, load {r['load_before']:.1f}", flush=True)
            runs[side].append(r)
    report(runs, spec, str(threads))
    if args.json:
        args.json.write_text(json.dumps({"spec": {k: v for k, v in spec.items()
                                                  if k != "sft_plan"},
                                         "threads": threads, "results": median_runs(runs),
                                         "runs": runs}, indent=2))


def picked_threads() -> int:
    """The torch threads the local backend would pick now (local_tinker/threads.py)."""
    from local_tinker import threads

    before = threads.read_sample()
    time.sleep(threads.WINDOW_S)
    after = threads.read_sample()
    if before is None or after is None:
        return 1
    count = threads.choose_threads(threads.usable_cores(), threads.others_busy(before, after))
    print(f"torch threads for both sides: {count} (the local backend's rule now)", flush=True)
    return count


if __name__ == "__main__":
    main()
