"""Models with switchable attention: BERT (MLM + classification) and a GPT-J-style decoder.

Their losses are in `cottention_jax.objectives` (per batch: `gpt_objective`, `mlm_objective`,
`classification_objective`), over the cross-entropies of `cottention_jax.losses`.
"""

from cottention_jax.models.bert import BERT_PRESETS, Bert, BertConfig, bert_config
from cottention_jax.models.common import AttentionConfig, TransformerConfig, attention_names, make_attention
from cottention_jax.models.gpt import GPT, GPT_PRESETS, GPTConfig, gpt_config

__all__ = [
    "BERT_PRESETS",
    "Bert",
    "BertConfig",
    "bert_config",
    "GPT",
    "GPT_PRESETS",
    "GPTConfig",
    "gpt_config",
    "AttentionConfig",
    "TransformerConfig",
    "attention_names",
    "make_attention",
]
