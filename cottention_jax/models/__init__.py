"""Models with switchable attention: BERT (MLM + classification) and a GPT-J-style decoder."""

from cottention_jax.models.bert import (BERT_PRESETS, Bert, BertConfig, bert_config, classification_loss,
                                        mlm_loss)
from cottention_jax.models.common import attention_names, make_attention
from cottention_jax.models.gpt import GPT, GPT_PRESETS, GPTConfig, gpt_config, lm_loss, perplexity

__all__ = [
    "BERT_PRESETS", "Bert", "BertConfig", "bert_config", "classification_loss", "mlm_loss",
    "GPT", "GPT_PRESETS", "GPTConfig", "gpt_config", "lm_loss", "perplexity",
    "attention_names", "make_attention",
]
