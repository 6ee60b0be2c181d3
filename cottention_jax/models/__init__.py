"""Models with switchable attention: BERT (MLM + classification) and a GPT-J-style decoder.

Their losses are in `cottention_jax.objectives`; the old `lm_loss`, `perplexity`, `mlm_loss`
and `classification_loss` still import from here, with a DeprecationWarning when called.
"""

from cottention_jax.models import _deprecated
from cottention_jax.models.bert import BERT_PRESETS, Bert, BertConfig, bert_config
from cottention_jax.models.common import AttentionConfig, TransformerConfig, attention_names, make_attention
from cottention_jax.models.gpt import GPT, GPT_PRESETS, GPTConfig, gpt_config

__all__ = [
    "BERT_PRESETS", "Bert", "BertConfig", "bert_config",
    "GPT", "GPT_PRESETS", "GPTConfig", "gpt_config",
    "AttentionConfig", "TransformerConfig", "attention_names", "make_attention",
]

__getattr__ = _deprecated.module_getattr(None)
