"""GPT-J checkpoints (transformers' `GPTJForCausalLM`) to our `GPT` and back.

Our GPT is GPT-J's architecture: parallel attention + MLP blocks after one LayerNorm, rotary
embeddings on the first `rotary_dim` features of each head in GPT-J's interleaved convention,
bias-free q/k/v/out projections, an untied LM head with a bias, `gelu_new` (the tanh GELU).
Softmax checkpoints convert to `attention="softmax"`. The official Cottention GPT replaces each
`transformer.h.{i}.attn` by cosine attention with the same projections plus one learned
`norm_const` of shape (1, heads, 1, 1), applied as values / n_i ** sigmoid(norm_const) after
rotary embedding and L2 normalisation: exactly our `stabilizer` (stabilize="value"), so those
checkpoints convert to `attention="cosine"` (detected from the `norm_const` tensors).

Config (config.json, model_type "gptj"): vocab_size, n_positions -> max_len, n_embd -> d_model,
n_layer -> num_layers, n_head -> num_heads, n_inner (None: 4 n_embd) -> ff_dim, rotary_dim,
activation_function -> activation, layer_norm_epsilon -> layer_norm_eps, resid_pdrop ->
dropout_rate. rotary_dim None and tie_word_embeddings True are refused (neither has a form here).

The parameters, `GPTJ_PARAMETERS` (PyTorch name, our parameter, layout, part):
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
from flax import nnx

from cottention_jax.interop.files import (
    CONFIG_NAME,
    SAFETENSORS_NAME,
    TORCH_NAME,
    read_state_dict,
    resolve_config,
    source_name,
    write_safetensors,
    write_torch,
)
from cottention_jax.interop.mapping import Entry, export_parameters, format_table, load_parameters
from cottention_jax.models import GPT, GPTConfig

__all__ = ["GPTJ_PARAMETERS", "gpt_config_from_hf", "gptj_state_dict", "hf_config_from_gpt", "load_gptj", "save_gptj"]

GPTJ_PARAMETERS = (
    Entry("transformer.wte.weight", "embed.embedding"),
    Entry("transformer.h.{i}.ln_1.weight", "blocks.{i}.ln.scale"),
    Entry("transformer.h.{i}.ln_1.bias", "blocks.{i}.ln.bias"),
    Entry("transformer.h.{i}.attn.q_proj.weight", "blocks.{i}.attn.query.kernel", "to_heads"),
    Entry("transformer.h.{i}.attn.k_proj.weight", "blocks.{i}.attn.key.kernel", "to_heads"),
    Entry("transformer.h.{i}.attn.v_proj.weight", "blocks.{i}.attn.value.kernel", "to_heads"),
    Entry("transformer.h.{i}.attn.out_proj.weight", "blocks.{i}.attn.out.kernel", "from_heads"),
    Entry("transformer.h.{i}.attn.norm_const", "blocks.{i}.attn.stabilizer", "per_head", "cosine"),
    Entry("transformer.h.{i}.mlp.fc_in.weight", "blocks.{i}.mlp.fc_in.kernel", "linear"),
    Entry("transformer.h.{i}.mlp.fc_in.bias", "blocks.{i}.mlp.fc_in.bias"),
    Entry("transformer.h.{i}.mlp.fc_out.weight", "blocks.{i}.mlp.fc_out.kernel", "linear"),
    Entry("transformer.h.{i}.mlp.fc_out.bias", "blocks.{i}.mlp.fc_out.bias"),
    Entry("transformer.ln_f.weight", "ln_f.scale"),
    Entry("transformer.ln_f.bias", "ln_f.bias"),
    Entry("lm_head.weight", "lm_head.kernel", "linear"),
    Entry("lm_head.bias", "lm_head.bias"),
)
__doc__ += format_table(GPTJ_PARAMETERS) + "\n"

# buffers older transformers versions saved with the weights (causal mask, its fill value)
_IGNORED = (r"transformer\.h\.\d+\.attn\.(bias|masked_bias)",)
# transformers' activation names -> ours (models.common.ACTIVATIONS); the first of each is written back
HF_ACTIVATIONS = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
_MARKER = "cottention_jax"  # our extra config.json key: the attention and stabilizer mode


def _hf_activation(name: str) -> str:
    if name not in HF_ACTIVATIONS:
        raise ValueError(
            f"config: activation_function {name!r} has no counterpart here; supported: {sorted(HF_ACTIVATIONS)}"
        )
    return HF_ACTIVATIONS[name]


def gpt_config_from_hf(hf: dict, *, attention: str = "softmax", **overrides) -> GPTConfig:
    """Our GPTConfig for a transformers GPTJConfig dict (config.json), with `overrides` on top."""
    if hf.get("model_type", "gptj") != "gptj":
        raise ValueError(f"config: model_type must be 'gptj' for a GPT-J checkpoint; got {hf.get('model_type')!r}")
    if hf.get("rotary_dim") is None:
        raise ValueError(
            "config: rotary_dim None (rotary over the whole width) has no form here; a GPT-J "
            "checkpoint names its rotary_dim"
        )
    if hf.get("tie_word_embeddings", False):
        raise ValueError("config: tie_word_embeddings=True is not supported (GPT-J's LM head has its own bias)")
    d = hf.get("n_embd", 4096)
    marker = hf.get(_MARKER, {})
    fields = dict(
        vocab_size=hf.get("vocab_size", 50400),
        max_len=hf.get("n_positions", 2048),
        d_model=d,
        num_layers=hf.get("n_layer", 28),
        num_heads=hf.get("n_head", 16),
        ff_dim=hf.get("n_inner") or 4 * d,
        rotary_dim=hf["rotary_dim"],
        activation=_hf_activation(hf.get("activation_function", "gelu_new")),
        layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        dropout_rate=hf.get("resid_pdrop", 0.0),
        attention=marker.get("attention", attention),
        stabilize=marker.get("stabilize", "value"),
    )
    return GPTConfig(**{**fields, **overrides})


def hf_config_from_gpt(config: GPTConfig, **extra) -> dict:
    """The GPTJConfig dict (config.json) of our GPTConfig; `extra` keys (e.g. eos_token_id) are added."""
    _check_exportable(config)
    activation = next(hf for hf, ours in HF_ACTIVATIONS.items() if ours == config.activation)
    return {
        "architectures": ["GPTJForCausalLM"],
        "model_type": "gptj",
        "vocab_size": config.vocab_size,
        "n_positions": config.max_len,
        "n_embd": config.d_model,
        "n_layer": config.num_layers,
        "n_head": config.num_heads,
        "n_inner": config.ff_dim,
        "rotary_dim": config.rotary_dim,
        "activation_function": activation,
        "layer_norm_epsilon": config.layer_norm_eps,
        "resid_pdrop": config.dropout_rate,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "tie_word_embeddings": False,
        "bos_token_id": None,
        "eos_token_id": None,
        _MARKER: {"attention": config.attention, "stabilize": config.stabilize},
        **extra,
    }


def _check_exportable(config: GPTConfig) -> None:
    problems = []
    if config.attention not in ("cosine", "softmax"):
        problems.append(f"attention={config.attention!r} (GPT-J has softmax, Cottention cosine)")
    if config.num_kv_heads not in (None, config.num_heads):
        problems.append(f"num_kv_heads={config.num_kv_heads} (GPT-J has no grouped-query attention)")
    if config.tie_embeddings:
        problems.append("tie_embeddings=True (GPT-J's LM head is untied)")
    if config.rope_base != 10000.0:
        problems.append(f"rope_base={config.rope_base} (GPT-J's is 10000)")
    if config.rotary_dim == 0:
        problems.append("rotary_dim=0 (GPT-J always rotates)")
    if problems:
        raise ValueError("this GPT has no GPT-J form: " + "; ".join(problems))


def _parts(config: GPTConfig) -> tuple[str, ...]:
    return ("base", "cosine") if config.attention == "cosine" else ("base",)


def load_gptj(
    source, config: GPTConfig | dict | None = None, *, attention: str | None = None, seed: int = 0, **overrides
) -> GPT:
    """Our `GPT` with the weights of a GPT-J checkpoint (softmax, or the official Cottention cosine one).

    source: a model directory (config.json + model.safetensors / sharded / pytorch_model.bin), a
      .safetensors or torch file, or a state dict {name: array}.
    config: our GPTConfig, or a transformers config dict; default: the directory's config.json.
    attention: "softmax" or "cosine"; default: "cosine" when the state dict has `norm_const` tensors.
    overrides: GPTConfig fields on top of the converted config (e.g. param_dtype="bfloat16").
    Every tensor must find its parameter and every parameter its tensor (a ValueError names the
    first that does not); the causal-mask buffers older checkpoints carry are skipped.
    """
    where = source_name(source)
    state = read_state_dict(source)
    cfg, attention = resolve_config(
        state,
        source,
        config,
        attention,
        ours=GPTConfig,
        from_hf=gpt_config_from_hf,
        hf_name="GPTJConfig",
        norm_const_suffix=".attn.norm_const",
        overrides=overrides,
    )
    model, fresh = load_parameters(
        lambda: GPT(cfg, rngs=nnx.Rngs(seed)),
        state,
        GPTJ_PARAMETERS,
        num_layers=cfg.num_layers,
        parts=_parts(cfg),
        required=_parts(cfg),
        ignored=_IGNORED,
        where=where,
    )
    if fresh:
        raise ValueError(f"{where}: the checkpoint left parameters without a value: {fresh[:5]}")
    model.eval()
    return model


def gptj_state_dict(model: GPT) -> dict[str, np.ndarray]:
    """The GPTJForCausalLM state dict of our GPT ({name: array}; cosine models add `norm_const`)."""
    _check_exportable(model.config)
    return export_parameters(model, GPTJ_PARAMETERS, num_layers=model.config.num_layers, parts=_parts(model.config))


def save_gptj(model: GPT, directory, **config_extra) -> Path:
    """Write `model.safetensors` and `config.json` to `directory`, as `GPTJForCausalLM.save_pretrained`
    would: transformers loads a softmax model with `GPTJForCausalLM.from_pretrained(directory)`. A
    cosine model also gets `pytorch_model.bin` (the same tensors), which the official Cottention
    loaders read, when torch is installed; its warning says whether that file was written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = gptj_state_dict(model)
    write_safetensors(state, directory / SAFETENSORS_NAME)
    if model.config.attention == "cosine":
        torch_file = write_torch(state, directory / TORCH_NAME)
        written = (
            f"{SAFETENSORS_NAME} and {TORCH_NAME} were written"
            if torch_file
            else f"torch is not installed, so only {SAFETENSORS_NAME} was written, not the {TORCH_NAME} the "
            "official loaders read (pip install torch and save again)"
        )
        warnings.warn(
            "a cosine-attention GPT: transformers' GPTJForCausalLM would read its projections as "
            "softmax attention and drop the norm_const tensors; the files are for cosine-attention code "
            f"(the official Cottention GPT, or load_gptj); {written}",
            UserWarning,
            stacklevel=2,
        )
    (directory / CONFIG_NAME).write_text(json.dumps(hf_config_from_gpt(model.config, **config_extra), indent=2))
    return directory
