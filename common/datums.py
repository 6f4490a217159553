"""Token sequences -> `tinker.types.Datum`, with one alignment rule for SFT and RL; tokens <-> text.

A datum holds the full sequence shifted by one: input = tokens[:-1], targets = tokens[1:], so
position i predicts token i+1 (the seed's make_datum). Per-target tensors (weights, advantages,
sampling logprobs) are zero on prompt targets and carry the completion's values after it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common.backend import types


class DatumError(ValueError):
    """A conversation that cannot become a datum (too long, template not prefix-stable)."""


def chat_tokens(tokenizer, messages: Sequence[dict], add_generation_prompt: bool) -> list[int]:
    """Chat-template token ids (transformers 5 returns a BatchEncoding unless told not to)."""
    return list(tokenizer.apply_chat_template(
        list(messages), add_generation_prompt=add_generation_prompt, return_dict=False))


def decode_completion(tokenizer, tokens: Sequence[int]) -> str:
    """A sampled completion as text, the one decoding that rewards, tables and metrics see.

    Special tokens are dropped: the end-of-turn token is the sampler's stop signal, not part of
    the answer (it would count as a word after whitespace and break exact matches), and a
    sample's `stop_reason` already says whether it ended there or ran into max_tokens.
    """
    return tokenizer.decode(list(tokens), skip_special_tokens=True)


def _datum(tokens: Sequence[int], n_prompt: int, **per_completion_token: Sequence[float]
           ) -> types.Datum:
    """Shift `tokens` and lay each completion tensor after zeros for the prompt's targets."""
    n_completion = len(tokens) - n_prompt
    inputs = {"target_tokens": np.asarray(tokens[1:], dtype=np.int64)}
    for key, values in per_completion_token.items():
        assert len(values) == n_completion, f"{key}: {len(values)} values, {n_completion} tokens"
        inputs[key] = np.concatenate([np.zeros(n_prompt - 1, np.float32),
                                      np.asarray(values, np.float32)])
    datum = types.Datum(model_input=types.ModelInput.from_ints(list(tokens[:-1])),
                        loss_fn_inputs=inputs)
    assert all(t.to_numpy().shape == (len(tokens) - 1,) for t in datum.loss_fn_inputs.values())
    return datum


def conversation_datum(tokenizer, messages: Sequence[dict], max_length: int) -> types.Datum:
    """Weights 0 on the prompt and 1 on the final assistant turn (its end-of-turn tokens too)."""
    tokens = chat_tokens(tokenizer, messages, add_generation_prompt=False)
    prompt = chat_tokens(tokenizer, messages[:-1], add_generation_prompt=True)
    if tokens[: len(prompt)] != prompt:
        raise DatumError("the chat template renders the prompt differently inside the full "
                         "conversation, so the completion cannot be located")
    if len(tokens) > max_length:
        raise DatumError(f"{len(tokens)} tokens after tokenisation, over --max_length {max_length}")
    return _datum(tokens, len(prompt), weights=[1.0] * (len(tokens) - len(prompt)))


def rollout_datum(prompt: Sequence[int], completion: Sequence[int],
                  sampling_logprobs: Sequence[float], advantage: float) -> types.Datum:
    """An RL datum: the sampled completion, its sampling logprobs, one advantage per token."""
    return _datum([*prompt, *completion], len(prompt),
                  logprobs=sampling_logprobs, advantages=[advantage] * len(completion))


def weighted_nll(output: types.ForwardBackwardOutput, data: Sequence[types.Datum]
                 ) -> tuple[float, float]:
    """(sum of -logprob x weight, sum of weights) from a cross_entropy forward(_backward)."""
    nll = weights = 0.0
    for out, datum in zip(output.loss_fn_outputs, data, strict=True):
        w = datum.loss_fn_inputs["weights"].to_numpy()
        nll -= float(np.dot(out["logprobs"].to_numpy(), w))
        weights += float(w.sum())
    return nll, weights
