"""A long generation runs in chunks that other lanes' calls get between, and chunking changes
nothing in its results."""

import threading
import time

import numpy as np
import pytest
import torch
from tinker import types

import local_tinker
from local_tinker import engine
from local_tinker.runtime import Runtime
from local_tinker.scheduler import Job, Scheduler
from local_tinker.threads import ThreadPolicy

HANG_GUARD_S = 300  # generous: the machine is shared; these tests wait on events, not on time


def requests_of_every_kind(tokenizer) -> list[engine.SampleRequest]:
    """Requests that exercise every sampling feature: filters, stops, top-k logprobs, prompt
    logprobs, greedy, and lengths that end at different steps."""
    def prompt(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    params = types.SamplingParams
    return [
        engine.SampleRequest(prompt("hello there"), 3, params(max_tokens=40, temperature=1.0,
                                                               seed=1), 1, topk_sample=3),
        engine.SampleRequest(prompt("a longer prompt than the others"), 2,
                             params(max_tokens=25, temperature=0.7, top_p=0.9, top_k=20,
                                    seed=2), 2, prompt_logprobs=True, topk_prompt=2),
        engine.SampleRequest(prompt("x"), 2, params(max_tokens=30, temperature=1.2,
                                                    stop=["e", "a"], seed=3), 3),
        engine.SampleRequest(prompt("greedy"), 1, params(max_tokens=12, temperature=0.0,
                                                         seed=4), 4),
    ]


def as_arrays(responses: list[types.SampleResponse]) -> list:
    """Everything a response carries, as plain values and arrays, for exact comparison."""
    out = []
    for r in responses:
        out.append(("prompt", r.prompt_logprobs_np, r.topk_prompt_logprobs_np and (
            r.topk_prompt_logprobs_np.token_ids, r.topk_prompt_logprobs_np.logprobs)))
        for s in r.sequences:
            out.append((s.stop_reason, s.tokens_np, s.logprobs_np, s.topk_logprobs_np and (
                s.topk_logprobs_np.token_ids, s.topk_logprobs_np.logprobs)))
    return out


def assert_identical(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x, y, strict=True):
            if isinstance(u, tuple):
                for p, q in zip(u, v, strict=True):
                    np.testing.assert_array_equal(p, q)
            elif isinstance(u, np.ndarray):
                np.testing.assert_array_equal(u, v)  # bit for bit, NaNs in the same places
            else:
                assert u == v


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    runtime = Runtime(tmp_path_factory.mktemp("fairness"), torch.device("cpu"))
    lora = types.LoraConfig(rank=4, seed=5)
    for model_id in ("trained", "fresh"):
        runtime.create_model(model_id, "tiny-chat", lora)
    # One optimizer step makes "trained" differ from "fresh": two samplers of one LoRA layout,
    # which share one host model whose weights are swapped per piece of work.
    tokens = runtime.models["trained"].base.tokenizer.encode("abcdefgh",
                                                              add_special_tokens=False)
    datum = types.Datum(model_input=types.ModelInput.from_ints(tokens[:-1]),
                        loss_fn_inputs={"target_tokens": tokens[1:],
                                        "weights": [1.0] * (len(tokens) - 1)})
    runtime.forward_backward("trained", types.ForwardBackwardInput(
        data=[datum], loss_fn="cross_entropy"), backward=True)
    runtime.optim_step("trained", types.AdamParams(learning_rate=5e-2))
    runtime.sampler_from_model("sampler-trained", "trained")
    runtime.sampler_from_model("sampler-fresh", "fresh")
    return runtime


def test_interleaved_chunked_generations_equal_each_run_alone(runtime):
    tokenizer = runtime.models["trained"].base.tokenizer
    requests = requests_of_every_kind(tokenizer)
    alone = {s: as_arrays(runtime.sample(s, requests))
             for s in ("sampler-trained", "sampler-fresh")}
    # One decode step per piece, the two samplers' pieces alternating on the shared host, with
    # a training forward on a third model between every pair.
    steps = {s: engine.sample_steps(lambda s=s: runtime._weights_applied(runtime.sampler(s)),
                                    tokenizer, requests, runtime.models["trained"].base
                                    .stop_token_ids, chunk_s=0.0)
             for s in alone}
    results: dict[str, list] = {}
    pieces = 0
    probe = types.ForwardBackwardInput(data=[types.Datum(
        model_input=types.ModelInput.from_ints([1, 2, 3]),
        loss_fn_inputs={"target_tokens": [2, 3, 4], "weights": [1.0, 1.0, 1.0]})],
        loss_fn="cross_entropy")
    while len(results) < len(steps):
        for name, generator in steps.items():
            if name in results:
                continue
            try:
                next(generator)
                pieces += 1
            except StopIteration as done:
                results[name] = as_arrays(done.value)
            runtime.forward_backward("fresh", probe, backward=False)
    longest = max(r.params.max_tokens for r in requests)
    assert pieces > longest  # the pause points really fell between decode steps
    for name in alone:
        assert_identical(results[name], alone[name])
    # The two samplers' weights differ, so equal results above are not a tautology.
    trained = np.concatenate([x[2] for x in alone["sampler-trained"] if x[0] != "prompt"])
    fresh = np.concatenate([x[2] for x in alone["sampler-fresh"] if x[0] != "prompt"])
    assert trained.shape != fresh.shape or not np.array_equal(trained, fresh)


def test_scheduler_runs_another_lanes_job_between_two_pieces():
    scheduler = Scheduler(ThreadPolicy(1, announce=lambda line: None))
    log: list[str] = []
    first_piece_running, submitted = threading.Event(), threading.Event()
    finished = threading.Event()

    def generation(payloads):
        first_piece_running.set()
        assert submitted.wait(HANG_GUARD_S)  # the other lane's job arrives during piece 1
        for piece in range(1, 4):
            log.append(f"piece {piece}")
            yield
        log.append("piece 4")
        return ["sampled"]

    results = {}

    def done(name):
        def on_done(result, exc):
            results[name] = (result, exc)
            if name == "generation":
                finished.set()
        return on_done

    try:
        scheduler.submit(Job("sampler", generation, None, done("generation"), batchable=True))
        assert first_piece_running.wait(HANG_GUARD_S)
        scheduler.submit(Job("trainer", lambda _: [log.append("forward")], None, done("forward")))
        submitted.set()
        assert finished.wait(HANG_GUARD_S)
    finally:
        scheduler.stop()
    assert log == ["piece 1", "forward", "piece 2", "piece 3", "piece 4"]
    assert results["generation"] == ("sampled", None)
    assert scheduler.pieces_run == 4 and scheduler.jobs_run == 2


def test_a_failing_piece_fails_the_generations_callers():
    scheduler = Scheduler(ThreadPolicy(1, announce=lambda line: None))
    failed = threading.Event()
    outcome = {}

    def generation(payloads):
        yield
        raise RuntimeError("out of memory in piece 2")

    def on_done(result, exc):
        outcome["exc"] = exc
        failed.set()

    try:
        scheduler.submit(Job("sampler", generation, None, on_done, batchable=True))
        assert failed.wait(HANG_GUARD_S)
    finally:
        scheduler.stop()
    assert str(outcome["exc"]) == "out of memory in piece 2"


def test_a_long_sample_does_not_block_another_clients_forward(tmp_path, monkeypatch):
    """Through the SDK: while a 400-token greedy sample runs, a forward of another training
    client completes first, with at most one generation chunk run between its arrival at the
    server and its start. Chunks of one decode step make "one chunk" countable."""
    monkeypatch.setattr(engine, "CHUNK_S", 0.0)
    decode_steps = []
    decode_step = engine.Generation._decode_step

    def counted_decode_step(self, model):
        decode_steps.append(self.step)
        return decode_step(self, model)

    monkeypatch.setattr(engine.Generation, "_decode_step", counted_decode_step)
    with local_tinker.local_service(tmp_path) as (service, server):
        sampling_trainer = service.create_lora_training_client("tiny-chat", rank=4, seed=0
                                                               ).result()
        other = service.create_lora_training_client("tiny-chat", rank=4, seed=1).result()
        sampler = sampling_trainer.save_weights_and_get_sampling_client().result()
        tokenizer = other.get_tokenizer()
        ids = tokenizer.encode("hello", add_special_tokens=False)
        datum = types.Datum(model_input=types.ModelInput.from_ints(ids[:-1]),
                            loss_fn_inputs={"target_tokens": ids[1:],
                                            "weights": [1.0] * (len(ids) - 1)})

        pieces_at: dict[str, int] = {}
        steps_at: dict[str, int] = {}
        scheduler, runtime = server.scheduler, server.runtime
        submit, forward_backward = scheduler.submit, runtime.forward_backward

        def recording_submit(job: Job) -> None:
            if job.lane == other.model_id:
                pieces_at["arrived"] = scheduler.pieces_run
                steps_at["arrived"] = len(decode_steps)
            submit(job)

        def recording_forward(model_id, *args, **kwargs):
            if model_id == other.model_id:
                pieces_at["started"] = scheduler.pieces_run
                steps_at["started"] = len(decode_steps)
            return forward_backward(model_id, *args, **kwargs)

        scheduler.submit, runtime.forward_backward = recording_submit, recording_forward
        # Greedy tiny-chat never says its stop token here: the sample runs all 400 tokens.
        long_sample = sampler.sample(types.ModelInput.from_ints(ids), 1, types.SamplingParams(
            max_tokens=400, temperature=0.0, seed=0))
        deadline = time.monotonic() + HANG_GUARD_S
        while len(decode_steps) < 2:  # the decoding is under way
            assert time.monotonic() < deadline, "the generation never started"
            time.sleep(0.01)
        forward = other.forward([datum], "cross_entropy").result(timeout=HANG_GUARD_S)
        assert not long_sample.future().done()
        assert pieces_at["started"] - pieces_at["arrived"] <= 1
        assert steps_at["started"] - steps_at["arrived"] <= 1
        assert 2 <= steps_at["arrived"] < 400 - 1  # it arrived mid-generation
        assert np.isfinite(forward.metrics["loss:sum"])
        sequence = long_sample.result(timeout=HANG_GUARD_S).sequences[0]
        assert len(sequence.tokens) == 400 and sequence.stop_reason == "length"
        assert len(decode_steps) == 400
