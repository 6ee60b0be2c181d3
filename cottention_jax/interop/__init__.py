"""Weights from and to PyTorch (Hugging Face transformers), without needing torch.

    model = interop.load_gptj("path/to/gptj-dir")        # GPTJForCausalLM, or the official Cottention GPT
    model = interop.load_bert("path/to/bert-dir")        # BertForMaskedLM / ...SequenceClassification / ...PreTraining
    interop.save_gptj(model, "out-dir")                  # model.safetensors + config.json, as save_pretrained

Sources: a model directory (config.json with model.safetensors, sharded safetensors, or
pytorch_model.bin), one .safetensors / torch file, or a state dict. Safetensors are read with
the `safetensors` NumPy API; torch files need torch installed. The official Cottention
checkpoints' cosine layers (transformers' GPT-J and BERT with `norm_const` per layer) convert to
`attention="cosine"`, `norm_const` becoming our `stabilizer`; saving a cosine model also writes the
`pytorch_model.bin` the official loaders read, when torch is installed. A converted BERT numbers
positions 0..T-1 as transformers does (BertConfig.positions="absolute"). Every error names the
file it concerns, and non-float weights are refused. The parameter tables, one per
architecture, are `GPTJ_PARAMETERS` and `BERT_PARAMETERS` (printed in `gptj`'s and `bert`'s
docstrings). Nothing here downloads: pass files you have.
"""

from cottention_jax.interop.bert import (
    BERT_ARCHITECTURES,
    BERT_PARAMETERS,
    bert_config_from_hf,
    bert_state_dict,
    hf_config_from_bert,
    load_bert,
    save_bert,
)
from cottention_jax.interop.files import read_hf_config, read_state_dict, write_safetensors
from cottention_jax.interop.gptj import (
    GPTJ_PARAMETERS,
    gpt_config_from_hf,
    gptj_state_dict,
    hf_config_from_gpt,
    load_gptj,
    save_gptj,
)

__all__ = [
    "BERT_ARCHITECTURES",
    "BERT_PARAMETERS",
    "GPTJ_PARAMETERS",
    "bert_config_from_hf",
    "bert_state_dict",
    "gpt_config_from_hf",
    "gptj_state_dict",
    "hf_config_from_bert",
    "hf_config_from_gpt",
    "load_bert",
    "load_gptj",
    "read_hf_config",
    "read_state_dict",
    "save_bert",
    "save_gptj",
    "write_safetensors",
]
