"""Base models the local backend serves: the built-in `tiny-chat` and offline Hugging Face models.

`tiny-chat` exists so that every script and test runs in seconds with no download: a byte-level
tokenizer (every UTF-8 byte is a token, plus Qwen's three chat special tokens and its chat
template) and a ~0.85M-parameter Qwen3 decoder. Its base weights come from a fixed seed, so every
process builds the identical base model; the `seed` of a training client only drives LoRA init.
`tiny-math` is the same network with shipped weights pretrained on worked arithmetic
(data/make_tiny_math.py), so the local RL pipeline starts from a base that can do its task.
`tiny-instruct` is tiny-math fine-tuned on the task's prompts (data/make_tiny_instruct.py): like
the seed's instruct model it follows the system prompt some of the time, so RL learns from it.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

TINY_CHAT = "tiny-chat"
TINY_CHAT_BASE_SEED = 0
TINY_MATH = "tiny-math"
TINY_MATH_WEIGHTS = Path(__file__).resolve().parent / "weights" / "tiny-math.safetensors"
"""tiny-chat's network pretrained on worked arithmetic; written by data/make_tiny_math.py."""
TINY_INSTRUCT = "tiny-instruct"
TINY_INSTRUCT_WEIGHTS = TINY_MATH_WEIGHTS.with_name("tiny-instruct.safetensors")
"""tiny-math fine-tuned to follow the task's instructions; written by data/make_tiny_instruct.py."""
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Qwen's template, including the newline after <|im_end|> (the seed's datums train on it too).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
ATTN_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")
UNEMBED_MODULES = ("lm_head",)


class UnknownModelError(ValueError):
    """The backend cannot serve this model offline."""


@dataclass
class BaseModel:
    """A loaded base model: pristine weights (never trained in place), tokenizer, stop tokens."""

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    stop_token_ids: tuple[int, ...]

    def fresh_copy(self) -> PreTrainedModel:
        """An independent copy to wrap with LoRA, so the cached base stays untouched."""
        return copy.deepcopy(self.model)


def build_tiny_chat_tokenizer() -> PreTrainedTokenizerBase:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_chat() -> BaseModel:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = build_tiny_chat_tokenizer()
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_CHAT_BASE_SEED)
        model = Qwen3ForCausalLM(config)
    stop_ids = tuple(tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"]))
    return BaseModel(TINY_CHAT, model.eval(), tokenizer, stop_ids)


def _build_shipped(name: str, weights: Path, maker: str, minutes: int) -> BaseModel:
    """tiny-chat's network and tokenizer with shipped weights (`maker` remakes them)."""
    from safetensors.torch import load_file

    if not weights.is_file():
        raise UnknownModelError(
            f"{name} weights not found at {weights}; recreate them with "
            f"`python {maker}` (about {minutes} minutes on 2 CPU cores)"
        )
    base = build_tiny_chat()
    # strict: a file from another architecture must fail here, not train a half-loaded model.
    base.model.load_state_dict(load_file(str(weights)), strict=True)
    return BaseModel(name, base.model, base.tokenizer, base.stop_token_ids)


def save_shipped(model: torch.nn.Module, weights: Path, card: dict) -> None:
    """Write a shipped model: its weights (safetensors, fp32) and its card (`.json` beside it),
    the pair `_build_shipped` loads. The data/make_*.py scripts call this."""
    import json

    from safetensors.torch import save_file

    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights), metadata={"format": "pt"})
    weights.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {weights} and {weights.with_suffix('.json').name}")


def train_every_weight(model: torch.nn.Module, steps: int, lr: float, warmup: int,
                       batch_at: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
                       report: Callable[[int, float], None], report_every: int) -> float:
    """How the data/make_*.py scripts train a shipped model: every weight, AdamW (0.9, 0.98, no
    weight decay), gradients clipped to norm 1, lr warmed up linearly over `warmup` steps then
    cosine-decayed to a tenth (the usual recipe; the decay is worth a few points of two-pair
    accuracy at this size). `batch_at(step)` gives (input ids, labels); `report(step, loss)` runs
    every `report_every` steps and after the last. Returns the last step's loss."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    for step in range(steps):
        progress = max(0.0, (step - warmup) / max(1, steps - warmup))
        cosine = 0.1 + 0.45 * (1 + math.cos(math.pi * progress))
        for group in optimizer.param_groups:
            group["lr"] = lr * ((step + 1) / warmup if step < warmup else cosine)
        ids, labels = batch_at(step)
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if (step + 1) % report_every == 0 or step + 1 == steps:
            report(step + 1, loss.item())
    return loss.item()


def build_tiny_math(weights: Path = TINY_MATH_WEIGHTS) -> BaseModel:
    """tiny-chat's network and tokenizer with the shipped pretrained arithmetic weights."""
    return _build_shipped(TINY_MATH, weights, "data/make_tiny_math.py", 18)


def build_tiny_instruct(weights: Path = TINY_INSTRUCT_WEIGHTS) -> BaseModel:
    """tiny-math fine-tuned on the arithmetic task's instructions (the local default model)."""
    return _build_shipped(TINY_INSTRUCT, weights, "data/make_tiny_instruct.py", 7)


def cached_hub_models() -> list[str]:
    """Causal-LM repos present in the local Hugging Face cache (no network)."""
    try:
        from huggingface_hub import scan_cache_dir

        return sorted(r.repo_id for r in scan_cache_dir().repos if r.repo_type == "model")
    except Exception:  # no cache dir yet, or an unreadable one: nothing is available
        return []


def available_models() -> list[str]:
    return [TINY_CHAT, TINY_MATH, TINY_INSTRUCT, *cached_hub_models()]


def load_hf_model(name: str) -> BaseModel:
    """A causal LM from a local directory or the offline Hugging Face cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            name, local_files_only=True, dtype=torch.float32
        )
    except Exception as exc:
        listing = ", ".join(available_models())
        where = "directory" if Path(name).exists() else "name"
        raise UnknownModelError(
            f"the local backend cannot load model {name!r} ({where}): {type(exc).__name__}. "
            f"Available offline: {listing}; or pass a path to a saved Hugging Face causal LM. "
            "Models that need a download run on Tinker (set TINKER_API_KEY, --backend tinker)."
        ) from None
    eos = model.generation_config.eos_token_id or tokenizer.eos_token_id
    stop_ids = tuple(eos if isinstance(eos, list) else [eos])
    return BaseModel(name, model.eval(), tokenizer, stop_ids)


@functools.lru_cache(maxsize=4)
def load_base_model(name: str) -> BaseModel:
    """Load (once per process) the base model called `name`."""
    if name == TINY_CHAT:
        return build_tiny_chat()
    if name == TINY_MATH:
        return build_tiny_math()
    if name == TINY_INSTRUCT:
        return build_tiny_instruct()
    return load_hf_model(name)


def lora_target_modules(
    model: torch.nn.Module, train_mlp: bool, train_attn: bool, train_unembed: bool
) -> list[str]:
    """Module names for peft. Named explicitly: peft's "all-linear" silently skips lm_head."""
    wanted = (
        (ATTN_MODULES if train_attn else ())
        + (MLP_MODULES if train_mlp else ())
        + (UNEMBED_MODULES if train_unembed else ())
    )
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [m for m in wanted if m in present]
    if not targets:
        raise ValueError(
            "no LoRA target modules: enable at least one of train_mlp, train_attn, train_unembed "
            f"(this architecture has none of {list(wanted)})"
        )
    return targets
