"""Grain batches of prepared token streams: windows against the stream itself, epochs, seeds, exact
resume, sharding across processes, evaluation coverage, BERT masking, and bad arguments."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest

from cottention_jax.data import pipeline, prepare, tokenization
from cottention_jax.data.pipeline import TokenStream
from tests.data._fixtures import fresh_rng, write_text_files

BYTE = tokenization.ByteTokenizer()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_text_files(root, fresh_rng(), [f"doc{i}.txt" for i in range(9)], low=5, high=25)
    return root


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    """A byte-tokenized corpus (the byte tokenizer has every role: eos, pad, cls, sep, mask)."""
    return prepare.prepare_text(
        str(corpus),
        tokenizer="byte",
        validation_fraction=0.25,
        data_dir=tmp_path_factory.mktemp("data"),
        log=lambda m: None,
    )


def _stream(prepared, split="train") -> np.ndarray:
    stream = TokenStream(prepared, split)
    return stream.read(0, stream.num_tokens)


def _take(batches, n):
    try:
        return [next(batches) for _ in range(n)]
    finally:
        batches.close()


def _same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b, strict=True)
    )


def _gpt_rows(batches: list[dict]) -> list[tuple]:
    """Each row as its window: inputs plus the last target (after checking targets = inputs shifted)."""
    rows = []
    for batch in batches:
        assert batch["inputs"].dtype == batch["targets"].dtype == np.int32
        assert batch["weights"].dtype == np.float32 and np.all(batch["weights"] == 1)
        np.testing.assert_array_equal(batch["targets"][:, :-1], batch["inputs"][:, 1:])
        rows += [tuple(np.append(i, t[-1])) for i, t in zip(batch["inputs"], batch["targets"], strict=True)]
    return rows


def _gpt_windows(stream, seq_len) -> list[tuple]:
    count = (len(stream) - 1) // seq_len
    return [tuple(stream[i * seq_len : i * seq_len + seq_len + 1]) for i in range(count)]


# ---------------------------------------------------------------- GPT training batches


def test_gpt_rows_are_windows_and_each_epoch_is_a_new_permutation(prepared):
    stream, seq_len, batch_size = _stream(prepared), 16, 6
    windows = _gpt_windows(stream, seq_len)
    w = len(windows)
    assert w == (prepared.num_tokens("train") - 1) // seq_len > 100
    batches = _take(pipeline.gpt_train_batches(prepared, batch_size, seq_len, seed=3), -(-3 * w // batch_size))
    assert all(b["inputs"].shape == (batch_size, seq_len) for b in batches)
    rows = _gpt_rows(batches)
    assert set(rows) <= set(windows)
    epochs = [rows[k * w : (k + 1) * w] for k in range(3)]  # batches run on across epochs
    for epoch in epochs:
        assert collections.Counter(epoch) == collections.Counter(windows)  # every window exactly once
    assert epochs[0] != epochs[1] != epochs[2] and epochs[0] != windows  # shuffled, anew each epoch


def test_gpt_seeds(prepared):
    a = _take(pipeline.gpt_train_batches(prepared, 4, 16, seed=5), 8)
    b = _take(pipeline.gpt_train_batches(prepared, 4, 16, seed=5), 8)
    c = _take(pipeline.gpt_train_batches(prepared, 4, 16, seed=6), 8)
    assert _same(a, b) and not _same(a, c)
    assert collections.Counter(_gpt_rows(c)) != collections.Counter(_gpt_rows(a))


def _train(kind):
    make = {"gpt": pipeline.gpt_train_batches, "mlm": pipeline.mlm_train_batches}[kind]
    return lambda prepared, batch_size=4, seq_len=16, seed=11, **kw: make(prepared, batch_size, seq_len, seed, **kw)


@pytest.mark.parametrize("kind", ["gpt", "mlm"])
def test_resume_continues_exactly(prepared, kind):
    make = _train(kind)
    n = prepared.num_tokens("train")
    windows = (n - 1) // 16 if kind == "gpt" else n // 14
    k = windows // 4 + 2  # the state is taken in the second epoch
    expected = _take(make(prepared), k + 4)
    first = make(prepared)
    assert _same([next(first) for _ in range(k)], expected[:k])
    state = json.loads(json.dumps(first.get_state()))  # through JSON, as in a checkpoint
    first.close()
    assert state["kind"] == kind and state["batch_size"] == 4 and state["seq_len"] == 16 and state["seed"] == 11
    assert state["data"] == prepared.meta["fingerprint"]
    resumed = make(prepared)
    resumed.set_state(state)
    assert _same(_take(resumed, 4), expected[k:])  # masks too, for MLM


@pytest.mark.parametrize("kind", ["gpt", "mlm"])
def test_set_state_refuses_other_settings_and_data(prepared, corpus, tmp_path, kind):
    make = _train(kind)
    source = make(prepared)
    next(source)
    state = source.get_state()
    source.close()
    other_data = prepare.prepare_text(
        str(corpus), tokenizer="byte", validation_fraction=0.4, data_dir=tmp_path, log=lambda m: None
    )
    refusals = [
        (make(prepared, batch_size=8), r"state\['batch_size'\] is 4 but these batches have batch_size=8"),
        (make(prepared, seq_len=32), r"state\['seq_len'\] is 16 .* seq_len=32"),
        (make(prepared, seed=12), r"state\['seed'\] is 11 .* seed=12"),
        (make(other_data), r"state\['data'\] is '[0-9a-f]{64}' .* other data"),
        (_train("mlm" if kind == "gpt" else "gpt")(prepared), r"state\['kind'\] is '" + kind),
    ]
    for batches, message in refusals:
        with pytest.raises(ValueError, match=message):
            batches.set_state(state)
        batches.close()
    fresh = make(prepared)
    with pytest.raises(ValueError, match="state must come from Batches.get_state"):
        fresh.set_state({k: v for k, v in state.items() if k != "grain"})
    fresh.close()


def test_shards_read_disjoint_windows_that_together_are_the_epoch(prepared):
    """Process i of 2 reads rows i*B/2 ... of every global batch: the two together are the one-process batches."""
    stream, seq_len, batch_size = _stream(prepared), 16, 6
    windows = _gpt_windows(stream, seq_len)
    w = len(windows)
    n = -(-w // batch_size) + 1
    shards = [
        [
            _gpt_rows([b])
            for b in _take(
                pipeline.gpt_train_batches(prepared, batch_size, seq_len, seed=2, shard_index=i, shard_count=2), n
            )
        ]
        for i in range(2)
    ]
    whole = [_gpt_rows([b]) for b in _take(pipeline.gpt_train_batches(prepared, batch_size, seq_len, seed=2), n)]
    assert all(len(a) == len(b) == batch_size // 2 for a, b in zip(*shards, strict=True))
    assert [a + b for a, b in zip(*shards, strict=True)] == whole  # the global batch, split by rows
    rows = [row for batch in whole for row in batch]
    first = collections.Counter(row for batch in shards[0] for row in batch)
    second = collections.Counter(row for batch in shards[1] for row in batch)
    assert first + second == collections.Counter(rows)
    assert collections.Counter(rows[:w]) == collections.Counter(windows)  # one epoch: every window once
    with pytest.raises(ValueError, match="batch_size \\(5\\) must be divisible by the 2 processes"):
        pipeline.gpt_train_batches(prepared, 5, 16, shard_index=0, shard_count=2)
    with pytest.raises(ValueError, match=r"shard_index must be in \[0, 2\)"):
        pipeline.gpt_train_batches(prepared, 4, 16, shard_index=2, shard_count=2)


# ---------------------------------------------------------------- GPT evaluation


@pytest.mark.parametrize("split", ["validation", "train"])
def test_gpt_eval_covers_every_target_once_in_order(prepared, split):
    stream = _stream(prepared, split)
    batch_size, seq_len = 3, 10
    batches = list(pipeline.gpt_eval_batches(prepared, batch_size, seq_len, split=split))
    assert len(batches) == -(-(len(stream) - 1) // (batch_size * seq_len))
    assert all(b["inputs"].shape == b["targets"].shape == b["weights"].shape == (3, 10) for b in batches)
    inputs, targets, weights = (
        np.concatenate([b[k].ravel() for b in batches]) for k in ("inputs", "targets", "weights")
    )
    assert weights.sum() == len(stream) - 1 == prepared.num_tokens(split) - 1
    real = weights == 1
    assert np.all(real[: len(stream) - 1]) and not np.any(real[len(stream) - 1 :])  # padding only at the end
    np.testing.assert_array_equal(inputs[real], stream[:-1])
    np.testing.assert_array_equal(targets[real], stream[1:])
    assert np.all(targets[~real] == BYTE.pad_id)


# ---------------------------------------------------------------- BERT MLM


def _restored(batch):
    return np.where(batch["mlm_weights"] == 1, batch["mlm_labels"], batch["input_ids"])


def test_mlm_rows_windows_and_masking(prepared):
    seq_len, batch_size = 18, 4
    body = seq_len - 2
    stream = _stream(prepared)
    windows = [tuple(stream[i * body : (i + 1) * body]) for i in range(len(stream) // body)]
    w = len(windows)
    batches = _take(pipeline.mlm_train_batches(prepared, batch_size, seq_len, seed=4), -(-3 * w // batch_size))
    specials = np.asarray(BYTE.all_special_ids)
    rows, chosen_total, as_mask, kept, replaced = [], 0, 0, 0, 0
    for batch in batches:
        assert batch["input_ids"].shape == batch["mlm_labels"].shape == (batch_size, seq_len)
        assert batch["padding_mask"].dtype == bool and batch["padding_mask"].all()
        assert batch["mlm_weights"].dtype == np.float32 and np.all(batch["segment_ids"] == 0)
        original = _restored(batch)
        assert np.all(original[:, 0] == BYTE.cls_id) and np.all(original[:, -1] == BYTE.sep_id)
        rows += [tuple(r[1:-1]) for r in original]
        chosen = batch["mlm_weights"] == 1
        eligible = ~np.isin(original, specials)
        assert not np.any(chosen & ~eligible)  # never [CLS], [SEP], eos...
        np.testing.assert_array_equal(batch["mlm_labels"], np.where(chosen, original, 0))
        np.testing.assert_array_equal(chosen.sum(1), np.maximum(1, np.rint(0.15 * eligible.sum(1))))
        ids = batch["input_ids"][chosen]
        chosen_total += chosen.sum()
        as_mask += (ids == BYTE.mask_id).sum()
        kept += (ids == original[chosen]).sum()
        other = (ids != BYTE.mask_id) & (ids != original[chosen])
        replaced += other.sum()
        assert not np.isin(ids[other], specials).any()
    for k in range(3):
        assert collections.Counter(rows[k * w : (k + 1) * w]) == collections.Counter(windows)
    assert chosen_total > 1000
    assert abs(as_mask / chosen_total - 0.8) < 0.06
    assert abs(kept / chosen_total - 0.1) < 0.05 and abs(replaced / chosen_total - 0.1) < 0.05


def test_mlm_masks_follow_the_seed(prepared):
    a = _take(pipeline.mlm_train_batches(prepared, 4, 18, seed=9), 6)
    b = _take(pipeline.mlm_train_batches(prepared, 4, 18, seed=9), 6)
    c = _take(pipeline.mlm_train_batches(prepared, 4, 18, seed=10), 6)
    assert _same(a, b) and not _same(a, c)
    # Two masks of the same rows differ from batch to batch: drawn per batch number.
    assert not np.array_equal(a[0]["mlm_weights"], a[1]["mlm_weights"])


def test_mlm_eval_covers_every_window_once(prepared):
    seq_len, batch_size = 20, 3
    body = seq_len - 2
    stream = _stream(prepared, "validation")
    starts = list(range(0, len(stream), body))
    batches = list(pipeline.mlm_eval_batches(prepared, batch_size, seq_len, seed=1))
    assert len(batches) == -(-len(starts) // batch_size)
    mask = np.concatenate([b["padding_mask"] for b in batches])
    restored = np.concatenate([_restored(b) for b in batches])
    pieces = []
    for r, start in enumerate(starts):
        piece = stream[start : start + body]
        n = len(piece) + 2
        np.testing.assert_array_equal(mask[r], np.arange(seq_len) < n)
        np.testing.assert_array_equal(
            restored[r], np.concatenate([[BYTE.cls_id], piece, [BYTE.sep_id], [BYTE.pad_id] * (seq_len - n)])
        )
        pieces.append(restored[r][1 : n - 1])
    np.testing.assert_array_equal(np.concatenate(pieces), stream)  # the whole stream, once, in order
    assert mask[len(starts) :].sum() == 0 and np.all(restored[len(starts) :] == BYTE.pad_id)
    weights = np.concatenate([b["mlm_weights"] for b in batches])
    assert weights[~mask].sum() == 0
    again = list(pipeline.mlm_eval_batches(prepared, batch_size, seq_len, seed=1))
    other = list(pipeline.mlm_eval_batches(prepared, batch_size, seq_len, seed=2))
    assert _same(batches, again) and not _same(batches, other)
    np.testing.assert_array_equal(np.concatenate([_restored(b) for b in other]), restored)


# ---------------------------------------------------------------- bad arguments


def _prepared_with(tokenizer, corpus, tmp_path):
    path = tokenizer.save(tmp_path / "tokenizer.json")
    return prepare.prepare_text(str(corpus), tokenizer=str(path), data_dir=tmp_path, log=lambda m: None)


def test_bad_arguments(prepared, corpus, tmp_path):
    n = prepared.num_tokens("train")
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1; got 0"):
        pipeline.gpt_train_batches(prepared, 0, 16)
    with pytest.raises(ValueError, match="seq_len must be an integer >= 1; got 2.5"):
        pipeline.gpt_train_batches(prepared, 2, 2.5)
    with pytest.raises(
        ValueError,
        match=f"seq_len={n} needs at least {n + 1} tokens; the stream has {n} "
        r"\(lower data.seq_len or add text\)",
    ):
        pipeline.gpt_train_batches(prepared, 2, n)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1; got 0"):
        next(pipeline.gpt_eval_batches(prepared, 0, 16))
    with pytest.raises(ValueError, match="seq_len must be an integer >= 3; got 2"):
        pipeline.mlm_train_batches(prepared, 2, 2)
    with pytest.raises(ValueError, match=f"needs at least {n + 1} tokens; the stream has {n}"):
        pipeline.mlm_train_batches(prepared, 2, n + 3)
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'validation'\); got 'test'"):
        TokenStream(prepared, "test")
    wordpiece = _prepared_with(tokenization.get_tokenizer("wordpiece", vocab_size=512), corpus, tmp_path / "wp")
    with pytest.raises(
        ValueError,
        match=r"GPT batches needs special tokens \['eos'\]; the wordpiece tokenizer "
        r"has no \['eos'\]",
    ):
        pipeline.gpt_train_batches(wordpiece, 2, 8)
    bpe = _prepared_with(tokenization.get_tokenizer("bpe", vocab_size=512), corpus, tmp_path / "bpe")
    with pytest.raises(ValueError, match=r"MLM batches needs special tokens .* has no \['cls', 'sep', 'mask'\]"):
        pipeline.mlm_train_batches(bpe, 2, 8)
    with pytest.raises(ValueError, match="MLM evaluation batches needs special tokens"):
        next(pipeline.mlm_eval_batches(bpe, 2, 8))


@pytest.mark.parametrize("kind", ["gpt", "mlm"])
def test_two_processes_read_exactly_the_one_process_batches(prepared, kind):
    """Training and evaluation batches of processes 0 and 1 of 2, stacked, equal one process's, masks included:
    a run sees the same data whatever its process count (and resumes across counts from the same state)."""
    make = _train(kind)
    whole = _take(make(prepared, batch_size=6), 5)
    parts = [_take(make(prepared, batch_size=6, shard_index=i, shard_count=2), 5) for i in range(2)]
    for one, a, b in zip(whole, *parts, strict=True):
        assert set(one) == set(a) == set(b)
        for key in one:
            np.testing.assert_array_equal(np.concatenate([a[key], b[key]]), one[key])
    evaluate = {"gpt": pipeline.gpt_eval_batches, "mlm": pipeline.mlm_eval_batches}[kind]
    whole = list(evaluate(prepared, 6, 16))
    parts = [list(evaluate(prepared, 6, 16, shard_index=i, shard_count=2)) for i in range(2)]
    assert len(whole) == len(parts[0]) == len(parts[1])
    for one, a, b in zip(whole, *parts, strict=True):
        for key in one:
            np.testing.assert_array_equal(np.concatenate([a[key], b[key]]), one[key])
