"""Every public method of the tinker SDK's three clients, against the local server.

Each either works (checked with a real value) or raises an SDK exception whose message names
the feature the local backend does not serve. The method list is read from the installed SDK,
so a method added by a new SDK version fails this test until someone decides what it does here.
"""

import asyncio
import concurrent.futures
import inspect
import warnings

import numpy as np
import pytest
import tinker
from tinker import types
from tinker.lib.api_future_impl import QueueState

import local_tinker

CLIENTS = (tinker.ServiceClient, tinker.TrainingClient, tinker.SamplingClient, tinker.RestClient)
REFUSED = {  # method -> words the error must contain
    "ServiceClient.copy_weights": "copying checkpoints",
    "TrainingClient.save_weights_external": "external weight export",
    "TrainingClient.save_weights_external_async": "external weight export",
}
# RestClient methods the local backend refuses: each refusal names the method it refuses.
REST_REFUSED = ("assign_session_project", "copy_weights", "export_session_trace",
                "get_audit_log", "get_billing_usage", "get_current_checkpoint_storage_usage",
                "get_external_weights_urls", "get_session", "get_training_run",
                "get_training_run_by_tinker_path", "get_weights_info_by_tinker_path",
                "list_sessions", "list_training_runs", "list_user_checkpoints",
                "publish_checkpoint_from_tinker_path", "search_sessions",
                "set_checkpoint_ttl_from_tinker_path", "unpublish_checkpoint_from_tinker_path")
REFUSED |= {f"RestClient.{name}{suffix}": rf"does not serve .*\.{name}\b"
            for name in REST_REFUSED for suffix in ("", "_async")}


def public_methods() -> set[str]:
    return {f"{cls.__name__}.{name}" for cls in CLIENTS
            for name, value in inspect.getmembers(cls)
            if not name.startswith("_") and callable(value)}


def run(coroutine):
    with warnings.catch_warnings():  # the *_async forms are deprecated, and say so
        warnings.simplefilter("ignore", FutureWarning)
        return asyncio.run(coroutine)


@pytest.fixture(scope="module")
def world(local_server):
    """A service client, a trained client, a sampler and data every call below can use."""
    url, server = local_server
    service = tinker.ServiceClient(base_url=url, api_key=local_tinker.LOCAL_API_KEY)
    trainer = service.create_lora_training_client("tiny-chat", rank=4, seed=0).result()
    tokenizer = trainer.get_tokenizer()
    tokens = tokenizer.encode("the quick brown fox", add_special_tokens=False)
    datum = types.Datum(model_input=types.ModelInput.from_ints(tokens[:-1]),
                        loss_fn_inputs={"target_tokens": tokens[1:],
                                        "weights": [1.0] * (len(tokens) - 1)})
    state = trainer.save_state("surface").result().path
    sampler_path = trainer.save_weights_for_sampler("surface").result().path
    sampler = trainer.save_weights_and_get_sampling_client().result()
    yield {"service": service, "trainer": trainer, "tokenizer": tokenizer, "datum": datum,
           "prompt": types.ModelInput.from_ints(tokens), "state": state, "url": url,
           "sampler_path": sampler_path, "sampler": sampler, "server": server}
    service.close("success").result()


def check_service(w, name):
    s: tinker.ServiceClient = w["service"]
    if name == "close":
        with tinker.ServiceClient(base_url=w["url"], api_key=local_tinker.LOCAL_API_KEY) as c:
            assert c.get_server_capabilities().supported_models
        with pytest.raises(RuntimeError, match="closed"):
            c.create_lora_training_client("tiny-chat")
    elif name == "copy_weights":
        with pytest.MonkeyPatch.context() as env:
            env.setenv("TINKER_PROJECT_ID", "archive")
            s.copy_weights(w["state"]).result()
    elif name == "create_custom_loss":
        def weighted_nll(logprobs, weights):
            return -(logprobs * weights).sum(), {}
        handle = s.create_custom_loss(weighted_nll, {"logprobs": 1, "weights": 1}).result()
        out = w["trainer"].forward_backward_custom([w["datum"]], handle).result()
        assert np.isfinite(out.metrics["loss:sum"])
    elif name == "create_rest_client":
        rest = s.create_rest_client()
        listed = rest.list_checkpoints(w["trainer"].model_id).result()
        assert w["state"] in [c.tinker_path for c in listed.checkpoints]
    elif name.startswith("create_lora_training_client"):
        client = (run(s.create_lora_training_client_async("tiny-chat", rank=2))
                  if name.endswith("_async") else s.create_lora_training_client("tiny-chat", 2))
        assert client.get_info().lora_rank == 2
    elif name.startswith("create_sampling_client"):
        client = (run(s.create_sampling_client_async(model_path=w["sampler_path"]))
                  if name.endswith("_async") else
                  s.create_sampling_client(base_model="tiny-chat").result())
        assert client.sample(w["prompt"], 1, types.SamplingParams(max_tokens=2)).result()
    elif name.startswith("create_training_client_from_state"):
        method = getattr(s, name)
        client = run(method(w["state"])) if name.endswith("_async") else method(w["state"]).result()
        assert client.get_info().lora_rank == 4
    elif name == "get_console_url":
        assert s.get_console_url().startswith("http")
    elif name.startswith("get_server_capabilities"):
        caps = (run(s.get_server_capabilities_async()) if name.endswith("_async")
                else s.get_server_capabilities())
        assert "tiny-chat" in [m.model_name for m in caps.supported_models]
    elif name == "get_telemetry":
        s.get_telemetry()  # the SDK's own telemetry object; the server accepts and drops events
    else:
        raise AssertionError(f"no check for ServiceClient.{name}")


def check_training(w, name):
    t: tinker.TrainingClient = w["trainer"]
    d, adam = [w["datum"]], types.AdamParams(learning_rate=1e-4)
    base = name.removesuffix("_async")
    call = {
        "create_sampling_client": lambda: getattr(t, name)(w["sampler_path"]),
        "forward": lambda: getattr(t, name)(d, "cross_entropy"),
        "forward_backward": lambda: getattr(t, name)(d, "cross_entropy"),
        "forward_backward_custom": lambda: getattr(t, name)(
            d, lambda data, lps: (-sum((lp * x.loss_fn_inputs["weights"].to_torch()).sum()
                                       for lp, x in zip(lps, data, strict=True)), {})),
        "optim_step": lambda: getattr(t, name)(adam),
        "save_state": lambda: getattr(t, name)(f"s-{name}"),
        "save_weights_for_sampler": lambda: getattr(t, name)(f"w-{name}"),
        "save_weights_external": lambda: getattr(t, name)("external"),
        "load_state": lambda: getattr(t, name)(w["state"]),
        "load_state_with_optimizer": lambda: getattr(t, name)(w["state"]),
        "save_weights_and_get_sampling_client": lambda: getattr(t, name)(),
        "get_info": lambda: getattr(t, name)(),
    }
    if name == "get_console_url":
        assert t.get_console_url().startswith("http")
        return
    if name == "get_telemetry":
        t.get_telemetry()
        return
    if name == "get_tokenizer":
        assert t.get_tokenizer().decode(t.get_tokenizer().encode("abc")) == "abc"
        return
    assert base in call, f"no check for TrainingClient.{name}"
    result = call[base]()
    if name.endswith("_async"):
        result = run(result)
    if hasattr(result, "result"):
        result = result.result()
    expected = {
        "create_sampling_client": tinker.SamplingClient, "get_info": types.GetInfoResponse,
        "forward": types.ForwardBackwardOutput, "forward_backward": types.ForwardBackwardOutput,
        "forward_backward_custom": types.ForwardBackwardOutput,
        "optim_step": types.OptimStepResponse, "save_state": types.SaveWeightsResponse,
        "save_weights_for_sampler": types.SaveWeightsForSamplerResponse,
        "load_state": types.LoadWeightsResponse,
        "load_state_with_optimizer": types.LoadWeightsResponse,
        "save_weights_and_get_sampling_client": tinker.SamplingClient,
    }[base]
    assert isinstance(result, expected)


def check_sampling(w, name):
    s: tinker.SamplingClient = w["sampler"]
    params = types.SamplingParams(max_tokens=4, seed=1)
    if name.startswith("sample"):
        out = (run(s.sample_async(w["prompt"], 2, params)) if name.endswith("_async")
               else s.sample(w["prompt"], 2, params).result())
        assert len(out.sequences) == 2 and all(len(q.tokens) == 4 for q in out.sequences)
    elif name.startswith("compute_logprobs"):
        lps = (run(s.compute_logprobs_async(w["prompt"])) if name.endswith("_async")
               else s.compute_logprobs(w["prompt"]).result())
        assert lps[0] is None and len(lps) == w["prompt"].length
    elif name == "create":
        client = tinker.SamplingClient.create(w["service"].holder, base_model="tiny-chat")
        assert client.result().sample(w["prompt"], 1, params).result().sequences
    elif name in ("get_sampler_handle", "from_sampler_handle"):
        again = tinker.SamplingClient.from_sampler_handle(s.get_sampler_handle(),
                                                          api_key=local_tinker.LOCAL_API_KEY)
        assert (again.sample(w["prompt"], 1, params).result().sequences[0].tokens
                == s.sample(w["prompt"], 1, params).result().sequences[0].tokens)
    elif name.startswith("get_base_model"):
        base = run(s.get_base_model_async()) if name.endswith("_async") else s.get_base_model()
        assert base.endswith("tiny-chat")  # the model's directory on the server
    elif name == "get_tokenizer":
        assert s.get_tokenizer().encode("hi", add_special_tokens=False) == \
            w["tokenizer"].encode("hi", add_special_tokens=False)
    elif name == "get_telemetry":
        s.get_telemetry()
    elif name == "on_queue_state_change":
        s.on_queue_state_change(QueueState.ACTIVE, None)
    else:
        raise AssertionError(f"no check for SamplingClient.{name}")


def check_rest(w, name):
    rest = tinker.RestClient(base_url=w["url"], api_key=local_tinker.LOCAL_API_KEY)
    trainer, state = w["trainer"], w["state"]
    base = name.removesuffix("_async")
    if base in ("delete_checkpoint", "delete_checkpoint_from_tinker_path"):
        doomed = trainer.save_state(f"doomed-{name}").result().path
        args = ((trainer.model_id, f"weights/doomed-{name}") if base == "delete_checkpoint"
                else (doomed,))
    else:
        args = {
            "assign_session_project": ("local-x", "project"),
            "copy_weights": (state, "archive"),
            "export_session_trace": ("local-x",), "get_audit_log": (),
            "get_billing_usage": ("2026-01-01", "2026-02-01"),
            "get_current_checkpoint_storage_usage": (),
            "get_external_weights_urls": (f"tinker://{trainer.model_id}/external_weights/x",),
            "get_sampler": (w["sampler"]._sampling_session_id,), "get_session": ("local-x",),
            "get_server_capabilities": (), "get_telemetry": (),
            "get_training_run": (trainer.model_id,),
            "get_training_run_by_tinker_path": (state,),
            "get_weights_info_by_tinker_path": (state,),
            "list_checkpoints": (trainer.model_id,), "list_sessions": (),
            "list_training_runs": (), "list_user_checkpoints": (),
            "publish_checkpoint_from_tinker_path": (state,),
            "search_sessions": (types.SessionSearchRequest(),),
            "set_checkpoint_ttl_from_tinker_path": (state, 60),
            "unpublish_checkpoint_from_tinker_path": (state,), "whoami": (),
        }[base]
    result = getattr(rest, name)(*args)
    if name.endswith("_async"):
        result = run(result)
    elif hasattr(result, "result"):
        result = result.result()
    listed = {c.tinker_path for c in rest.list_checkpoints(trainer.model_id).result().checkpoints}
    if base == "list_checkpoints":
        assert state in {c.tinker_path for c in result.checkpoints}
    elif base.startswith("delete_checkpoint"):
        assert not any(f"doomed-{name}" in path for path in listed) and state in listed
    elif base == "get_sampler":
        assert result.sampler_id == w["sampler"]._sampling_session_id
    elif base == "get_server_capabilities":
        assert "tiny-chat" in [m.model_name for m in result.supported_models]
    elif base != "get_telemetry":
        raise AssertionError(f"no check for RestClient.{name}")


CHECKS = {"ServiceClient": check_service, "TrainingClient": check_training,
          "SamplingClient": check_sampling, "RestClient": check_rest}


@pytest.mark.parametrize("method", sorted(public_methods()))
def test_every_public_method_works_or_names_what_is_unsupported(world, method):
    cls, name = method.split(".")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if method in REFUSED:
            with pytest.raises(tinker.TinkerError, match=REFUSED[method]):
                CHECKS[cls](world, name)
        elif method == "RestClient.whoami":  # the SDK itself answers: no request is made
            with pytest.raises(RuntimeError, match="whoami requires JWT auth"):
                CHECKS[cls](world, name)
        else:
            CHECKS[cls](world, name)


def test_futures_behave_as_the_sdk_documents(world):
    """Creation futures double as clients; futures work with .done(), wait() and await."""
    service, datum = world["service"], world["datum"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        as_client = service.create_lora_training_client("tiny-chat", rank=2)
        assert as_client.get_tokenizer().encode("x", add_special_tokens=False)  # future as client
        sampler = as_client.save_weights_and_get_sampling_client()
        assert sampler.sample(world["prompt"], 1, types.SamplingParams(max_tokens=2)).result()
    trainer = world["trainer"]
    futures = [trainer.forward([datum], "cross_entropy") for _ in range(3)]
    done, pending = concurrent.futures.wait([f.future() for f in futures], timeout=1800)
    assert not pending and all(f.future().done() for f in futures)

    async def together():
        return await asyncio.gather(*(trainer.forward([datum], "cross_entropy")
                                      for _ in range(2)))
    outs = asyncio.run(together())
    assert outs[0].metrics["loss:sum"] == outs[1].metrics["loss:sum"]


def test_unserved_sampling_options_are_refused_not_ignored(world):
    sampler = world["sampler"]
    with pytest.raises(tinker.TinkerError, match="prompt_logprobs_last_n"):
        sampler.sample(world["prompt"], 1, types.SamplingParams(max_tokens=2),
                       include_prompt_logprobs=True, prompt_logprobs_last_n=2).result()
    with pytest.raises(TypeError):
        sampler.sample(world["prompt"], 1, types.SamplingParams(max_tokens=2), not_a_param=1)


def test_prompt_and_topk_logprobs_agree_with_compute_logprobs(world):
    sampler, prompt = world["sampler"], world["prompt"]
    out = sampler.sample(prompt, 1, types.SamplingParams(max_tokens=3, seed=2),
                         include_prompt_logprobs=True, topk_prompt_logprobs=3,
                         topk_sample_logprobs=2).result()
    expected = sampler.compute_logprobs(prompt).result()
    assert out.prompt_logprobs[0] is None
    np.testing.assert_allclose(out.prompt_logprobs[1:], expected[1:], atol=1e-5)
    assert out.topk_prompt_logprobs[0] is None and len(out.topk_prompt_logprobs[1]) == 3
    best = out.topk_prompt_logprobs[1][0][1]
    assert best >= expected[1] - 1e-5  # the top candidate is at least as likely as the real one
    seq = out.sequences[0]
    assert len(seq.topk_logprobs) == 3 and all(len(row) == 2 for row in seq.topk_logprobs)
    assert all(row[0][1] >= lp - 1e-5 for row, lp in zip(seq.topk_logprobs, seq.logprobs,
                                                         strict=True))


def test_save_options_ttl_and_overwrite(world):
    trainer = world["trainer"]
    with pytest.raises(tinker.TinkerError, match="already exists; pass overwrite=True"):
        trainer.save_state("surface").result()
    assert trainer.save_state("surface", overwrite=True).result().path == world["state"]
    short = trainer.save_state("short-lived", ttl_seconds=1).result().path
    rest = tinker.RestClient(base_url=world["url"], api_key=local_tinker.LOCAL_API_KEY)
    listed = rest.list_checkpoints(trainer.model_id).result()
    expiring = [c for c in listed.checkpoints if c.tinker_path == short]
    assert expiring and expiring[0].expires_at is not None


def test_seed_none_means_random(world):
    sampler = world["sampler"]
    params = types.SamplingParams(max_tokens=12, temperature=1.0)
    draws = {tuple(sampler.sample(world["prompt"], 1, params).result().sequences[0].tokens)
             for _ in range(3)}
    assert len(draws) > 1
