"""Tokenizers with one small interface: byte-level BPE (GPT), WordPiece (BERT), raw bytes,
and any Hugging Face tokenizer.json.

    tok.encode(text) -> list[int]        no special tokens added
    tok.decode(ids) -> str               special tokens dropped
    tok.vocab_size, tok.kind             "bpe" | "wordpiece" | "byte" (trained here);
                                         "unigram" | "wordlevel" too for a loaded tokenizer.json
    tok.pad_id, tok.bos_id, tok.eos_id, tok.cls_id, tok.sep_id, tok.mask_id, tok.unk_id
                                         an int, or None where the tokenizer has no such token
    tok.save(path) / load_tokenizer(path)    one tokenizer.json
    save_run_tokenizer(tok, workdir)         a run's <workdir>/tokenizer.json and its fingerprint,
                                             which load_tokenizer checks

`load_tokenizer` takes any `tokenizers` file (GPT-2's, a Llama-style BPE, BERT's WordPiece,
a Unigram or WordLevel model): the special roles are found from the token strings
conventionally used for them (`find_special_ids`: <|endoftext|>, <s>, </s>, [CLS], <mask>...).

BPE and WordPiece are Hugging Face `tokenizers` models trained here on the
training split of a corpus (about a second for 5 MB); their special tokens take
the first ids. Special ids:

    bpe:        <|pad|>=0 <|bos|>=1 <|eos|>=2                 (decode(encode(t)) == t exactly)
    wordpiece:  [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4      (round trip up to whitespace;
                                                                cased unless lowercase=True)
    byte:       bytes 0..255, then pad bos eos cls sep mask unk = 256..262 (no training)

BPE training is deterministic. HF's WordPiece trainer breaks ties between equally
frequent pairs in hash-map order, so its ids are renumbered canonically here and
retraining gives the same file except, rarely, a token or two at the vocabulary
cut-off: the saved tokenizer.json, not the training, is what makes runs reproducible.

`get_tokenizer` returns the tokenizer for a (kind, corpus, vocab_size): the one
shipped in `cottention_jax/data/shipped/tokenizers/` if there is one, else the one cached under
`<data_dir>/tokenizers/`, else it trains one and caches it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import string
from collections.abc import Iterable, Sequence
from pathlib import Path

from cottention_jax.data import corpus as corpus_lib
from cottention_jax.data import paths

__all__ = [
    "DEFAULT_VOCAB_SIZE",
    "KINDS",
    "SPECIAL_ROLES",
    "ByteTokenizer",
    "HFTokenizer",
    "Tokenizer",
    "find_special_ids",
    "get_tokenizer",
    "load_tokenizer",
    "save_run_tokenizer",
    "tokenizer_name",
    "train_tokenizer",
]

KINDS = ("bpe", "wordpiece", "byte")
RUN_TOKENIZER = "tokenizer.json"  # a training run's own tokenizer, in its workdir
FINGERPRINT_SUFFIX = ".sha256"  # beside it: its SHA-256 (save_run_tokenizer)
SPECIAL_ROLES = ("pad", "bos", "eos", "cls", "sep", "mask", "unk")
DEFAULT_VOCAB_SIZE = {"bpe": 4096, "wordpiece": 4096, "byte": 256 + len(SPECIAL_ROLES)}
_SPECIAL_TOKENS = {
    "bpe": {"pad": "<|pad|>", "bos": "<|bos|>", "eos": "<|eos|>"},
    "wordpiece": {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"},
}
_BYTE_MARKER = "cottention_byte_tokenizer"
# Always in a WordPiece vocabulary, seen in training or not, so that modern text
# (typographic quotes and dashes, accented letters) does not turn into [UNK].
_EXTRA_WORDPIECE_CHARS = (
    "\u2018\u2019\u201c\u201d\u2013\u2014\u2026\u00ab\u00bb\u00a1\u00bf"
    "\u00e0\u00e1\u00e2\u00e3\u00e4\u00e5\u00e6\u00e7\u00e8\u00e9\u00ea\u00eb"
    "\u00ec\u00ed\u00ee\u00ef\u00f1\u00f2\u00f3\u00f4\u00f5\u00f6\u00f8\u00f9"
    "\u00fa\u00fb\u00fc\u00fd\u00ff\u00df\u0153"
)


class Tokenizer:
    """Common interface; see the module docstring. Subclasses set kind, special_ids, vocab_size."""

    kind: str
    special_ids: dict[str, int]

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def to_json(self) -> str:
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def save(self, path) -> Path:
        """Write the tokenizer as JSON (for BPE/WordPiece a standard HF tokenizer.json)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text(self.to_json(), encoding="utf-8")
        os.replace(tmp, path)
        return path

    @property
    def all_special_ids(self) -> tuple[int, ...]:
        """Sorted ids of every special token (never masked, never drawn as a random token)."""
        return tuple(sorted(self.special_ids.values()))

    def _special(self, role: str) -> int | None:
        return self.special_ids.get(role)

    pad_id = property(lambda self: self._special("pad"))
    bos_id = property(lambda self: self._special("bos"))
    eos_id = property(lambda self: self._special("eos"))
    cls_id = property(lambda self: self._special("cls"))
    sep_id = property(lambda self: self._special("sep"))
    mask_id = property(lambda self: self._special("mask"))
    unk_id = property(lambda self: self._special("unk"))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, vocab_size={self.vocab_size})"


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as ids 0..255 plus every special role at 256..262; needs no training.

    decode replaces invalid UTF-8 (from a model's samples) with U+FFFD.
    """

    kind = "byte"

    def __init__(self):
        self.special_ids = {role: 256 + i for i, role in enumerate(SPECIAL_ROLES)}

    @property
    def vocab_size(self) -> int:
        return 256 + len(SPECIAL_ROLES)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    def to_json(self) -> str:
        return json.dumps({_BYTE_MARKER: 1, "special_ids": self.special_ids}, sort_keys=True)


class HFTokenizer(Tokenizer):
    """Any Hugging Face `tokenizers.Tokenizer` (BPE, WordPiece, Unigram or WordLevel model)
    behind the common interface; its special roles are found by `find_special_ids`."""

    def __init__(self, hf_tokenizer):
        record = json.loads(hf_tokenizer.to_str())
        model_type = record["model"]["type"]
        if model_type not in _HF_KINDS:
            raise ValueError(f"hf_tokenizer: model must be one of {sorted(_HF_KINDS)}, got {model_type}")
        self.kind = _HF_KINDS[model_type]
        self.hf = hf_tokenizer
        self.special_ids = find_special_ids(record)
        added = (t["id"] for t in record.get("added_tokens") or [] if t.get("special"))
        self._all_special_ids = tuple(sorted(set(self.special_ids.values()) | set(added)))

    @property
    def all_special_ids(self) -> tuple[int, ...]:
        """The ids of the special roles and of every added token marked special."""
        return self._all_special_ids

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # encode_batch_fast (tokenizers >= 0.20) skips character offsets: about 2x faster.
        fast = getattr(self.hf, "encode_batch_fast", self.hf.encode_batch)
        return [e.ids for e in fast(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=True)

    def to_json(self) -> str:
        return self.hf.to_str()


_HF_KINDS = {"BPE": "bpe", "WordPiece": "wordpiece", "Unigram": "unigram", "WordLevel": "wordlevel"}
# The token strings conventionally used for each role, most specific first: this module's own,
# BERT's, then GPT-2's, Llama's, T5's, RoBERTa's... <|endoftext|> is GPT-2's only special token:
# the end of a text, and so also the start of the next.
_ROLE_TOKENS = {
    "pad": ("<|pad|>", "[PAD]", "<pad>", "<|padding|>", "<PAD>"),
    "bos": ("<|bos|>", "<s>", "<|begin_of_text|>", "<|startoftext|>", "<bos>", "[BOS]", "<BOS>", "<|endoftext|>"),
    "eos": ("<|eos|>", "</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>", "[EOS]", "<EOS>"),
    "cls": ("[CLS]", "<cls>", "<|cls|>", "<CLS>"),
    "sep": ("[SEP]", "<sep>", "<|sep|>", "<SEP>"),
    "mask": ("[MASK]", "<mask>", "<|mask|>", "<MASK>"),
    "unk": ("[UNK]", "<unk>", "<|unk|>", "<UNK>"),
}


def find_special_ids(record: dict) -> dict[str, int]:
    """{role: id} of a tokenizer.json (`record`, parsed) for the roles it has.

    Each role takes the first of its conventional token strings (`_ROLE_TOKENS`) that the
    file marks special (an added token with "special": true), or, in a file that marks
    none, the first in its vocabulary: a plain token such as "<s>" learnt from HTML is text,
    not a role. "unk" is the model's own unknown token where it names one; "cls" and "sep"
    fall back on a Bert/Roberta post-processor's (RoBERTa's <s> and </s>).
    """
    model = record["model"]
    vocab = model.get("vocab") or {}
    if isinstance(vocab, list):  # Unigram: [[piece, score], ...]
        vocab = {piece: i for i, (piece, _) in enumerate(vocab)}
    added = record.get("added_tokens") or []
    table = {t["content"]: t["id"] for t in added if t.get("special")}
    table = table or {**vocab, **{t["content"]: t["id"] for t in added}}
    candidates = {role: list(tokens) for role, tokens in _ROLE_TOKENS.items()}
    processor = record.get("post_processor") or {}
    for role in ("cls", "sep"):
        if processor.get("type") in ("BertProcessing", "RobertaProcessing") and processor.get(role):
            candidates[role].append(processor[role][0])
    found = {}
    for role, tokens in candidates.items():
        token = next((t for t in tokens if t in table), None)
        if token is not None:
            found[role] = int(table[token])
    if model.get("unk_token") in vocab:  # BPE, WordPiece, WordLevel
        found["unk"] = int(vocab[model["unk_token"]])
    elif isinstance(model.get("unk_id"), int):  # Unigram
        found["unk"] = model["unk_id"]
    return found


def _new_hf_tokenizer(kind: str, lowercase: bool):
    from tokenizers import Tokenizer as HF
    from tokenizers import decoders, models, normalizers, pre_tokenizers

    if kind == "bpe":
        # Byte-level: every string maps to bytes, so nothing is unknown and decoding is exact.
        hf = HF(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        return hf
    hf = HF(models.WordPiece(unk_token=_SPECIAL_TOKENS["wordpiece"]["unk"]))
    hf.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=lowercase, lowercase=lowercase
    )
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # cleanup=False: decoding must not rewrite words ("do not" -> "don't").
    hf.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return hf


def train_tokenizer(
    kind: str, texts: Iterable[str], vocab_size: int | None = None, lowercase: bool = False
) -> Tokenizer:
    """Train a "bpe" or "wordpiece" tokenizer on `texts` (or return ByteTokenizer for "byte").

    vocab_size counts the special tokens; BPE needs at least 259 (256 bytes + 3 specials).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "byte":
        return ByteTokenizer()
    from tokenizers import pre_tokenizers, trainers

    vocab_size = DEFAULT_VOCAB_SIZE[kind] if vocab_size is None else int(vocab_size)
    specials = list(_SPECIAL_TOKENS[kind].values())
    trainer_cls: type[trainers.BpeTrainer] | type[trainers.WordPieceTrainer]
    if kind == "bpe":
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        trainer_cls = trainers.BpeTrainer
    else:
        alphabet = [c for c in string.printable if not c.isspace()] + list(_EXTRA_WORDPIECE_CHARS)
        if lowercase:
            alphabet = sorted({c.lower() for c in alphabet})
        trainer_cls = trainers.WordPieceTrainer
    # WordPiece also keeps a "##" continuation piece for every alphabet character.
    minimum = len(specials) + len(alphabet) * (2 if kind == "wordpiece" else 1)
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size must be at least {minimum} for {kind} ({len(specials)} specials + alphabet), got {vocab_size}"
        )
    hf = _new_hf_tokenizer(kind, lowercase)
    trainer = trainer_cls(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
    )
    hf.train_from_iterator(texts, trainer=trainer)
    if kind == "wordpiece":
        hf = _canonical_wordpiece(hf, specials, alphabet)
    return HFTokenizer(hf)


def _canonical_wordpiece(hf, specials: list[str], alphabet: list[str]):
    """Complete and renumber a trained WordPiece vocabulary.

    1. Every alphabet character gets its "##" continuation piece too (else a word
       such as "15" is one [UNK] when "5" never followed a digit in training);
       room is made by dropping the latest-learned pieces, so the size holds.
    2. Ids: specials, then by (is "##" piece, length, text). The HF trainer
       numbers tokens partly in hash-map order; WordPiece encoding depends only
       on the set of tokens, so renumbering changes no tokenization.
    """
    from tokenizers import Tokenizer as HF

    record = json.loads(hf.to_str())
    vocab = record["model"]["vocab"]
    needed = list(alphabet) + ["##" + c for c in alphabet]
    missing = [t for t in needed if t not in vocab]
    keep = set(specials) | set(needed)
    latest_first = sorted((t for t in vocab if t not in keep), key=vocab.get, reverse=True)
    for token in latest_first[: len(missing)]:
        del vocab[token]
    vocab.update(dict.fromkeys(missing, -1))
    rest = sorted(set(vocab) - set(specials), key=lambda t: (t.startswith("##"), len(t), t))
    record["model"]["vocab"] = {token: i for i, token in enumerate(specials + rest)}
    for added in record.get("added_tokens", []):
        added["id"] = record["model"]["vocab"][added["content"]]
    return HF.from_str(json.dumps(record))


def _parse_tokenizer_json(text: str) -> Tokenizer:
    record = json.loads(text)
    if isinstance(record, dict) and record.get(_BYTE_MARKER) == 1:
        return ByteTokenizer()
    from tokenizers import Tokenizer as HF

    return HFTokenizer(HF.from_str(text))


def _fingerprint_path(path: Path) -> Path:
    return path.with_name(path.name + FINGERPRINT_SUFFIX)


def save_run_tokenizer(tokenizer: Tokenizer, workdir) -> Path:
    """Write the tokenizer of a training run: `<workdir>/tokenizer.json`, and its fingerprint (the
    SHA-256 of the file) beside it in `tokenizer.json.sha256` (`sha256sum` format, so
    `sha256sum -c tokenizer.json.sha256` checks it by hand). Returns the tokenizer's path.

    `load_tokenizer` compares the two, so a tokenizer.json changed after training is refused
    instead of decoding the model's ids into other text.
    """
    path = tokenizer.save(Path(workdir) / RUN_TOKENIZER)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    fingerprint = _fingerprint_path(path)
    tmp = fingerprint.with_name(fingerprint.name + f".tmp{os.getpid()}")
    tmp.write_text(f"{digest}  {path.name}\n", encoding="utf-8")
    os.replace(tmp, fingerprint)
    return path


def _check_fingerprint(path: Path, text: bytes) -> None:
    """CorruptDataError (one line, naming the file) when `<path>.sha256` exists and `text` (the file's
    bytes) does not match it; nothing when there is no fingerprint (files written before them)."""
    fingerprint = _fingerprint_path(path)
    if not fingerprint.is_file():
        return
    recorded = fingerprint.read_text(encoding="utf-8", errors="replace").split()
    digest = hashlib.sha256(text).hexdigest()
    if not recorded or recorded[0] != digest:
        raise paths.CorruptDataError(
            f"tokenizer file {path} has changed since it was saved (its SHA-256 {digest[:16]}... is not the "
            f"{(recorded or ['nothing'])[0][:16]}... recorded in {fingerprint.name}): the model's ids would decode "
            f"to other text. Put back the run's own tokenizer.json, or delete {fingerprint} to use this one"
        )


def load_tokenizer(path, rebuild: str | None = None) -> Tokenizer:
    """A tokenizer saved with `Tokenizer.save` (any kind), or any Hugging Face tokenizer.json
    (BPE, WordPiece, Unigram or WordLevel; special roles found by `find_special_ids`).

    A file with a fingerprint beside it (`<file>.sha256`, written by `save_run_tokenizer`) must
    match it. Raises MissingDataError / CorruptDataError naming the file (CorruptDataError for a
    file that no longer matches its fingerprint too); `rebuild`, when given, is the command that
    rebuilds it, named in the message.
    """
    path = Path(path)
    if not path.is_file():
        raise (
            paths.missing(path, rebuild) if rebuild else paths.MissingDataError(f"tokenizer file {path} does not exist")
        )
    raw = path.read_bytes()
    _check_fingerprint(path, raw)
    try:
        return _parse_tokenizer_json(raw.decode("utf-8"))
    except Exception as err:  # HF raises its own exception types for malformed JSON
        detail = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        if rebuild:
            raise paths.corrupt(path, detail, rebuild) from err
        raise paths.CorruptDataError(f"{path} is not a readable tokenizer.json ({detail})") from err


def tokenizer_name(kind: str, corpus: str, vocab_size: int | None = None) -> str:
    """File stem of a tokenizer: "<corpus>-<kind>-<vocab_size>"."""
    vocab_size = DEFAULT_VOCAB_SIZE[kind] if vocab_size is None else int(vocab_size)
    return f"{corpus}-{kind}-{vocab_size}"


def get_tokenizer(
    kind: str = "bpe", corpus: str = "shakespeare", vocab_size: int | None = None, data_dir=None
) -> Tokenizer:
    """The tokenizer of `kind` for `corpus`: shipped, cached, or trained on the corpus's train split.

    Training uses only the training documents of `corpus_lib.split_documents`, so
    the validation split stays unseen. The result is cached as
    `<data_dir>/tokenizers/<corpus>-<kind>-<vocab_size>.json`.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "byte":
        if vocab_size not in (None, DEFAULT_VOCAB_SIZE["byte"]):
            raise ValueError(f"vocab_size of a byte tokenizer is {DEFAULT_VOCAB_SIZE['byte']}, got {vocab_size}")
        return ByteTokenizer()
    name = tokenizer_name(kind, corpus, vocab_size) + ".json"
    shipped = paths.SHIPPED_DATA_DIR / "tokenizers"
    if (shipped / name).is_file():
        rebuild = paths.shipped_rebuild_command("tokenizers")
        paths.verify_checksums(shipped, rebuild, names=[name])
        return load_tokenizer(shipped / name, rebuild)
    cached = paths.resolve_data_dir(data_dir) / "tokenizers" / name
    if cached.is_file():
        return load_tokenizer(cached, f"{shlex.join(['rm', '--', str(cached)])}   (it is retrained on next use)")
    documents = corpus_lib.split_documents(corpus_lib.load_corpus(corpus, data_dir))["train"]
    tokenizer = train_tokenizer(kind, (d.text for d in documents), vocab_size)
    tokenizer.save(cached)
    return tokenizer
