"""BERT checkpoints (transformers' `BertForMaskedLM`, `BertForSequenceClassification`, `BertModel`,
`BertForPreTraining`) to our `Bert` and back.

Our Bert is BERT's architecture: token + absolute position + segment embeddings, LayerNorm;
post-LN layers (attention with biases, then the MLP); the MLM head (dense, activation,
LayerNorm, decoder tied to the token embedding, plus a bias); the pooler (tanh dense on the first
token) and the classifier. A checkpoint brings the parts it has: `BertForMaskedLM` no pooler or
classifier, `BertForSequenceClassification` no MLM head; the missing parts keep their
initialisation (`seed`), named in a warning, as transformers does. `BertForPreTraining` (the
official Cottention BERT checkpoints) adds the next-sentence-prediction head `cls.seq_relationship.*`,
which our Bert has no place for: it is dropped with a one-line warning. The official Cottention BERT
replaces `attention.self` by cosine attention with the same projections and one learned
`norm_const` (1, heads, 1, 1) per layer, values / n ** sigmoid(norm_const), n the real tokens of
the row: our `stabilizer`, so those checkpoints convert to `attention="cosine"` (detected).

Config (config.json, model_type "bert"): vocab_size, hidden_size -> d_model, num_hidden_layers
-> num_layers, num_attention_heads -> num_heads, intermediate_size -> ff_dim,
max_position_embeddings -> max_len, type_vocab_size, layer_norm_eps, hidden_act -> activation
(BERT's "gelu" is the exact one), hidden_dropout_prob -> dropout_rate, num_labels (or the
size of id2label). Only absolute position embeddings and encoders (is_decoder False) convert.
transformers numbers positions 0..T-1 whatever the padding, so converted models get
positions="absolute" (our own models count real tokens, "from_mask"; the config.json we write
records which, so a round trip keeps it).

The parameters, `BERT_PARAMETERS` (PyTorch name, our parameter, layout, part):
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
from cottention_jax.interop.gptj import HF_ACTIVATIONS
from cottention_jax.interop.mapping import Entry, export_parameters, format_table, load_parameters
from cottention_jax.models import Bert, BertConfig

__all__ = [
    "BERT_ARCHITECTURES",
    "BERT_PARAMETERS",
    "bert_config_from_hf",
    "bert_state_dict",
    "hf_config_from_bert",
    "load_bert",
    "save_bert",
]

_LAYER = "bert.encoder.layer.{i}"
BERT_PARAMETERS = (
    Entry("bert.embeddings.word_embeddings.weight", "token_embed.embedding"),
    Entry("bert.embeddings.position_embeddings.weight", "position_embed.embedding"),
    Entry("bert.embeddings.token_type_embeddings.weight", "segment_embed.embedding"),
    Entry("bert.embeddings.LayerNorm.weight", "ln_embed.scale"),
    Entry("bert.embeddings.LayerNorm.bias", "ln_embed.bias"),
    Entry(f"{_LAYER}.attention.self.query.weight", "layers.{i}.attn.query.kernel", "to_heads"),
    Entry(f"{_LAYER}.attention.self.query.bias", "layers.{i}.attn.query.bias", "head_bias"),
    Entry(f"{_LAYER}.attention.self.key.weight", "layers.{i}.attn.key.kernel", "to_heads"),
    Entry(f"{_LAYER}.attention.self.key.bias", "layers.{i}.attn.key.bias", "head_bias"),
    Entry(f"{_LAYER}.attention.self.value.weight", "layers.{i}.attn.value.kernel", "to_heads"),
    Entry(f"{_LAYER}.attention.self.value.bias", "layers.{i}.attn.value.bias", "head_bias"),
    Entry(f"{_LAYER}.attention.self.norm_const", "layers.{i}.attn.stabilizer", "per_head", "cosine"),
    Entry(f"{_LAYER}.attention.output.dense.weight", "layers.{i}.attn.out.kernel", "from_heads"),
    Entry(f"{_LAYER}.attention.output.dense.bias", "layers.{i}.attn.out.bias"),
    Entry(f"{_LAYER}.attention.output.LayerNorm.weight", "layers.{i}.ln_attn.scale"),
    Entry(f"{_LAYER}.attention.output.LayerNorm.bias", "layers.{i}.ln_attn.bias"),
    Entry(f"{_LAYER}.intermediate.dense.weight", "layers.{i}.mlp.fc_in.kernel", "linear"),
    Entry(f"{_LAYER}.intermediate.dense.bias", "layers.{i}.mlp.fc_in.bias"),
    Entry(f"{_LAYER}.output.dense.weight", "layers.{i}.mlp.fc_out.kernel", "linear"),
    Entry(f"{_LAYER}.output.dense.bias", "layers.{i}.mlp.fc_out.bias"),
    Entry(f"{_LAYER}.output.LayerNorm.weight", "layers.{i}.ln_mlp.scale"),
    Entry(f"{_LAYER}.output.LayerNorm.bias", "layers.{i}.ln_mlp.bias"),
    Entry("cls.predictions.transform.dense.weight", "mlm_dense.kernel", "linear", "mlm"),
    Entry("cls.predictions.transform.dense.bias", "mlm_dense.bias", "same", "mlm"),
    Entry("cls.predictions.transform.LayerNorm.weight", "mlm_ln.scale", "same", "mlm"),
    Entry("cls.predictions.transform.LayerNorm.bias", "mlm_ln.bias", "same", "mlm"),
    Entry("cls.predictions.bias", "mlm_bias", "same", "mlm"),
    Entry("bert.pooler.dense.weight", "pooler.kernel", "linear", "pooler"),
    Entry("bert.pooler.dense.bias", "pooler.bias", "same", "pooler"),
    Entry("classifier.weight", "classifier.kernel", "linear", "classifier"),
    Entry("classifier.bias", "classifier.bias", "same", "classifier"),
)
__doc__ += (
    format_table(BERT_PARAMETERS)
    + """
  cls.predictions.decoder.weight / .bias: tied to word_embeddings / cls.predictions.bias (checked equal)
"""
)

# the parts each transformers class saves (and which `save_bert` writes)
BERT_ARCHITECTURES = {
    "BertForMaskedLM": ("base", "mlm"),
    "BertForSequenceClassification": ("base", "pooler", "classifier"),
    "BertModel": ("base", "pooler"),
}
_TIED = {
    "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}
_IGNORED = (r"bert\.embeddings\.position_ids",)
_NSP = "cls.seq_relationship."  # BertForPreTraining's next-sentence head (weight (2, d), bias (2,))
_MARKER = "cottention_jax"


def bert_config_from_hf(hf: dict, *, attention: str = "softmax", **overrides) -> BertConfig:
    """Our BertConfig for a transformers BertConfig dict (config.json), with `overrides` on top."""
    if hf.get("model_type", "bert") != "bert":
        raise ValueError(f"config: model_type must be 'bert'; got {hf.get('model_type')!r}")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"config: position_embedding_type must be 'absolute'; got {hf['position_embedding_type']!r}")
    if hf.get("is_decoder", False):
        raise ValueError("config: is_decoder=True (a BERT decoder) is not supported; Bert is an encoder")
    act = hf.get("hidden_act", "gelu")
    if act not in HF_ACTIVATIONS:
        raise ValueError(f"config: hidden_act {act!r} has no counterpart here; supported: {sorted(HF_ACTIVATIONS)}")
    labels = hf.get("num_labels", len(hf["id2label"]) if hf.get("id2label") else 2)
    marker = hf.get(_MARKER, {})  # written by save_bert (earlier versions: no "positions", all "from_mask")
    fields = dict(
        vocab_size=hf.get("vocab_size", 30522),
        d_model=hf.get("hidden_size", 768),
        num_layers=hf.get("num_hidden_layers", 12),
        num_heads=hf.get("num_attention_heads", 12),
        ff_dim=hf.get("intermediate_size", 3072),
        max_len=hf.get("max_position_embeddings", 512),
        type_vocab_size=hf.get("type_vocab_size", 2),
        num_labels=labels,
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
        activation=HF_ACTIVATIONS[act],
        dropout_rate=hf.get("hidden_dropout_prob", 0.1),
        attention=marker.get("attention", attention),
        stabilize=marker.get("stabilize", "value"),
        positions=marker.get("positions", "from_mask" if marker else "absolute"),
    )
    return BertConfig(**{**fields, **overrides})


def hf_config_from_bert(config: BertConfig, architecture: str = "BertForMaskedLM", **extra) -> dict:
    """The transformers BertConfig dict (config.json) of our BertConfig."""
    _check_exportable(config, architecture)
    activation = next(hf for hf, ours in HF_ACTIVATIONS.items() if ours == config.activation)
    return {
        "architectures": [architecture],
        "model_type": "bert",
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.ff_dim,
        "max_position_embeddings": config.max_len,
        "type_vocab_size": config.type_vocab_size,
        "layer_norm_eps": config.layer_norm_eps,
        "hidden_act": activation,
        "hidden_dropout_prob": config.dropout_rate,
        "attention_probs_dropout_prob": 0.0,
        "position_embedding_type": "absolute",
        "num_labels": config.num_labels,
        "pad_token_id": 0,
        _MARKER: {"attention": config.attention, "stabilize": config.stabilize, "positions": config.positions},
        **extra,
    }


def _check_exportable(config: BertConfig, architecture: str) -> None:
    if architecture not in BERT_ARCHITECTURES:
        raise ValueError(f"architecture must be one of {tuple(BERT_ARCHITECTURES)}; got {architecture!r}")
    if config.num_kv_heads not in (None, config.num_heads):
        raise ValueError(
            f"this Bert has no BERT form: num_kv_heads={config.num_kv_heads} (BERT has no grouped-query attention)"
        )


def _with_prefix(state: dict) -> dict:
    """`BertModel` checkpoints name their tensors without the "bert." prefix."""
    if any(n.startswith("bert.") for n in state) or not any(n.startswith("embeddings.") for n in state):
        return state
    return {(n if n.startswith(("cls.", "classifier.")) else f"bert.{n}"): v for n, v in state.items()}


def _check_tied(state: dict, where: str) -> None:
    for tied, source in _TIED.items():
        if tied in state and source in state and not np.array_equal(state[tied], state[source]):
            raise ValueError(
                f"{where}: {tied!r} differs from {source!r}: this Bert ties its MLM decoder to the "
                "token embedding, so an untied decoder has no place here"
            )


def _without_nsp(state: dict, where: str) -> dict:
    """The state dict less BertForPreTraining's next-sentence head, with a one-line warning when it had one."""
    dropped = sorted(n for n in state if n.startswith(_NSP))
    if dropped:
        warnings.warn(
            f"{where}: dropped the next-sentence-prediction head {_NSP}* "
            f"({', '.join(n.removeprefix(_NSP) for n in dropped)}): Bert has no NSP head",
            UserWarning,
            stacklevel=3,
        )
    return {n: v for n, v in state.items() if not n.startswith(_NSP)}


def load_bert(
    source, config: BertConfig | dict | None = None, *, attention: str | None = None, seed: int = 0, **overrides
) -> Bert:
    """Our `Bert` with the weights of a BERT checkpoint (softmax, or the official Cottention cosine one).

    source, config, attention, overrides: as `load_gptj` (config.json / a BertConfig dict / ours).
    seed: initialises the parts the checkpoint lacks (a UserWarning lists them).
    A transformers checkpoint converts with positions="absolute" (0..T-1 whatever the padding, as
    transformers numbers them), so left-padded inputs give transformers' logits at the real tokens.
    BertForPreTraining's NSP head (cls.seq_relationship.*) is dropped with a warning.
    """
    where = source_name(source)
    state = _without_nsp(_with_prefix(read_state_dict(source)), where)
    _check_tied(state, where)
    cfg, attention = resolve_config(
        state,
        source,
        config,
        attention,
        ours=BertConfig,
        from_hf=bert_config_from_hf,
        hf_name="BertConfig",
        norm_const_suffix=".attention.self.norm_const",
        overrides=overrides,
    )
    parts = ("base", "mlm", "pooler", "classifier") + (("cosine",) if attention == "cosine" else ())
    required = ("base", "cosine") if attention == "cosine" else ("base",)
    state = {n: v for n, v in state.items() if n not in _TIED}
    model, fresh = load_parameters(
        lambda: Bert(cfg, rngs=nnx.Rngs(seed)),
        state,
        BERT_PARAMETERS,
        num_layers=cfg.num_layers,
        parts=parts,
        required=required,
        ignored=_IGNORED,
        where=where,
    )
    if fresh:
        warnings.warn(
            f"{len(fresh)} parameter(s) of Bert are not in the checkpoint and keep their initial "
            f"values (seed {seed}): {', '.join(fresh)}",
            UserWarning,
            stacklevel=2,
        )
    model.eval()
    return model


def bert_state_dict(model: Bert, architecture: str = "BertForMaskedLM") -> dict[str, np.ndarray]:
    """The state dict transformers' `architecture` has for our Bert ({name: array}, tied tensors included)."""
    _check_exportable(model.config, architecture)
    parts = BERT_ARCHITECTURES[architecture] + (("cosine",) if model.config.attention == "cosine" else ())
    state = export_parameters(model, BERT_PARAMETERS, num_layers=model.config.num_layers, parts=parts)
    if architecture == "BertModel":
        state = {n.removeprefix("bert."): v for n, v in state.items()}
    if "mlm" in parts:
        state.update({tied: state[source] for tied, source in _TIED.items()})
    return state


def save_bert(model: Bert, directory, architecture: str = "BertForMaskedLM", **config_extra) -> Path:
    """Write `model.safetensors` and `config.json` as `<architecture>.save_pretrained` would (the tied
    decoder tensors left out, as transformers leaves them out). A cosine model also gets
    `pytorch_model.bin` when torch is installed: the official Cottention code reads its norm_const
    tensors from that file (without torch, a warning says it was not written).

    A model with positions="from_mask" warns: transformers numbers positions 0..T-1, so its logits
    differ from ours on left-padded inputs (unpadded and right-padded ones agree).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _check_exportable(model.config, architecture)
    if model.config.positions == "from_mask":
        warnings.warn(
            "a Bert with positions='from_mask': transformers numbers positions 0..T-1 whatever the "
            "padding, so its logits differ from this model's on left-padded inputs (unpadded and "
            "right-padded inputs agree)",
            UserWarning,
            stacklevel=2,
        )
    state = {n: v for n, v in bert_state_dict(model, architecture).items() if n not in _TIED}
    write_safetensors(state, directory / SAFETENSORS_NAME)
    if model.config.attention == "cosine" and write_torch(state, directory / TORCH_NAME) is None:
        warnings.warn(
            f"a cosine-attention Bert: torch is not installed, so only {SAFETENSORS_NAME} was written; "
            f"the official Cottention code reads the norm_const tensors from {TORCH_NAME} (pip install "
            "torch and save again)",
            UserWarning,
            stacklevel=2,
        )
    config = hf_config_from_bert(model.config, architecture, **config_extra)
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    return directory
