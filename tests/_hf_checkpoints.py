"""Run in the interop environment (torch + transformers, tests/_interop.py), never imported by the suite.

python tests/_hf_checkpoints.py build OUT SEED
    Random-initialised small transformers models, each saved as transformers saves them
    (config.json + model.safetensors) in OUT/<name>/ with inputs.npz and the logits
    transformers computes on them (logits.npy):
      gptj        GPTJForCausalLM, left-padded batch with explicit position ids
      bert_mlm    BertForMaskedLM (exact GELU), right-padded, random segment ids
      bert_cls    BertForSequenceClassification, 3 labels
      bert_pretraining  BertForPreTraining (MLM and NSP heads, the official Cottention BERT's class),
                  left-padded: logits.npy holds its MLM prediction logits
    and the official Cottention layout (no logits: transformers has no cosine attention):
      gptj_cosine, bert_cosine   the state dicts above plus one norm_const (1, heads, 1, 1)
                                 per layer, at the names of the Cottention code
    plus gptj_bf16.safetensors (the GPT-J weights in bfloat16) and gptj_torch.bin (torch.save).
python tests/_hf_checkpoints.py logits DIR INPUTS
    Loads DIR with from_pretrained (a directory our exporters wrote) and writes DIR/logits.npy
    for the inputs in INPUTS (an inputs.npz of the build step).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForPreTraining,
    BertForSequenceClassification,
    GPTJConfig,
    GPTJForCausalLM,
)


def _randomise(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Weights far from transformers' tiny default init, so the logits test every parameter."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if "LayerNorm" in name or "ln_" in name:
                p.copy_((1.0 + 0.2 * noise) if name.endswith("weight") else 0.2 * noise)
            else:
                p.copy_(noise / max(p.shape[-1], 1) ** 0.5 if p.ndim == 2 else 0.2 * noise)


def _lengths_mask(rng, b, t, side):
    lengths = rng.integers(1, t + 1, size=b)
    lengths[0] = t
    pos = np.arange(t)[None]
    return (pos >= (t - lengths)[:, None]) if side == "left" else (pos < lengths[:, None])


def _save(model, out: Path, inputs: dict, logits, extra_state: dict | None = None) -> None:
    out.mkdir(parents=True)
    if extra_state is None:
        model.save_pretrained(out, safe_serialization=True)
    else:  # the Cottention layout: the model's tensors plus norm_const, saved as one file
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        state.update(extra_state)
        shared = {id(v.untyped_storage()) for v in state.values()}
        if len(shared) < len(state):  # tied tensors: save each storage once, as save_pretrained does
            seen, unique = set(), {}
            for k, v in state.items():
                if id(v.untyped_storage()) not in seen:
                    seen.add(id(v.untyped_storage()))
                    unique[k] = v
            state = unique
        save_file(state, out / "model.safetensors", metadata={"format": "pt"})
        model.config.to_json_file(out / "config.json")
    np.savez(out / "inputs.npz", **inputs)
    if logits is not None:
        np.save(out / "logits.npy", logits)


def _gptj_logits(model, inputs):
    with torch.no_grad():
        return model(
            input_ids=torch.from_numpy(inputs["tokens"]),
            attention_mask=torch.from_numpy(inputs["mask"].astype(np.int64)),
            position_ids=torch.from_numpy(inputs["positions"]),
        ).logits.numpy()


def _bert_logits(model, inputs):
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(inputs["tokens"]),
            token_type_ids=torch.from_numpy(inputs["segments"]),
            attention_mask=torch.from_numpy(inputs["mask"].astype(np.int64)),
        )
    # BertForPreTraining: its MLM head's logits (transformers numbers positions 0..T-1 whatever the padding)
    return (out.prediction_logits if isinstance(model, BertForPreTraining) else out.logits).numpy()


def build(out: Path, seed: int) -> None:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)

    gptj_config = GPTJConfig(
        vocab_size=97,
        n_positions=32,
        n_embd=48,
        n_layer=2,
        n_head=4,
        rotary_dim=8,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=None,
        eos_token_id=None,
    )
    mask = _lengths_mask(rng, 3, 11, "left")
    inputs = {
        "tokens": rng.integers(0, 97, size=(3, 11)),
        "mask": mask,
        "positions": np.maximum(np.cumsum(mask, axis=1) - 1, 0),
    }
    for name, cosine in (("gptj", False), ("gptj_cosine", True)):
        model = GPTJForCausalLM(gptj_config).eval()
        _randomise(model, generator)
        heads = gptj_config.n_head
        extra = (
            {
                f"transformer.h.{i}.attn.norm_const": torch.randn((1, heads, 1, 1), generator=generator)
                for i in range(gptj_config.n_layer)
            }
            if cosine
            else None
        )
        _save(model, out / name, inputs, None if cosine else _gptj_logits(model, inputs), extra)
        if not cosine:
            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            save_file(
                {k: v.to(torch.bfloat16) for k, v in state.items()},
                out / "gptj_bf16.safetensors",
                metadata={"format": "pt"},
            )
            torch.save(state, out / "gptj_torch.bin")

    bert_config = dict(
        vocab_size=101,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        max_position_embeddings=40,
        type_vocab_size=2,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    mask = _lengths_mask(rng, 4, 13, "right")
    inputs = {"tokens": rng.integers(0, 101, size=(4, 13)), "segments": rng.integers(0, 2, size=(4, 13)), "mask": mask}
    for name, cls, config in (
        ("bert_mlm", BertForMaskedLM, BertConfig(**bert_config)),
        ("bert_cls", BertForSequenceClassification, BertConfig(**bert_config, num_labels=3)),
        ("bert_cosine", BertForMaskedLM, BertConfig(**bert_config)),
    ):
        model = cls(config).eval()
        _randomise(model, generator)
        model.tie_weights()  # the MLM decoder is the word embedding again
        if name == "bert_cosine":
            extra = {
                f"bert.encoder.layer.{i}.attention.self.norm_const": torch.randn((1, 4, 1, 1), generator=generator)
                for i in range(config.num_hidden_layers)
            }
            _save(model, out / name, inputs, None, extra)
        else:
            _save(model, out / name, inputs, _bert_logits(model, inputs))
    mask = _lengths_mask(rng, 4, 13, "left")
    inputs = {"tokens": rng.integers(0, 101, size=(4, 13)), "segments": rng.integers(0, 2, size=(4, 13)), "mask": mask}
    model = BertForPreTraining(BertConfig(**bert_config)).eval()
    _randomise(model, generator)
    model.tie_weights()
    _save(model, out / "bert_pretraining", inputs, _bert_logits(model, inputs))
    print(json.dumps({"transformers": __import__("transformers").__version__, "torch": torch.__version__}))


def logits(directory: Path, inputs_path: Path) -> None:
    inputs = dict(np.load(inputs_path))
    config = json.loads((directory / "config.json").read_text())
    architecture = config["architectures"][0]
    classes = {
        "GPTJForCausalLM": GPTJForCausalLM,
        "BertForMaskedLM": BertForMaskedLM,
        "BertForSequenceClassification": BertForSequenceClassification,
    }
    model = classes[architecture].from_pretrained(directory).eval()
    values = _gptj_logits(model, inputs) if architecture.startswith("GPTJ") else _bert_logits(model, inputs)
    np.save(directory / "logits.npy", values)


if __name__ == "__main__":
    if sys.argv[1] == "build":
        build(Path(sys.argv[2]), int(sys.argv[3]))
    else:
        logits(Path(sys.argv[2]), Path(sys.argv[3]))
