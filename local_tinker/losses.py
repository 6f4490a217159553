"""Tinker's built-in losses, per token, as the Tinker docs define them.

Every loss is a sum over tokens and datums (not a mean), and `loss:sum` reports that sum. Inputs
are validated for the whole batch before any forward pass, so a bad datum never leaves a
half-accumulated gradient behind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from tinker import types

POLICY_INPUTS = ("target_tokens", "logprobs", "advantages")
REQUIRED_INPUTS: dict[str, tuple[str, ...]] = {
    "cross_entropy": ("target_tokens", "weights"),
    "importance_sampling": POLICY_INPUTS,
    "ppo": POLICY_INPUTS,
    "cispo": POLICY_INPUTS,
}
DEFAULT_CLIP = {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}


class LossInputError(ValueError):
    """A datum does not carry what its loss function needs."""


def validate(
    data: Sequence[types.Datum],
    loss_fn: str,
    loss_fn_config: Mapping[str, float | str] | None,
    vocab_size: int,
) -> None:
    if loss_fn not in REQUIRED_INPUTS:
        raise LossInputError(
            f"unknown loss_fn {loss_fn!r}; the local backend serves {sorted(REQUIRED_INPUTS)}"
        )
    if not data:
        raise LossInputError("forward_backward needs at least one datum")
    unknown = set(loss_fn_config or {}) - set(DEFAULT_CLIP)
    if unknown:
        raise LossInputError(f"unknown loss_fn_config keys {sorted(unknown)} for {loss_fn!r}")
    for i, datum in enumerate(data):
        length = datum.model_input.length
        if length == 0:
            raise LossInputError(f"datum {i}: model_input is empty")
        for key in REQUIRED_INPUTS[loss_fn]:
            tensor = datum.loss_fn_inputs.get(key)
            if tensor is None:
                raise LossInputError(f"datum {i}: loss_fn {loss_fn!r} needs input {key!r}")
            shape = list(tensor.to_numpy().shape)
            if shape != [length]:
                raise LossInputError(
                    f"datum {i}: input {key!r} has shape {shape}, expected [{length}] "
                    "(one value per model_input token)"
                )
        targets = datum.loss_fn_inputs["target_tokens"].to_numpy()
        if targets.min() < 0 or targets.max() >= vocab_size:
            raise LossInputError(
                f"datum {i}: target_tokens outside the vocabulary [0, {vocab_size})"
            )


def per_token_loss(
    loss_fn: str,
    target_logprobs: torch.Tensor,
    inputs: Mapping[str, torch.Tensor],
    loss_fn_config: Mapping[str, float | str] | None,
) -> torch.Tensor:
    """The loss of each token of one datum; its sum is what forward_backward differentiates."""
    if loss_fn == "cross_entropy":
        return -target_logprobs * inputs["weights"]
    clip = {**DEFAULT_CLIP, **(loss_fn_config or {})}
    advantages = inputs["advantages"]
    ratio = torch.exp(target_logprobs - inputs["logprobs"])
    if loss_fn == "importance_sampling":
        return -ratio * advantages
    clipped = torch.clamp(
        ratio, float(clip["clip_low_threshold"]), float(clip["clip_high_threshold"])
    )
    if loss_fn == "ppo":
        return -torch.minimum(ratio * advantages, clipped * advantages)
    return -clipped.detach() * target_logprobs * advantages  # cispo
