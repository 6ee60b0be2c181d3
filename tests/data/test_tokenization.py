"""Tokenizers: round trips, special ids, training determinism, save/load, and damaged files."""

from __future__ import annotations

import json
import shutil
import zlib

import numpy as np
import pytest

from cottention_jax.data import corpus, paths, tokenization
from tests.data._fixtures import fresh_rng, random_documents, random_prose, write_mixed_corpus


def _random_unicode(rng, n: int) -> str:
    """Mixed ASCII, accented Latin, Greek, CJK, emoji and whitespace."""
    pools = ["abcXYZ 019.,;!?'\"\n\t", "éüßçøÅ", "αβγδΩ", "漢字かなカナ", "🙂🚀👍🏽", "  \n\n"]
    return "".join(rng.choice(list(pools[int(rng.integers(len(pools)))])) for _ in range(n))


@pytest.fixture
def rng(request):
    """A generator seeded by the test's node id: the same inputs whatever ran before."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(scope="module")
def shakespeare_passages():
    """Random passages (300-2000 characters) of the embedded corpus."""
    rng = fresh_rng()
    docs = corpus.load_embedded_corpus()
    out = []
    for _ in range(8):
        text = docs[int(rng.integers(len(docs)))].text
        start = int(rng.integers(0, len(text) - 2000))
        out.append(text[start : start + int(rng.integers(300, 2000))])
    return out


def test_byte_tokenizer_round_trip_and_specials():
    tok = tokenization.ByteTokenizer()
    text = _random_unicode(fresh_rng(), 300)
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok.vocab_size == 263
    specials = [tok.pad_id, tok.bos_id, tok.eos_id, tok.cls_id, tok.sep_id, tok.mask_id, tok.unk_id]
    assert sorted(specials) == list(range(256, 263))
    assert tok.decode([tok.bos_id] + ids + [tok.eos_id, tok.pad_id]) == text  # specials dropped
    assert tok.decode([0xE2, 0x82]) == "\ufffd"  # a cut UTF-8 sequence decodes, replaced


def test_bpe_round_trip_is_exact(shakespeare_passages):
    tok = tokenization.get_tokenizer("bpe", "shakespeare", 4096)
    assert (tok.kind, tok.vocab_size) == ("bpe", 4096)
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.cls_id is None and tok.mask_id is None
    texts = shakespeare_passages + [_random_unicode(fresh_rng(), 400)]
    for text, ids in zip(texts, tok.encode_batch(texts), strict=True):
        assert ids == tok.encode(text)
        assert not set(ids) & set(tok.all_special_ids)
        assert tok.decode(ids) == text
        assert tok.decode([tok.bos_id] + ids + [tok.eos_id]) == text
    # Sub-word units really merge: far fewer tokens than bytes on English text.
    passage = shakespeare_passages[0]
    assert len(tok.encode(passage)) < 0.5 * len(passage.encode())


def test_wordpiece_round_trip_up_to_whitespace(shakespeare_passages):
    tok = tokenization.get_tokenizer("wordpiece", "shakespeare", 4096)
    assert (tok.kind, tok.vocab_size) == ("wordpiece", 4096)
    assert [tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id] == [0, 1, 2, 3, 4]
    assert tok.bos_id is None and tok.eos_id is None
    for text in shakespeare_passages:
        ids = tok.encode(text)
        assert tok.unk_id not in ids
        assert "".join(tok.decode(ids).split()) == "".join(text.split())
    assert tok.unk_id in tok.encode("snow \u2603 snow")  # a character outside its alphabet
    assert tok.unk_id not in tok.encode("Almod\u00f3var\u2019s 1995 \u201cclich\u00e9s\u201d \u2013 2002")


def test_training_is_deterministic_and_saves(tmp_path):
    rng = fresh_rng()
    texts = [random_prose(rng, 30) for _ in range(5)]
    first = tokenization.train_tokenizer("bpe", texts, 300)
    second = tokenization.train_tokenizer("bpe", texts, 300)
    assert first.to_json() == second.to_json()
    assert first.vocab_size == 300
    loaded = tokenization.load_tokenizer(first.save(tmp_path / "tokenizer.json"))
    sample = random_prose(rng, 5)
    assert loaded.encode(sample) == first.encode(sample)
    assert loaded.special_ids == first.special_ids
    byte = tokenization.load_tokenizer(tokenization.ByteTokenizer().save(tmp_path / "byte.json"))
    assert isinstance(byte, tokenization.ByteTokenizer)


def test_wordpiece_ids_are_canonical_and_save(tmp_path):
    """HF's WordPiece trainer breaks count ties in hash order (its token set can differ at the
    cut-off between runs), so ids are renumbered canonically and the saved file is the record."""
    rng = fresh_rng()
    tok = tokenization.train_tokenizer("wordpiece", [random_prose(rng, 30) for _ in range(5)], 400)
    vocab = json.loads(tok.to_json())["model"]["vocab"]
    ordered = sorted(vocab, key=vocab.get)
    assert ordered[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    rest = ordered[5:]
    assert rest == sorted(rest, key=lambda t: (t.startswith("##"), len(t), t))
    assert len(vocab) == tok.vocab_size <= 400  # a tiny corpus runs out of merges first
    assert all(c in vocab and "##" + c in vocab for c in "09azAZ.,'\u2019\u00e9")
    assert tok.unk_id not in tok.encode("In 1995 the caf\u00e9\u2019s clich\u00e9s were 77% new.")
    loaded = tokenization.load_tokenizer(tok.save(tmp_path / "wordpiece.json"))
    sample = random_prose(rng, 5)
    assert loaded.encode(sample) == tok.encode(sample)
    assert "".join(loaded.decode(loaded.encode(sample)).split()) == "".join(sample.split())


def test_bad_arguments():
    with pytest.raises(ValueError, match="vocab_size must be at least 259 for bpe.*got 100"):
        tokenization.train_tokenizer("bpe", ["some text"], 100)
    with pytest.raises(ValueError, match="kind must be one of.*'sentencepiece'"):
        tokenization.train_tokenizer("sentencepiece", ["some text"], 1000)
    with pytest.raises(ValueError, match="vocab_size of a byte tokenizer is 263, got 512"):
        tokenization.get_tokenizer("byte", vocab_size=512)


def test_get_tokenizer_trains_once_and_caches(tmp_path):
    write_mixed_corpus(tmp_path, random_documents(fresh_rng(), 6, 15))
    tok = tokenization.get_tokenizer("bpe", "mixed", 300, data_dir=tmp_path)
    cached = tmp_path / "tokenizers" / "mixed-bpe-300.json"
    assert cached.is_file()
    assert tokenization.get_tokenizer("bpe", "mixed", 300, data_dir=tmp_path).to_json() == tok.to_json()
    # Trained on the training split only.
    train = corpus.split_documents(corpus.load_corpus("mixed", tmp_path))["train"]
    expected = tokenization.train_tokenizer("bpe", [d.text for d in train], 300)
    assert expected.to_json() == tok.to_json()


def test_missing_and_corrupt_tokenizer_files(tmp_path, monkeypatch):
    with pytest.raises(paths.MissingDataError, match="nope.json does not exist"):
        tokenization.load_tokenizer(tmp_path / "nope.json")
    # A damaged cached tokenizer names the command that has it retrained.
    bad = tmp_path / "tokenizers" / "mixed-bpe-300.json"
    bad.parent.mkdir()
    bad.write_text('{"model": {"type": "BPE", "vocab"', encoding="utf-8")
    with pytest.raises(paths.CorruptDataError, match=r"mixed-bpe-300.json is corrupt.*\n.*rm .*mixed-bpe-300"):
        tokenization.get_tokenizer("bpe", "mixed", 300, data_dir=tmp_path)
    # A shipped tokenizer that was altered fails its checksum and names the restore command.
    repo = tmp_path / "repo"
    shutil.copytree(paths.SHIPPED_DATA_DIR / "tokenizers", repo / "tokenizers")
    shipped = repo / "tokenizers" / "shakespeare-bpe-4096.json"
    record = json.loads(shipped.read_text(encoding="utf-8"))
    record["model"]["vocab"]["zzz"] = 4095
    shipped.write_text(json.dumps(record), encoding="utf-8")
    monkeypatch.setattr(paths, "SHIPPED_DATA_DIR", repo)
    rebuild = "git checkout -- cottention_jax/data/shipped/tokenizers"
    with pytest.raises(paths.CorruptDataError, match=f"SHA-256 differs.*\n.*{rebuild}"):
        tokenization.get_tokenizer("bpe", "shakespeare", 4096)


# ----------------------------------------------------------------- any tokenizer.json


def _hf_file(hf, tmp_path, name="tokenizer.json"):
    hf.save(str(tmp_path / name))
    return tokenization.load_tokenizer(tmp_path / name)


def _roles(tok) -> dict:
    return {role: getattr(tok, f"{role}_id") for role in tokenization.SPECIAL_ROLES}


def test_a_gpt2_style_tokenizer_loads_with_endoftext_as_bos_and_eos(tmp_path, rng):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator([random_prose(rng, 20) for _ in range(5)], trainer=trainer)
    tok = _hf_file(hf, tmp_path)
    end = hf.token_to_id("<|endoftext|>")
    assert tok.kind == "bpe" and tok.vocab_size == hf.get_vocab_size()
    assert _roles(tok) == {"pad": None, "bos": end, "eos": end, "cls": None, "sep": None, "mask": None, "unk": None}
    assert tok.all_special_ids == (end,)
    text = random_prose(rng, 4) + _random_unicode(rng, 100)
    ids = tok.encode(text)
    assert ids == hf.encode(text).ids and end not in ids
    assert tok.decode([end] + ids + [end]) == text


def test_a_llama_style_tokenizer_loads_with_its_roles(tmp_path, rng):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    hf = Tokenizer(models.BPE(unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Metaspace()
    hf.decoder = decoders.Metaspace()
    hf.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "<|extra|>"], show_progress=False
    )
    hf.train_from_iterator([random_prose(rng, 20) for _ in range(5)], trainer=trainer)
    tok = _hf_file(hf, tmp_path)
    assert tok.kind == "bpe"
    assert _roles(tok) == {"pad": None, "bos": 1, "eos": 2, "cls": None, "sep": None, "mask": None, "unk": 0}
    assert tok.all_special_ids == (0, 1, 2, 3)  # <|extra|> is special, though no role
    text = " ".join(random_prose(rng, 3).split())
    ids = tok.encode(text)
    assert ids[0] != 1 and not set(ids) & {0, 2}  # no <s> added, nothing unknown
    assert tok.decode(ids + [2]) == text
    assert tok.unk_id in tok.encode("snow \u2603")  # a character it never saw


def test_a_roberta_post_processor_names_cls_and_sep(tmp_path):
    from tokenizers import Tokenizer, models, processors

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4, "a": 5}
    hf = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    hf.add_special_tokens(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    hf.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok = _hf_file(hf, tmp_path)
    assert tok.kind == "wordlevel"
    assert _roles(tok) == {"pad": 1, "bos": 0, "eos": 2, "cls": 0, "sep": 2, "mask": 4, "unk": 3}
    assert tok.all_special_ids == (0, 1, 2, 3, 4)


def test_a_wordlevel_tokenizer_finds_roles_in_its_vocabulary_unless_it_marks_specials(tmp_path, rng):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted(set(random_prose(rng, 10).replace(",", " ").replace(".", " ").replace("!", " ").split()))
    specials = ["<pad>", "[UNK]", "</s>", "<s>"]
    order = list(rng.permutation(specials + words))
    vocab = {token: i for i, token in enumerate(order)}
    hf = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = _hf_file(hf, tmp_path)  # no added tokens: the vocabulary's names count
    assert tok.kind == "wordlevel" and tok.vocab_size == len(vocab)
    assert _roles(tok) == {
        "pad": vocab["<pad>"],
        "bos": vocab["<s>"],
        "eos": vocab["</s>"],
        "cls": None,
        "sep": None,
        "mask": None,
        "unk": vocab["[UNK]"],
    }
    text = " ".join(rng.choice(words, 12))
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode("zebra") == [vocab["[UNK]"]]
    # Once the file marks a token special, plain vocabulary entries such as "<s>" are text.
    hf.add_special_tokens(["<|endoftext|>"])
    tok = _hf_file(hf, tmp_path, "marked.json")
    end = len(vocab)
    assert _roles(tok) == {
        "pad": None,
        "bos": end,
        "eos": end,
        "cls": None,
        "sep": None,
        "mask": None,
        "unk": vocab["[UNK]"],
    }


def test_a_unigram_tokenizer_loads(tmp_path, rng):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    hf = Tokenizer(models.Unigram())
    hf.pre_tokenizer = pre_tokenizers.Metaspace()
    hf.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=120, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
    )
    hf.train_from_iterator([random_prose(rng, 20) for _ in range(5)], trainer=trainer)
    tok = _hf_file(hf, tmp_path)
    assert tok.kind == "unigram"
    assert _roles(tok) == {"pad": 0, "bos": None, "eos": 1, "cls": None, "sep": None, "mask": None, "unk": 2}
    text = " ".join(random_prose(rng, 3).split())
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize(
    "content",
    [
        b"not json at all",
        b'{"a": 1}',
        b"[1, 2]",
        b"\xff\xfe\x00garbage",
        b'{"version": "1.0", "model": {"type": "Sentencepiece", "vocab": {}}}',
    ],
)
def test_a_file_that_is_not_a_tokenizer_is_corrupt_data_naming_it(tmp_path, content):
    path = tmp_path / "their tokenizer.json"
    path.write_bytes(content)
    with pytest.raises(paths.CorruptDataError) as caught:
        tokenization.load_tokenizer(path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message


def test_tiny_presets_tokenizers_are_shipped(tmp_path, monkeypatch):
    """gpt-tiny and bert-tiny use 512-token vocabularies: shipped, so nothing is trained or written."""
    data_dir = tmp_path / "data"
    monkeypatch.setenv("COTTENTION_DATA_DIR", str(data_dir))
    monkeypatch.setattr(tokenization, "train_tokenizer", None)  # any training would fail
    bpe = tokenization.get_tokenizer("bpe", "shakespeare", 512)
    wordpiece = tokenization.get_tokenizer("wordpiece", "shakespeare", 512)
    assert not data_dir.exists()
    assert (bpe.kind, bpe.vocab_size, bpe.eos_id) == ("bpe", 512, 2)
    assert (wordpiece.kind, wordpiece.vocab_size, wordpiece.mask_id) == ("wordpiece", 512, 4)
    monkeypatch.undo()
    # The shipped BPE file is what training on the corpus's train split gives (WordPiece may differ
    # at the cut-off; see the module docstring).
    train = corpus.split_documents(corpus.load_embedded_corpus())["train"]
    assert tokenization.train_tokenizer("bpe", [d.text for d in train], 512).to_json() == bpe.to_json()


def test_an_altered_shipped_tokenizer_outside_a_checkout_names_the_reinstall(tmp_path, monkeypatch):
    """A wheel user has no experiments/ folder: the restore command is pip's."""
    shutil.copytree(paths.SHIPPED_DATA_DIR / "tokenizers", tmp_path / "shipped" / "tokenizers")
    victim = tmp_path / "shipped" / "tokenizers" / "shakespeare-wordpiece-512.json"
    victim.write_bytes(victim.read_bytes()[:-10])
    monkeypatch.setattr(paths, "SHIPPED_DATA_DIR", tmp_path / "shipped")
    monkeypatch.setattr(paths, "_CHECKOUT", tmp_path / "site-packages")
    with pytest.raises(paths.CorruptDataError) as caught:
        tokenization.get_tokenizer("wordpiece", "shakespeare", 512)
    assert "pip install --force-reinstall --no-deps cottention-jax" in str(caught.value)
    assert "experiments/" not in str(caught.value)
