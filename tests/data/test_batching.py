"""Batch iterators: contents against independent constructions, determinism, resume, MLM statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cottention_jax.data import batching, tokenization
from tests.data._fixtures import fresh_rng

BYTE = tokenization.ByteTokenizer()


def _documents(rng, n=7, low=5, high=400):
    """Random byte-token documents of random lengths."""
    return [rng.integers(0, 256, size=int(rng.integers(low, high))).astype(np.int32) for _ in range(n)]


def _stream(documents, eos):
    out = []
    for doc in documents:
        out += list(doc) + [eos]
    return np.asarray(out, np.int32)


# ---------------------------------------------------------------- GPT


def test_gpt_batches_are_windows_of_the_packed_stream():
    docs = _documents(fresh_rng())
    it = batching.GPTBatches(docs, BYTE, batch_size=4, seq_len=16, seed=3)
    stream = _stream(docs, BYTE.eos_id)
    assert np.array_equal(it.stream, stream)
    for step in range(5):
        batch = next(it)
        assert batch["inputs"].shape == batch["targets"].shape == (4, 16)
        assert batch["inputs"].dtype == batch["targets"].dtype == np.int32
        assert np.all(batch["weights"] == 1.0)
        for row, item in enumerate(it.item_indices(step)):
            window = stream[item * 16:item * 16 + 17]
            assert np.array_equal(batch["inputs"][row], window[:-1])
            assert np.array_equal(batch["targets"][row], window[1:])


def test_gpt_epochs_visit_every_window_once():
    docs = _documents(fresh_rng())
    it = batching.GPTBatches(docs, BYTE, batch_size=5, seq_len=8, seed=1)
    n = it.num_items
    steps = 3 * n // 5 + 1
    seen = np.concatenate([it.item_indices(s) for s in range(steps)])
    for epoch in range(3):
        assert sorted(seen[epoch * n:(epoch + 1) * n]) == list(range(n))
    assert not np.array_equal(seen[:n], seen[n:2 * n])  # a new order each epoch


def test_gpt_determinism_and_seeds():
    docs = _documents(fresh_rng())
    a = [next(it) for it in [batching.GPTBatches(docs, BYTE, 4, 16, seed=5)] for _ in range(6)]
    b = [next(it) for it in [batching.GPTBatches(docs, BYTE, 4, 16, seed=5)] for _ in range(6)]
    c = [next(it) for it in [batching.GPTBatches(docs, BYTE, 4, 16, seed=6)] for _ in range(6)]
    assert all(np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, b))
    assert not all(np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, c))


@pytest.mark.parametrize("make", [
    lambda docs: batching.GPTBatches(docs, BYTE, 3, 16, seed=11),
    lambda docs: batching.MLMBatches(docs, BYTE, 3, 16, seed=11),
    lambda docs: batching.ClassificationBatches(docs, None, np.arange(len(docs)) % 2, BYTE, 3, 32,
                                                seed=11),
], ids=["gpt", "mlm", "classification"])
def test_resume_restores_the_next_batch(make):
    docs = _documents(fresh_rng(), n=9)
    k = 7
    uninterrupted = make(docs)
    expected = [next(uninterrupted) for _ in range(k + 2)]
    first = make(docs)
    for _ in range(k):
        next(first)
    state = json.loads(json.dumps(first.get_state()))  # through JSON, as in a checkpoint
    assert state["step"] == k
    resumed = make(docs)
    resumed.set_state(state)
    for want in expected[k:]:
        got = next(resumed)
        assert got.keys() == want.keys()
        assert all(np.array_equal(got[key], want[key]) for key in want)


def test_set_state_rejects_other_settings():
    docs = _documents(fresh_rng())
    state = batching.GPTBatches(docs, BYTE, 4, 16, seed=0).get_state()
    with pytest.raises(ValueError, match=r"state\['batch_size'\] is 4 but this iterator has batch_size=8"):
        batching.GPTBatches(docs, BYTE, 8, 16, seed=0).set_state(state)
    with pytest.raises(ValueError, match=r"state\['num_items'\] is \d+ but .* other data"):
        batching.GPTBatches(docs[1:], BYTE, 4, 16, seed=0).set_state(state)
    with pytest.raises(ValueError, match="state must have a 'step' entry"):
        batching.GPTBatches(docs, BYTE, 4, 16, seed=0).set_state({"seed": 0})


def test_gpt_eval_covers_every_target_once():
    docs = _documents(fresh_rng(), n=5)
    stream = _stream(docs, BYTE.eos_id)
    batches = list(batching.gpt_eval_batches(docs, BYTE, batch_size=3, seq_len=10))
    inputs = np.concatenate([b["inputs"].ravel() for b in batches])
    targets = np.concatenate([b["targets"].ravel() for b in batches])
    weights = np.concatenate([b["weights"].ravel() for b in batches])
    assert all(b["inputs"].shape == (3, 10) for b in batches)
    assert weights.sum() == len(stream) - 1
    assert np.array_equal(targets[weights == 1], stream[1:])
    assert np.array_equal(inputs[weights == 1], stream[:-1])
    assert np.all(targets[weights == 0] == BYTE.pad_id)


def test_gpt_bad_arguments():
    docs = _documents(fresh_rng(), n=1, low=5, high=6)
    with pytest.raises(ValueError, match="seq_len=64 needs at least 65 tokens, the documents give 6"):
        batching.GPTBatches(docs, BYTE, 2, 64)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        batching.GPTBatches(docs, BYTE, 0, 2)
    wordpiece = tokenization.get_tokenizer("wordpiece")
    with pytest.raises(ValueError, match=r"tokenizer: GPT batches needs special tokens \['eos'\]"):
        batching.GPTBatches(docs, wordpiece, 2, 2)
    with pytest.raises(ValueError, match="documents must not be empty"):
        batching.GPTBatches([], BYTE, 2, 2)


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
    assert not np.any(chosen & ~eligible)                    # no special, no padding
    assert np.array_equal(np.where(chosen, ids, 0), labels)  # labels are the originals
    assert np.array_equal(masked[~chosen], ids[~chosen])     # nothing else changes
    per_row = chosen.sum(1)
    assert np.array_equal(per_row, np.where(eligible.sum(1) > 0,
                                            np.maximum(1, np.rint(0.15 * eligible.sum(1))), 0))
    assert abs(chosen.sum() / eligible.sum() - 0.15) < 0.01
    as_mask = masked[chosen] == tok.mask_id
    kept = masked[chosen] == ids[chosen]
    other = ~as_mask & ~kept
    n = chosen.sum()
    assert abs(as_mask.sum() / n - 0.8) < 0.03
    assert abs(kept.sum() / n - 0.1) < 0.025
    assert abs(other.sum() / n - 0.1) < 0.025
    assert not np.isin(masked[chosen][other], tok.all_special_ids).any()


def test_mlm_batches_layout():
    docs = _documents(fresh_rng(), n=5, low=1, high=120)
    it = batching.MLMBatches(docs, BYTE, batch_size=6, seq_len=32, seed=2)
    # Rows: each document cut into pieces of 30 tokens, wrapped in [CLS] ... [SEP].
    expected_rows = [piece for d in docs for piece in (d[i:i + 30] for i in range(0, len(d), 30))]
    assert it.num_items == len(expected_rows)
    for step in range(4):
        batch = it.batch_at(step)
        assert batch["input_ids"].shape == batch["mlm_labels"].shape == (6, 32)
        assert batch["padding_mask"].dtype == bool and batch["mlm_weights"].dtype == np.float32
        assert np.all(batch["segment_ids"] == 0)
        for row, item in enumerate(it.item_indices(step)):
            piece = expected_rows[item]
            n = len(piece) + 2
            assert np.array_equal(batch["padding_mask"][row], np.arange(32) < n)
            original = np.concatenate([[BYTE.cls_id], piece, [BYTE.sep_id], [BYTE.pad_id] * (32 - n)])
            restored = np.where(batch["mlm_weights"][row] == 1, batch["mlm_labels"][row],
                                batch["input_ids"][row])
            assert np.array_equal(restored, original)
            assert batch["mlm_weights"][row][[0, n - 1]].sum() == 0
    assert all(np.array_equal(it.batch_at(3)[k], it.batch_at(3)[k]) for k in batch)  # step-fixed masks


def test_mlm_eval_batches_cover_every_row_once():
    docs = _documents(fresh_rng(), n=4, low=10, high=100)
    rows, lengths = batching._mlm_sequences(docs, BYTE, 24)
    batches = list(batching.mlm_eval_batches(docs, BYTE, batch_size=5, seq_len=24, seed=1))
    assert len(batches) == -(-len(rows) // 5)
    mask = np.concatenate([b["padding_mask"] for b in batches])
    assert np.array_equal(mask.sum(1)[:len(rows)], lengths) and mask[len(rows):].sum() == 0
    again = list(batching.mlm_eval_batches(docs, BYTE, batch_size=5, seq_len=24, seed=1))
    assert all(np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(batches, again))


def test_mlm_bad_arguments():
    docs = _documents(fresh_rng(), n=2)
    bpe = tokenization.get_tokenizer("bpe")
    with pytest.raises(ValueError, match=r"has no \['cls', 'sep', 'mask'\]"):
        batching.MLMBatches(docs, bpe, 2, 16)
    with pytest.raises(ValueError, match="seq_len must be an integer >= 3, got 2"):
        batching.MLMBatches(docs, BYTE, 2, 2)
    with pytest.raises(ValueError, match=r"must both be \(B, T\), got \(2, 3\) and \(2, 4\)"):
        batching.mask_tokens(np.zeros((2, 3), np.int32), np.ones((2, 4), bool), BYTE, fresh_rng())


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


def test_classification_batches_and_eval():
    rng = fresh_rng()
    docs = _documents(rng, n=11, low=2, high=30)
    pairs = _documents(rng, n=11, low=2, high=30)
    labels = rng.integers(0, 2, size=11)
    it = batching.ClassificationBatches(docs, pairs, labels, BYTE, batch_size=4, seq_len=40, seed=0)
    ids, seg, mask = batching.encode_classification_inputs(docs, pairs, BYTE, 40)
    for step in range(5):
        batch = next(it)
        items = it.item_indices(step)
        assert batch["labels"].shape == (4,) and batch["labels"].dtype == np.int32
        assert np.array_equal(batch["labels"], labels[items])
        assert np.array_equal(batch["input_ids"], ids[items])
        assert np.array_equal(batch["segment_ids"], seg[items])
    evals = list(batching.classification_eval_batches(docs, pairs, labels, BYTE, 4, 40))
    weights = np.concatenate([b["weights"] for b in evals])
    assert len(evals) == 3 and weights.sum() == 11 and np.all(weights[11:] == 0)
    assert np.array_equal(np.concatenate([b["labels"] for b in evals])[:11], labels)
    with pytest.raises(ValueError, match=r"labels must have shape \(11,\)"):
        batching.ClassificationBatches(docs, None, labels[:5], BYTE, 4, 40)
