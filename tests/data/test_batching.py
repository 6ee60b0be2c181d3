"""BERT input helpers: MLM masking statistics and the [CLS] a [SEP] b [SEP] encoding, against independent
constructions."""

from __future__ import annotations

import numpy as np

from cottention_jax.data import batching, tokenization
from tests.data._fixtures import fresh_rng

BYTE = tokenization.ByteTokenizer()


# ---------------------------------------------------------------- MLM


def test_mlm_masking_statistics():
    """15% of real non-special tokens chosen; of those 80% [MASK], 10% random, 10% kept."""
    rng = fresh_rng()
    tok = tokenization.get_tokenizer("wordpiece")
    b, t = 512, 64
    ids = rng.integers(5, tok.vocab_size, size=(b, t)).astype(np.int32)
    lengths = rng.integers(3, t + 1, size=b)
    padding = np.arange(t)[None, :] < lengths[:, None]
    ids[:, 0] = tok.cls_id
    ids[np.arange(b), lengths - 1] = tok.sep_id
    ids[rng.random((b, t)) < 0.02] = tok.unk_id  # specials inside the text too
    ids[~padding] = tok.pad_id
    masked, labels, weights = batching.mask_tokens(ids, padding, tok, rng)
    chosen = weights == 1
    eligible = padding & ~np.isin(ids, tok.all_special_ids)
    assert not np.any(chosen & ~eligible)  # no special, no padding
    assert np.array_equal(np.where(chosen, ids, 0), labels)  # labels are the originals
    assert np.array_equal(masked[~chosen], ids[~chosen])  # nothing else changes
    per_row = chosen.sum(1)
    assert np.array_equal(per_row, np.where(eligible.sum(1) > 0, np.maximum(1, np.rint(0.15 * eligible.sum(1))), 0))
    assert abs(chosen.sum() / eligible.sum() - 0.15) < 0.01
    as_mask = masked[chosen] == tok.mask_id
    kept = masked[chosen] == ids[chosen]
    other = ~as_mask & ~kept
    n = chosen.sum()
    assert abs(as_mask.sum() / n - 0.8) < 0.03
    assert abs(kept.sum() / n - 0.1) < 0.025
    assert abs(other.sum() / n - 0.1) < 0.025
    assert not np.isin(masked[chosen][other], tok.all_special_ids).any()


# ---------------------------------------------------------------- classification


def test_classification_inputs_single_and_pair():
    rng = fresh_rng()
    a = [rng.integers(0, 256, size=n).astype(np.int32) for n in (3, 20, 9)]
    b = [rng.integers(0, 256, size=n).astype(np.int32) for n in (4, 2, 30)]
    ids, seg, mask = batching.encode_classification_inputs(a, None, BYTE, 12)
    assert np.array_equal(ids[0][:5], [BYTE.cls_id, *a[0], BYTE.sep_id])
    assert np.array_equal(ids[1], [BYTE.cls_id, *a[1][:10], BYTE.sep_id])
    assert np.all(seg == 0) and np.array_equal(mask.sum(1), [5, 12, 11])
    ids, seg, mask = batching.encode_classification_inputs(a, b, BYTE, 12)
    cls, sep = BYTE.cls_id, BYTE.sep_id
    assert np.array_equal(ids[0][:10], [cls, *a[0], sep, *b[0], sep])
    assert np.array_equal(seg[0], [0] * 5 + [1] * 5 + [0] * 2)
    # Longest first: 20 + 2 -> 7 + 2 (budget 9); 9 + 30 -> 5 + 4.
    assert np.array_equal(ids[1], [cls, *a[1][:7], sep, *b[1], sep])
    assert np.array_equal(ids[2], [cls, *a[2][:5], sep, *b[2][:4], sep])
    assert np.array_equal(seg[2], [0] * 7 + [1] * 5) and mask.all(axis=1)[1:].all()
