"""The local server through the real tinker SDK, with real numbers (tiny-chat, CPU)."""

import asyncio

import numpy as np
import pytest
import tinker
from tinker import types

import local_tinker
from common.datums import rollout_datum
from local_tinker import engine

FOO_QUESTIONS = [
    "What's the weather like today?", "How do I reset my password?",
    "Can you explain quantum computing?", "What are the health benefits of exercise?",
    "How do I bake chocolate chip cookies?", "What's the capital of France?",
    "How does photosynthesis work?", "What are some good books to read?",
]


@pytest.fixture
def service(service_client):
    return service_client


@pytest.fixture
def trainer(service):
    return service.create_lora_training_client(base_model="tiny-chat", rank=4, seed=1).result()


def chat_datum(tokenizer, question: str, answer: str) -> types.Datum:
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    tokens = tokenizer.apply_chat_template(messages, return_dict=False)
    prompt = tokenizer.apply_chat_template(messages[:1], add_generation_prompt=True,
                                           return_dict=False)
    weights = [0.0] * len(prompt) + [1.0] * (len(tokens) - len(prompt))
    return types.Datum(model_input=types.ModelInput.from_ints(tokens[:-1]),
                       loss_fn_inputs={"target_tokens": tokens[1:], "weights": weights[1:]})


def policy_datums(tokenizer, rng: np.random.Generator, n: int = 3) -> list[types.Datum]:
    data = []
    for i in range(n):
        tokens = tokenizer.encode(f"sample number {i} of the policy", add_special_tokens=False)
        length = len(tokens) - 1
        data.append(types.Datum(
            model_input=types.ModelInput.from_ints(tokens[:-1]),
            loss_fn_inputs={
                "target_tokens": tokens[1:],
                # Sampling logprobs near the model's (~-5.6 for a random byte model).
                "logprobs": rng.normal(-5.5, 0.3, length).astype(np.float32),
                "advantages": rng.normal(0, 1, length).astype(np.float32),
            }))
    return data


def logprob_arrays(output: types.ForwardBackwardOutput) -> list[np.ndarray]:
    return [o["logprobs"].to_numpy().astype(np.float64) for o in output.loss_fn_outputs]


@pytest.mark.parametrize("loss_fn", ["cross_entropy", "importance_sampling", "ppo", "cispo"])
def test_loss_sum_matches_numpy(trainer, loss_fn):
    tokenizer = trainer.get_tokenizer()
    rng = np.random.default_rng(0)
    if loss_fn == "cross_entropy":
        data = [chat_datum(tokenizer, q, "foo") for q in FOO_QUESTIONS[:3]]
    else:
        data = policy_datums(tokenizer, rng)
    config = {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1} if loss_fn != "ppo" else None
    out = trainer.forward_backward(data, loss_fn, config).result()

    expected = 0.0
    for datum, lp in zip(data, logprob_arrays(out), strict=True):
        inputs = {k: v.to_numpy().astype(np.float64) for k, v in datum.loss_fn_inputs.items()}
        if loss_fn == "cross_entropy":
            expected += -(lp * inputs["weights"]).sum()
            continue
        ratio = np.exp(lp - inputs["logprobs"])
        adv = inputs["advantages"]
        low, high = (0.9, 1.1) if config else (0.8, 1.2)
        clipped = np.clip(ratio, low, high)
        expected += {
            "importance_sampling": -(ratio * adv).sum(),
            "ppo": -np.minimum(ratio * adv, clipped * adv).sum(),
            "cispo": -(clipped * lp * adv).sum(),
        }[loss_fn]
    assert out.metrics["loss:sum"] == pytest.approx(expected, rel=1e-5)


def test_microbatches_share_prompts_and_keep_to_the_budget():
    system = list(range(200))  # two prompts that share 200 tokens, 3 samples each, and a loner
    inputs = [[*system, 100 + p, *[7] * n] for p in range(2) for n in (3, 9, 5)] + [[1, 2, 3]]
    batches = engine.microbatches(inputs, budget=30)
    assert sorted(i for _, batch in batches for i in batch) == list(range(7))
    shared = {i: prefix for prefix, batch in batches for i in batch}
    assert shared[6] == 0 and all(shared[i] == 200 for i in range(6))
    for prefix, batch in batches:  # padded tokens after the shared prefix
        assert len(batch) == 1 or max(len(inputs[i]) - prefix for i in batch) * len(batch) <= 30


def test_datums_without_a_prefix_worth_sharing_run_as_one_padded_pass():
    # 3 samples sharing 40 tokens save 80 tokens: less than the extra passes cost, so they
    # join the loners (the SFT case: chats whose common prefix is a few template tokens).
    system = list(range(40))
    inputs = [[*system, 100 + p, *[7] * n] for p in range(2) for n in (3, 9, 5)] + [[1, 2, 3]]
    assert engine.microbatches(inputs) == [(0, [6, 0, 3, 2, 5, 1, 4])]


def test_samples_of_one_prompt_train_as_if_each_came_alone(service):
    """forward_backward runs a prompt shared by several datums once and reuses its keys and
    values; logprobs, loss and the update equal those of each datum sent on its own."""
    together, alone = (service.create_lora_training_client("tiny-chat", rank=4, seed=3).result()
                       for _ in range(2))
    tokenizer = together.get_tokenizer()
    rng = np.random.default_rng(0)
    data = []
    for p in range(2):
        # Long enough that sharing it saves more than the extra passes cost.
        prompt = tokenizer.encode("Solve the problem step by step, and show every step. " * 3
                                  + f"Problem {p}:", add_special_tokens=False)
        for _ in range(3):
            completion = rng.integers(0, 256, int(rng.integers(2, 12))).tolist()
            data.append(rollout_datum(prompt, completion, rng.normal(-5.5, 0.3, len(completion)),
                                      float(rng.normal())))
    assert all(prefix > 0 for prefix, _ in engine.microbatches(
        [d.model_input.to_ints() for d in data]))
    for _ in range(2):  # the second round checks the updates were equal
        batched = together.forward_backward(data, "importance_sampling").result()
        singles = [alone.forward_backward([d], "importance_sampling").result() for d in data]
        for lp, single in zip(logprob_arrays(batched), singles, strict=True):
            np.testing.assert_allclose(lp, logprob_arrays(single)[0], atol=1e-5)
        assert batched.metrics["loss:sum"] == pytest.approx(
            sum(s.metrics["loss:sum"] for s in singles), rel=1e-5, abs=1e-5)
        norms = [t.optim_step(types.AdamParams(learning_rate=1e-2)).result().metrics["grad_norm"]
                 for t in (together, alone)]
        assert norms[0] == pytest.approx(norms[1], rel=1e-4)


def test_gradients_move_logprobs_the_right_way(trainer):
    tokenizer = trainer.get_tokenizer()
    data = [chat_datum(tokenizer, q, "foo") for q in FOO_QUESTIONS[:4]]
    before = trainer.forward(data, "cross_entropy").result().metrics["loss:sum"]
    trainer.forward_backward(data, "cross_entropy")
    trainer.optim_step(types.AdamParams(learning_rate=1e-3)).result()
    after = trainer.forward(data, "cross_entropy").result().metrics["loss:sum"]
    assert after < before

    # Policy gradient: positive advantage raises a token's logprob, negative lowers it.
    tokens = tokenizer.encode("abcdefgh", add_special_tokens=False)
    length = len(tokens) - 1
    probe = types.Datum(model_input=types.ModelInput.from_ints(tokens[:-1]),
                        loss_fn_inputs={"target_tokens": tokens[1:], "weights": [1.0] * length})
    lp0 = logprob_arrays(trainer.forward([probe], "cross_entropy").result())[0]
    advantages = np.where(np.arange(length) % 2 == 0, 1.0, -1.0).astype(np.float32)
    rl = types.Datum(model_input=probe.model_input, loss_fn_inputs={
        "target_tokens": tokens[1:], "logprobs": lp0.astype(np.float32), "advantages": advantages})
    trainer.forward_backward([rl], "importance_sampling")
    trainer.optim_step(types.AdamParams(learning_rate=1e-3)).result()
    lp1 = logprob_arrays(trainer.forward([probe], "cross_entropy").result())[0]
    moved = np.sign(lp1 - lp0)
    assert (moved == np.sign(advantages)).mean() >= 0.85


def test_sampled_logprobs_match_compute_logprobs(trainer):
    tokenizer = trainer.get_tokenizer()
    sampler = trainer.save_weights_and_get_sampling_client().result()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}],
                                           add_generation_prompt=True, return_dict=False)
    params = types.SamplingParams(max_tokens=24, temperature=1.0, seed=3)
    response = sampler.sample(types.ModelInput.from_ints(prompt), 3, params).result()
    for seq in response.sequences:
        full = sampler.compute_logprobs(types.ModelInput.from_ints(prompt + seq.tokens)).result()
        assert full[0] is None
        np.testing.assert_allclose(full[len(prompt):], seq.logprobs, atol=1e-4)


def refuse_recomputing(*args, **kwargs):
    """Stands in for engine.completion_logprobs where decode mode must not call it."""
    raise AssertionError("decode mode recomputed the logprobs")


def test_decode_logprobs_equal_the_exact_ones_up_to_rounding(trainer, local_server,
                                                              monkeypatch, tmp_path):
    tokenizer = trainer.get_tokenizer()
    sampler = trainer.save_weights_and_get_sampling_client().result()
    prompt = types.ModelInput.from_ints(tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, return_dict=False))
    params = types.SamplingParams(max_tokens=24, temperature=1.0, seed=3)
    exact = sampler.sample(prompt, 3, params).result()

    monkeypatch.setattr(local_server[1].runtime, "sample_logprobs", "decode")
    monkeypatch.setattr(engine, "completion_logprobs", refuse_recomputing)
    decoded = sampler.sample(prompt, 3, params).result()
    assert [s.tokens for s in decoded.sequences] == [s.tokens for s in exact.sequences]
    for fast, slow in zip(decoded.sequences, exact.sequences, strict=True):
        assert len(fast.logprobs) == len(slow.logprobs) > 0
        np.testing.assert_allclose(fast.logprobs, slow.logprobs, atol=1e-4)
    with pytest.raises(ValueError, match="--sample_logprobs must be one of exact, decode"):
        local_tinker.LocalTinkerServer(tmp_path, sample_logprobs="fast")


def test_the_embedded_server_takes_sample_logprobs_from_the_environment(monkeypatch):
    from common import backend

    monkeypatch.setenv("LOCAL_TINKER_SAMPLE_LOGPROBS", "fastest")
    with pytest.raises(backend.BackendError, match="--sample_logprobs .* got 'fastest'"):
        backend.start_local_server()

    monkeypatch.setenv("LOCAL_TINKER_SAMPLE_LOGPROBS", "decode")
    monkeypatch.setattr(engine, "completion_logprobs", refuse_recomputing)
    url, key = backend.start_local_server()
    with tinker.ServiceClient(base_url=url, api_key=key) as service:
        sampler = service.create_sampling_client(base_model="tiny-chat").result()
        prompt = types.ModelInput.from_ints([40, 41, 42, 43])
        params = types.SamplingParams(max_tokens=8, temperature=1.0, seed=0)
        sequence = sampler.sample(prompt, 1, params).result().sequences[0]
    assert len(sequence.logprobs) == len(sequence.tokens) > 0
    assert all(lp <= 0 for lp in sequence.logprobs)


def test_seeded_sampling_is_reproducible_and_independent_of_batching(trainer):
    tokenizer = trainer.get_tokenizer()
    sampler = trainer.save_weights_and_get_sampling_client().result()
    prompt = types.ModelInput.from_ints(tokenizer.encode("hello", add_special_tokens=False))
    params = types.SamplingParams(max_tokens=16, temperature=1.0, seed=7)
    alone = sampler.sample(prompt, 2, params).result()
    # Submitted together with other requests, which the worker batches into one generation.
    other_ids = tokenizer.encode("a longer other prompt", add_special_tokens=False)
    other = types.ModelInput.from_ints(other_ids)
    futures = [sampler.sample(other, 3, types.SamplingParams(max_tokens=30, seed=1)),
               sampler.sample(prompt, 2, params)]
    batched = futures[1].result()
    assert [s.tokens for s in alone.sequences] == [s.tokens for s in batched.sequences]
    different = sampler.sample(prompt, 2, params.model_copy(update={"seed": 8})).result()
    assert [s.tokens for s in different.sequences] != [s.tokens for s in alone.sequences]
    assert futures[0].result().sequences[0].tokens  # the batch mate got its own answer


def test_stop_strings_and_token_ids_end_generation(trainer):
    tokenizer = trainer.get_tokenizer()
    sampler = trainer.save_weights_and_get_sampling_client().result()
    prompt = types.ModelInput.from_ints(tokenizer.encode("x", add_special_tokens=False))
    base = sampler.sample(prompt, 1, types.SamplingParams(max_tokens=40, seed=5)).result()
    tokens = base.sequences[0].tokens
    assert base.sequences[0].stop_reason in {"length", "stop"}
    # Stop at the 6th sampled token, once by id and once by its text.
    cut = tokens[5]
    by_id = sampler.sample(prompt, 1, types.SamplingParams(max_tokens=40, seed=5, stop=[cut]))
    seq = by_id.result().sequences[0]
    assert seq.stop_reason == "stop" and seq.tokens == tokens[: tokens.index(cut) + 1]
    text = tokenizer.decode(tokens[3:6])
    by_text = sampler.sample(prompt, 1, types.SamplingParams(max_tokens=40, seed=5, stop=text))
    seq = by_text.result().sequences[0]
    assert seq.stop_reason == "stop" and tokenizer.decode(seq.tokens).endswith(text)
    short = sampler.sample(prompt, 1, types.SamplingParams(max_tokens=3, seed=5)).result()
    assert len(short.sequences[0].tokens) == 3


def test_greedy_top_k_top_p(trainer):
    tokenizer = trainer.get_tokenizer()
    sampler = trainer.save_weights_and_get_sampling_client().result()
    prompt = types.ModelInput.from_ints(tokenizer.encode("q", add_special_tokens=False))
    greedy = [sampler.sample(prompt, 2, types.SamplingParams(max_tokens=8, temperature=0.0,
                                                             seed=s)).result() for s in (1, 2)]
    assert len({tuple(s.tokens) for r in greedy for s in r.sequences}) == 1
    top1 = sampler.sample(prompt, 2, types.SamplingParams(max_tokens=8, top_k=1, seed=3)).result()
    assert top1.sequences[0].tokens == greedy[0].sequences[0].tokens
    tiny_p = sampler.sample(prompt, 2, types.SamplingParams(max_tokens=8, top_p=1e-6, seed=3))
    assert tiny_p.result().sequences[0].tokens == greedy[0].sequences[0].tokens


def test_save_and_load_round_trip_is_exact(service, trainer):
    tokenizer = trainer.get_tokenizer()
    data = [chat_datum(tokenizer, q, "foo") for q in FOO_QUESTIONS]
    for _ in range(2):
        trainer.forward_backward(data, "cross_entropy")
        trainer.optim_step(types.AdamParams(learning_rate=1e-3))
    state = trainer.save_state("000002").result().path
    sampler_path = trainer.save_weights_for_sampler("000002").result().path
    assert state.startswith("tinker://") and state.endswith("/weights/000002")
    assert "/sampler_weights/000002" in sampler_path

    restored = service.create_training_client_from_state_with_optimizer(state).result()
    for client in (trainer, restored):  # one more identical step on both
        client.forward_backward(data, "cross_entropy")
        client.optim_step(types.AdamParams(learning_rate=1e-3)).result()
    a = logprob_arrays(trainer.forward(data, "cross_entropy").result())
    b = logprob_arrays(restored.forward(data, "cross_entropy").result())
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)

    from_path = service.create_sampling_client(model_path=sampler_path).result()
    weights_only = service.create_training_client_from_state(state).result()
    snapshot = weights_only.save_weights_and_get_sampling_client().result()
    prompt = types.ModelInput.from_ints(tokenizer.encode("check", add_special_tokens=False))
    assert from_path.compute_logprobs(prompt).result() == snapshot.compute_logprobs(prompt).result()


def test_foo_sft_learns_and_generalises(service):
    """The seed's Test 1 on tiny-chat: loss < 0.1 in 100 steps, then "foo" for a new question."""
    trainer = service.create_lora_training_client(base_model="tiny-chat", rank=8, seed=0).result()
    tokenizer = trainer.get_tokenizer()
    data = [chat_datum(tokenizer, q, "foo") for q in FOO_QUESTIONS]
    weight_sum = sum(sum(d.loss_fn_inputs["weights"].to_numpy()) for d in data)
    losses = []
    for _ in range(100):
        fb = trainer.forward_backward(data, "cross_entropy")
        trainer.optim_step(types.AdamParams(learning_rate=2e-3))
        losses.append(fb.result().metrics["loss:sum"] / weight_sum)
    assert losses[-1] < 0.1 < losses[0]
    sampler = trainer.save_weights_and_get_sampling_client().result()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What's your favorite "
                                             "color?"}], add_generation_prompt=True,
                                           return_dict=False)
    response = sampler.sample(types.ModelInput.from_ints(prompt), 1,
                              types.SamplingParams(max_tokens=20, temperature=0.7, seed=0)).result()
    assert tokenizer.decode(response.sequences[0].tokens) == "foo<|im_end|>"
    assert response.sequences[0].stop_reason == "stop"


def test_bad_inputs_get_clear_errors(service, trainer):
    """Errors the server finds reach the caller as the SDK's own exceptions, naming the cause."""
    tokenizer = trainer.get_tokenizer()
    good = chat_datum(tokenizer, "q", "a")
    failed = tinker.RequestFailedError
    with pytest.raises(failed, match="unknown loss_fn 'mse'"):
        trainer.forward_backward([good], "mse").result()
    with pytest.raises(failed, match="datum 1: loss_fn 'ppo' needs input"):
        trainer.forward_backward([policy_datums(tokenizer, np.random.default_rng(0))[0], good],
                                 "ppo").result()
    short = types.Datum(model_input=good.model_input, loss_fn_inputs={
        "target_tokens": good.loss_fn_inputs["target_tokens"], "weights": [1.0, 1.0]})
    with pytest.raises(failed, match=r"datum 0: input 'weights' has shape"):
        trainer.forward_backward([short], "cross_entropy").result()
    with pytest.raises(failed, match="Available offline: tiny-chat"):
        service.create_lora_training_client(base_model="no-such/model").result()
    with pytest.raises(failed, match="tinker://nope/weights/x not found"):
        service.create_training_client_from_state_with_optimizer("tinker://nope/weights/x").result()
    with pytest.raises(tinker.NotFoundError, match="sampler_weights/final not found"):
        service.create_sampling_client(model_path="tinker://abc/sampler_weights/final").result()
    with pytest.raises(failed, match="LoRA rank must be between 1 and 512"):
        service.create_lora_training_client("tiny-chat", rank=100_000).result()


def test_lora_targets_follow_flags(service, local_server):
    runtime = local_server[1].runtime

    def trained_names(client) -> list[str]:
        model = runtime.models[client.model_id].model
        return [n for n, p in model.named_parameters() if p.requires_grad]
    no_unembed = service.create_lora_training_client(
        "tiny-chat", rank=2, train_unembed=False).result()
    assert trained_names(no_unembed) and not any("lm_head" in n for n in trained_names(no_unembed))
    with_unembed = service.create_lora_training_client("tiny-chat", rank=2).result()
    assert any("lm_head" in n for n in trained_names(with_unembed))


def sdk_client(url: str) -> tinker.ServiceClient:
    return tinker.ServiceClient(base_url=url, api_key=local_tinker.LOCAL_API_KEY)


def test_futures_latency_and_await(tmp_path):
    with local_tinker.embedded(tmp_path, latency_s=0.3) as (url, _), sdk_client(url) as slow:
        trainer = slow.create_lora_training_client("tiny-chat", rank=2).result()
        future = trainer.optim_step(types.AdamParams(learning_rate=0.0))
        assert not future.future().done()  # nothing resolves before its round trip
        assert isinstance(future.result(), types.OptimStepResponse) and future.future().done()

        async def main():
            return await trainer.optim_step(types.AdamParams(learning_rate=0.0))
        assert isinstance(asyncio.run(main()), types.OptimStepResponse)


def test_injected_faults_are_survived_with_identical_results(tmp_path):
    """Faults are injected by the server (HTTP 503 before a request is processed); the SDK's
    own retries recover, and the trained weights come out bit for bit the same."""
    def train(fault_rate: float):
        with local_tinker.embedded(tmp_path / str(fault_rate), fault_rate=fault_rate,
                                   fault_seed=3) as (url, server), sdk_client(url) as svc:
            trainer = svc.create_lora_training_client("tiny-chat", rank=4, seed=0).result()
            data = [chat_datum(trainer.get_tokenizer(), q, "foo") for q in FOO_QUESTIONS[:4]]
            for _ in range(4):
                trainer.forward_backward(data, "cross_entropy")
                trainer.optim_step(types.AdamParams(learning_rate=1e-3))
            out = logprob_arrays(trainer.forward(data, "cross_entropy").result())
            return out, server.faults_injected

    clean, _ = train(0.0)
    faulty, faults = train(0.15)
    assert faults > 0
    for x, y in zip(clean, faulty, strict=True):
        np.testing.assert_array_equal(x, y)


def test_fused_lora_layers_compute_what_peft_does():
    """engine.fuse_lora: every LoRA layer's output and its adapter gradients equal peft's own
    forward (float rounding apart), for attention, MLP and unembedding layers."""
    import torch
    from peft.tuners.lora.layer import Linear as LoraLinear

    from local_tinker.models import load_base_model
    from local_tinker.runtime import _lora_model

    model = _lora_model(load_base_model("tiny-chat"), {
        "rank": 4, "seed": 0, "train_mlp": True, "train_attn": True, "train_unembed": True},
        torch.device("cpu"))
    layers = [m for m in model.modules() if isinstance(m, LoraLinear)]
    assert {type(m.base_layer).__name__ for m in layers} == {"Linear"} and len(layers) == 29
    generator = torch.Generator().manual_seed(0)
    for layer in layers:
        assert layer.forward.__func__ is engine._fused_lora_forward
        with torch.no_grad():  # a trained adapter: B is zero at init
            layer.lora_B["default"].weight.normal_(generator=generator)
        x = torch.randn(3, 5, layer.in_features, generator=generator)
        grads = []
        for forward in (layer.forward, lambda x, layer=layer: LoraLinear.forward(layer, x)):
            out = forward(x)
            (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
            grads.append((out.detach(), *(p.grad.clone() for p in (
                layer.lora_A["default"].weight, layer.lora_B["default"].weight))))
            layer.zero_grad(set_to_none=True)
        for fused, plain in zip(*grads, strict=True):
            torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
