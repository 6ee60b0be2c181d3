"""Labelled tasks from every source (built-in, CSV, JSON Lines, TFDS under mock_data) -> ArrayRecord -> Grain batches.

The byte tokenizer makes the expected encodings independent of the code under test:
a text's ids are its UTF-8 bytes, so a row must be [CLS] bytes(a) [SEP] (bytes(b) [SEP]) [PAD]...
"""

from __future__ import annotations

import csv
import gzip
import json
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import tensorflow_datasets as tfds
from flax import nnx

from cottention_jax.data import classification, paths, tasks
from cottention_jax.data.tokenization import ByteTokenizer
from cottention_jax.models import Bert
from cottention_jax.models.bert import bert_config
from cottention_jax.objectives import classification_objective
from cottention_jax.train_hooks import evaluate
from tests.data._fixtures import fresh_rng

TOK = ByteTokenizer()


def _rng(request) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def _texts(rng, n: int) -> list[str]:
    """n distinct short texts (with commas and quotes, which CSV must keep)."""
    words = ["river", "lantern", "towns", 'say "hi"', "copper, wheels", "owls", "bread", "salt", "rain"]
    return [f"{i} " + " ".join(rng.choice(words, int(rng.integers(1, 4)))) for i in range(n)]


def _expected_row(a: str, b: str | None, seq_len: int) -> np.ndarray:
    """The input_ids of one example under the byte tokenizer (no truncation needed here)."""
    cls, sep, pad = TOK.cls_id, TOK.sep_id, TOK.pad_id
    row = [cls, *a.encode(), sep] + ([*b.encode(), sep] if b is not None else [])
    assert len(row) <= seq_len
    return np.asarray(row + [pad] * (seq_len - len(row)), np.int32)


def _decode_split(task, split):
    """[(text_a, text_b or None, label)] of a prepared split, decoded from its stored ids."""
    ids_a, ids_b, labels = task.read_split(split)
    return [
        (bytes(a.tolist()).decode(), bytes(b.tolist()).decode() if task.is_pair else None, float(y))
        for a, b, y in zip(ids_a, ids_b, labels, strict=True)
    ]


def _write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _write_jsonl(path, records):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path


def _take(iterator, k):
    return [next(iterator) for _ in range(k)]


def _assert_batches_equal(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# ----------------------------------------------------------------------------- sources


@pytest.mark.parametrize("name", ["sentiment", "paraphrase"])
def test_builtin_task_is_an_ordinary_prepared_task(tmp_path, request, name):
    rng, splits = _rng(request), ("train",) * 12 + ("validation",) * 5 + ("test",) * 4
    texts = _texts(rng, 2 * len(splits))
    examples = [
        {
            "id": f"e{i}",
            "text_a": texts[2 * i],
            "text_b": texts[2 * i + 1] if name == "paraphrase" else "",
            "label": int(rng.integers(0, 2)),
            "split": s,
            "kind": "same",
        }
        for i, s in enumerate(splits)
    ]
    tasks.write_task(name, examples, "# synthetic\n", tmp_path)
    task = classification.prepare_task(name, TOK, data_dir=tmp_path)
    assert task.label_names == tasks.TASK_LABELS[name] and task.num_labels == 2 and not task.is_regression
    assert task.is_pair == (name == "paraphrase") and task.splits == ("train", "validation", "test")
    for split in ("train", "validation", "test"):
        expected = [
            (e["text_a"], e["text_b"] if name == "paraphrase" else None, float(e["label"]))
            for e in examples
            if e["split"] == split
        ]
        assert _decode_split(task, split) == expected
        assert task.split_sizes[split] == len(expected)


def test_builtin_task_not_built_says_how_to_build_it(tmp_path):
    with pytest.raises(paths.MissingDataError) as err:
        classification.prepare_task("sentiment", TOK, data_dir=tmp_path)
    assert tasks.task_rebuild_command("sentiment", tmp_path) in str(err.value)


def test_single_csv_is_split_80_10_10_by_text_and_keeps_every_example(tmp_path, request):
    rng = _rng(request)
    texts = _texts(rng, 400)
    texts[1] = texts[0]  # a duplicate must stay in one split
    labels = rng.integers(0, 3, len(texts))
    path = _write_csv(
        tmp_path / "reviews.csv",
        ["id", "text", "label"],
        [[i, t, int(y)] for i, (t, y) in enumerate(zip(texts, labels, strict=True))],
    )
    task = classification.prepare_task(str(path), TOK, data_dir=tmp_path / "data")
    assert (task.name, task.num_labels, task.label_names, task.metric_names) == (
        "reviews",
        3,
        ("0", "1", "2"),
        ("accuracy",),
    )
    got = {split: _decode_split(task, split) for split in task.splits}
    expected = sorted((t, None, float(y)) for t, y in zip(texts, labels, strict=True))
    assert sorted(x for rows in got.values() for x in rows) == expected
    assert 20 <= len(got["validation"]) <= 60 and 20 <= len(got["test"]) <= 60  # 40 +- 3.3 sigma
    assert sorted(sum(r[0] == texts[0] for r in rows) for rows in got.values()) == [0, 0, 2]  # together
    again = classification.prepare_task(str(path), TOK, data_dir=tmp_path / "elsewhere")
    assert {s: _decode_split(again, s) for s in again.splits} == got  # the split is fixed by the text


def test_jsonl_folder_pair_regression_without_test_labels(tmp_path, request):
    rng = _rng(request)
    folder = tmp_path / "sts"
    folder.mkdir()
    made = {}
    for split, name in (("train", "train.jsonl"), ("validation", "validation.jsonl.gz"), ("test", "test.jsonl")):
        texts = _texts(rng, 2 * 9)
        made[split] = [
            {
                "sentence1": texts[2 * i],
                "sentence2": texts[2 * i + 1],
                "label": -1 if split == "test" else float(rng.uniform(0, 5)),
            }
            for i in range(9)
        ]
        _write_jsonl(folder / name, made[split])
    task = classification.prepare_task(str(folder), TOK, data_dir=tmp_path / "data")
    assert task.is_regression and task.num_labels == 1 and task.label_names == () and task.is_pair
    assert task.metric_names == ("pearson", "spearman") and task.splits == ("train", "validation")
    assert not task.has_test
    for split in ("train", "validation"):
        assert _decode_split(task, split) == [(r["sentence1"], r["sentence2"], r["label"]) for r in made[split]]
    batch = next(task.train_batches(4, 96, seed=0))
    assert batch["labels"].dtype == np.float32 and batch["input_ids"].dtype == np.int32
    assert set(batch["labels"].tolist()) <= {np.float32(r["label"]) for r in made["train"]}


def test_explicit_fields_and_string_labels_in_csv(tmp_path, request):
    rng = _rng(request)
    q, a = _texts(rng, 20), _texts(rng, 20)
    path = _write_csv(
        tmp_path / "qa.csv",
        ["question", "answer", "is_match"],
        [[x, y, str(i % 2)] for i, (x, y) in enumerate(zip(q, a, strict=True))],
    )
    task = classification.prepare_task(
        str(path), TOK, data_dir=tmp_path, text_fields=("question", "answer"), label_field="is_match"
    )
    rows = [x for s in task.splits for x in _decode_split(task, s)]
    assert sorted(rows) == sorted((x, y, float(i % 2)) for i, (x, y) in enumerate(zip(q, a, strict=True)))
    assert task.is_pair and task.metric_names == ("accuracy", "f1")


# ----------------------------------------------------------------------------- TFDS (mock data, no network)

_GLUE_EXPECTED = {  # name: (num_labels, is_pair, is_regression, metric_names, fields)
    "sst2": (2, False, False, ("accuracy",), ("sentence",)),
    "mrpc": (2, True, False, ("f1", "accuracy"), ("sentence1", "sentence2")),
    "stsb": (1, True, True, ("pearson", "spearman"), ("sentence1", "sentence2")),
    "cola": (2, False, False, ("matthews_corrcoef",), ("sentence",)),
}


@pytest.mark.parametrize("config", sorted(_GLUE_EXPECTED))
def test_tfds_glue_under_mock_data(tmp_path, config):
    num_labels, pair, regression, metrics, fields = _GLUE_EXPECTED[config]
    with tfds.testing.mock_data(num_examples=11, policy=tfds.testing.MockPolicy.USE_CODE):
        task = classification.prepare_task(f"tfds:glue/{config}", TOK, data_dir=tmp_path)
        source = tfds.data_source(f"glue/{config}", split="validation", download=False)
        reference = [source[i] for i in range(len(source))]
    assert (task.num_labels, task.is_pair, task.is_regression, task.metric_names) == (
        num_labels,
        pair,
        regression,
        metrics,
    )
    assert task.split_sizes["train"] == 11 and task.split_sizes["validation"] == 11
    got = _decode_split(task, "validation")
    assert [(g[0], g[1]) for g in got] == [(r[fields[0]], r[fields[1]] if pair else None) for r in reference]
    np.testing.assert_allclose([g[2] for g in got], [float(r["label"]) for r in reference], rtol=0, atol=0)
    if not regression:
        assert len(task.label_names) == 2


def test_tfds_mnli_reads_the_matched_validation_split(tmp_path, monkeypatch):
    opened = []
    with tfds.testing.mock_data(num_examples=5, policy=tfds.testing.MockPolicy.USE_CODE):
        real = tfds.data_source
        monkeypatch.setattr(
            tfds, "data_source", lambda name, *, split, **kw: opened.append(split) or real(name, split=split, **kw)
        )
        task = classification.prepare_task("tfds:glue/mnli", TOK, data_dir=tmp_path)
    assert opened == ["train", "validation_matched", "test_matched"]
    assert task.num_labels == 3 and task.label_names == ("entailment", "neutral", "contradiction") and task.is_pair


def test_tfds_not_prepared_says_how_to_prepare_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))  # where TFDS datasets are read
    with pytest.raises(paths.MissingDataError, match="tfds build glue/sst2") as err:
        classification.prepare_task("tfds:glue/sst2", TOK, data_dir=tmp_path)
    assert "\n" not in str(err.value) and str(tmp_path / "tfds") in str(err.value)
    with pytest.raises(paths.MissingDataError, match="no_such_dataset_xyz"):
        classification.prepare_task("tfds:no_such_dataset_xyz", TOK, data_dir=tmp_path)


# ----------------------------------------------------------------------------- batches


@pytest.fixture
def csv_task(tmp_path, request):
    """A 3-class CSV task of 60 distinct pairs, split by hash."""
    rng = _rng(request)
    texts = _texts(rng, 120)
    rows = [[texts[2 * i], texts[2 * i + 1], int(rng.integers(0, 3))] for i in range(60)]
    path = _write_csv(tmp_path / "pairs.csv", ["sentence1", "sentence2", "label"], rows)
    return classification.prepare_task(str(path), TOK, data_dir=tmp_path / "data")


@pytest.mark.parametrize("batch_size", [1, 4, 7])
def test_eval_batches_cover_every_example_once_in_order(csv_task, batch_size):
    seq_len = 96
    for split in csv_task.splits:
        rows = _decode_split(csv_task, split)
        batches = list(csv_task.eval_batches(split, batch_size, seq_len))
        assert len(batches) == -(-len(rows) // batch_size)
        stacked = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
        weights = stacked["weights"]
        np.testing.assert_array_equal(weights, np.arange(len(weights)) < len(rows))
        expected = np.stack([_expected_row(a, b, seq_len) for a, b, _ in rows])
        np.testing.assert_array_equal(stacked["input_ids"][: len(rows)], expected)
        np.testing.assert_array_equal(stacked["padding_mask"][: len(rows)], expected != TOK.pad_id)
        seg_start = np.asarray([len(a.encode()) + 2 for a, _, _ in rows])
        segment = (np.arange(seq_len)[None] >= seg_start[:, None]) & (expected != TOK.pad_id)
        np.testing.assert_array_equal(stacked["segment_ids"][: len(rows)], segment.astype(np.int32))
        np.testing.assert_array_equal(stacked["labels"][: len(rows)], [int(y) for _, _, y in rows])
        assert stacked["labels"].dtype == np.int32 and not stacked["padding_mask"][len(rows) :].any()


def test_train_batches_visit_each_example_once_per_epoch(csv_task):
    n = csv_task.split_sizes["train"]
    rows = {tuple(_expected_row(a, b, 96)) for a, b, _ in _decode_split(csv_task, "train")}
    stream = np.concatenate([b["input_ids"] for b in _take(csv_task.train_batches(1, 96, seed=3), 2 * n)])
    first, second = stream[:n], stream[n:]
    assert {tuple(r) for r in first} == rows and {tuple(r) for r in second} == rows
    assert not np.array_equal(first, second)  # reshuffled each epoch
    other = np.concatenate([b["input_ids"] for b in _take(csv_task.train_batches(1, 96, seed=4), n)])
    assert not np.array_equal(first, other)  # the seed matters


def test_train_batches_resume_exactly_from_a_saved_state(csv_task):
    it = csv_task.train_batches(5, 96, seed=1)
    _take(it, 3)
    state = json.loads(json.dumps(it.get_state()))  # what a checkpoint holds
    after = _take(it, 6)
    resumed = csv_task.train_batches(5, 96, seed=1)
    resumed.set_state(state)
    _assert_batches_equal(_take(resumed, 6), after)


@pytest.mark.parametrize(
    "key, change",
    [("seed", {"seed": 2}), ("batch_size", {"batch_size": 4}), ("shard_index", {"shard_index": 1, "shard_count": 2})],
)
def test_set_state_refuses_a_state_of_other_settings(csv_task, key, change):
    settings = {"batch_size": 5, "seq_len": 96, "seed": 1}
    state = csv_task.train_batches(**settings).get_state()
    other = csv_task.train_batches(**{**settings, **change})
    with pytest.raises(ValueError, match=f"state\\['{key}'\\]"):
        other.set_state(state)


def test_shards_are_disjoint_and_cover_an_epoch(csv_task):
    n, count = csv_task.split_sizes["train"], 3
    per_shard = n // count  # the first n//count of each shard: one epoch's worth
    seen = []
    for index in range(count):
        it = csv_task.train_batches(1, 96, seed=5, shard_index=index, shard_count=count)
        seen.append({tuple(b["input_ids"][0]) for b in _take(it, per_shard)})
        assert len(seen[-1]) == per_shard
    for i in range(count):
        for j in range(i):
            assert not seen[i] & seen[j]
    assert len(set().union(*seen)) == per_shard * count
    with pytest.raises(ValueError, match="shard_index"):
        csv_task.train_batches(1, 96, seed=5, shard_index=3, shard_count=3)


# ----------------------------------------------------------------------------- bad inputs


def test_bad_inputs_raise_one_line_errors_naming_the_file_and_field(tmp_path):
    def error(kind, path, **kw):
        with pytest.raises(kind) as err:
            classification.prepare_task(str(path), TOK, data_dir=tmp_path / "data", **kw)
        message = str(err.value)
        assert "\n" not in message, message
        return message

    assert "does not exist" in error(paths.MissingDataError, tmp_path / "absent.csv")
    (tmp_path / "empty.jsonl").write_text("")
    assert "empty.jsonl" in error(ValueError, tmp_path / "empty.jsonl") and "no example" in error(
        ValueError, tmp_path / "empty.jsonl"
    )
    header_only = _write_csv(tmp_path / "header.csv", ["text", "label"], [])
    assert "no example" in error(ValueError, header_only)
    no_text = _write_csv(tmp_path / "no_text.csv", ["body", "label"], [["a", 1]])
    message = error(ValueError, no_text)
    assert "no_text.csv" in message and "'body'" in message and "text_fields" in message
    no_label = _write_csv(tmp_path / "no_label.csv", ["text", "y"], [["a", 1]])
    assert "'label'" in error(ValueError, no_label) and "'y'" in error(ValueError, no_label)
    assert "'title'" in error(ValueError, no_label, text_fields=("title",), label_field="y")
    words = _write_jsonl(tmp_path / "words.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": "good"}])
    message = error(ValueError, words)
    assert "words.jsonl" in message and "line 2" in message and "'good'" in message and "'label'" in message
    missing_field = _write_jsonl(tmp_path / "holes.jsonl", [{"text": "a", "label": 1}, {"label": 0}])
    assert "line 2" in error(ValueError, missing_field) and "'text'" in error(ValueError, missing_field)
    (tmp_path / "broken.jsonl").write_text('{"text": "a", "label": 1}\n{"text": \n')
    assert "line 2" in error(ValueError, tmp_path / "broken.jsonl")
    (tmp_path / "notes.txt").write_text("text,label\na,1\n")
    assert ".csv" in error(ValueError, tmp_path / "notes.txt")
    folder = tmp_path / "half"
    folder.mkdir()
    _write_csv(folder / "train.csv", ["text", "label"], [["a", 1]])
    assert "validation" in error(paths.MissingDataError, folder)
    with pytest.raises(ValueError, match="one or two"):
        classification.prepare_task(str(no_text), TOK, data_dir=tmp_path, text_fields=("a", "b", "c"))


def test_prepared_folder_is_reused_until_the_source_changes(tmp_path):
    path = _write_csv(tmp_path / "t.csv", ["text", "label"], [[f"x{i}", i % 2] for i in range(30)])
    first = classification.prepare_task(str(path), TOK, data_dir=tmp_path / "data")
    stamp = (first.folder / "meta.json").stat().st_mtime_ns
    assert classification.prepare_task(str(path), TOK, data_dir=tmp_path / "data").folder == first.folder
    assert (first.folder / "meta.json").stat().st_mtime_ns == stamp
    _write_csv(path, ["text", "label"], [[f"x{i}", i % 2] for i in range(31)])
    assert classification.prepare_task(str(path), TOK, data_dir=tmp_path / "data").folder != first.folder


# ----------------------------------------------------------------------------- objective and evaluation


def test_regression_objective_is_mse_of_the_single_output(request):
    cfg = bert_config("tiny", num_labels=1, dropout_rate=0.0)
    model = Bert(cfg, rngs=nnx.Rngs(0))
    rng = _rng(request)
    ids = jnp.asarray(rng.integers(5, 200, (4, 12)), jnp.int32)
    mask = jnp.asarray(np.arange(12)[None] < np.array([12, 9, 5, 3])[:, None])
    labels, weights = rng.uniform(0, 5, 4).astype(np.float32), np.array([1, 1, 1, 0], np.float32)
    batch = {
        "input_ids": ids,
        "segment_ids": jnp.zeros_like(ids),
        "padding_mask": mask,
        "labels": jnp.asarray(labels),
        "weights": jnp.asarray(weights),
    }
    loss, aux = nnx.jit(classification_objective)(model, batch)
    forward = nnx.jit(
        lambda m, b: m.classify(
            m(b["input_ids"], segment_ids=b["segment_ids"], padding_mask=b["padding_mask"]), b["padding_mask"]
        )
    )
    outputs = np.asarray(forward(model, batch))[:, 0]
    expected = float(np.sum(weights * (outputs - labels) ** 2) / weights.sum())
    assert abs(float(loss) - expected) <= 1e-5 * max(expected, 1.0)
    np.testing.assert_allclose(np.asarray(aux["predictions"]), outputs, rtol=1e-6)
    assert aux["predictions"].dtype == jnp.float32 and float(aux["count"]) == 3.0


def test_evaluate_reports_task_metrics_on_real_rows_only():
    """A fake eval step whose predictions are given: the metrics must use the weight > 0 rows only."""
    rng = fresh_rng()
    preds, labels = rng.normal(size=23).astype(np.float32), rng.normal(size=23).astype(np.float32)
    batches = []
    for start in range(0, 23, 8):  # 3 batches of 8, the last with one padding row
        p, y = preds[start : start + 8], labels[start : start + 8]
        fill = 8 - len(p)
        batches.append(
            {
                "predictions": np.r_[p, np.full(fill, 100.0, np.float32)],
                "labels": np.r_[y, np.full(fill, -100.0, np.float32)],
                "weights": np.r_[np.ones(len(p), np.float32), np.zeros(fill, np.float32)],
            }
        )

    def eval_step(model, batch):
        w = batch["weights"]
        return {
            "loss_sum": float(np.sum(w * (batch["predictions"] - batch["labels"]) ** 2)),
            "correct": 0.0,
            "count": float(w.sum()),
            **batch,
        }

    class Model:
        def eval(self): ...
        def train(self): ...

    out = evaluate(Model(), eval_step, iter(batches), 0)
    assert "accuracy" not in out and out["count"] == 23
    assert abs(out["pearson"] - scipy.stats.pearsonr(preds, labels)[0]) < 1e-6
    assert abs(out["spearman"] - scipy.stats.spearmanr(preds, labels)[0]) < 1e-6
    assert abs(out["loss"] - np.mean((preds - labels) ** 2)) < 1e-5
    classes = [
        {**b, "predictions": (b["predictions"] > 0).astype(np.int32), "labels": (b["labels"] > 0).astype(np.int32)}
        for b in batches
    ]
    out = evaluate(
        Model(),
        lambda m, b: {
            **b,
            "loss_sum": 0.0,
            "correct": float(np.sum(b["weights"] * (b["predictions"] == b["labels"]))),
            "count": float(b["weights"].sum()),
        },
        iter(classes),
        0,
    )
    import sklearn.metrics

    assert abs(out["f1"] - sklearn.metrics.f1_score(labels > 0, preds > 0)) < 1e-9
    assert abs(out["matthews_corrcoef"] - sklearn.metrics.matthews_corrcoef(labels > 0, preds > 0)) < 1e-9
    assert abs(out["accuracy"] - np.mean((labels > 0) == (preds > 0))) < 1e-9


def test_jitted_eval_step_on_prepared_batches(tmp_path):
    """The real objective, jitted, over a prepared task's eval batches: one prediction per real row."""
    path = _write_csv(tmp_path / "t.csv", ["text", "label"], [[f"x{i} y", float(i) / 7] for i in range(40)])
    task = classification.prepare_task(str(path), TOK, data_dir=tmp_path / "data")
    model = Bert(bert_config("tiny", vocab_size=TOK.vocab_size, num_labels=task.num_labels), rngs=nnx.Rngs(1))
    step = nnx.jit(lambda m, b: classification_objective(m, b)[1])
    out = evaluate(model, step, task.eval_batches("validation", 4, 16), 0)
    assert out["count"] == task.split_sizes["validation"] and np.isfinite(out["loss"])
    assert set(out) == {"loss", "count", "pearson", "spearman"}
    assert jax.numpy.isfinite(out["pearson"]) or task.split_sizes["validation"] < 2
