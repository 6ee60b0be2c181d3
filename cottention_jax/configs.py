"""Training configuration: frozen dataclasses, named presets, `key=value` overrides, JSON round trip.

A run is described by one `TrainConfig`; variants are derived with
`dataclasses.replace` or `apply_overrides(config, ["model.attention=softmax", "steps=500"])`,
never by copying. The config is saved with every checkpoint (`to_dict`) and read
back with `from_dict`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal, get_args

from cottention_jax.data.spec import check_tokenizer_spec, parse_corpus
from cottention_jax.models.bert import BertConfig, bert_config
from cottention_jax.models.gpt import GPTConfig, gpt_config

__all__ = [
    "DataConfig",
    "OptimConfig",
    "TRAIN_PRESETS",
    "TASK_KINDS",
    "TrainConfig",
    "apply_overrides",
    "finetune_config",
    "from_dict",
    "to_dict",
    "train_preset",
]

TaskKind = Literal["gpt", "bert-mlm", "bert-classify"]
TASK_KINDS: tuple[str, ...] = get_args(TaskKind)

Schedule = Literal["cosine", "linear", "constant"]
_SCHEDULES: tuple[str, ...] = get_args(Schedule)

Sharding = Literal["none", "data", "fsdp"]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _require(config, name: str, ok: bool, what: str) -> None:
    """A ValueError naming the field, what it must be and what it got."""
    if not ok:
        raise ValueError(f"{type(config).__name__}.{name} must be {what}; got {getattr(config, name)!r}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What to read and how to batch it (see cottention_jax.data and README "Training on your own data")."""

    corpus: str = "shakespeare"  # gpt / bert-mlm text: shakespeare | mixed | tfds:NAME[/CONFIG][:SPLIT] | PATH
    tokenizer: str = "bpe"  # "bpe" (GPT), "wordpiece" (BERT), "byte", or a path to a tokenizer.json
    vocab_size: int | None = None  # None: the kind's default size (a tokenizer file fixes its own)
    text_field: str = "text"  # the text's field in .jsonl / .parquet / TFDS records
    validation_fraction: float = 0.1  # of the documents (by group), held out for evaluation
    task: str | None = None  # bert-classify: sentiment | paraphrase | tfds:glue/NAME | PATH (.csv/.jsonl)
    task_text_fields: str | None = None  # bert-classify: "sentence1,sentence2" (None: the task's own or a guess)
    task_label_field: str = "label"  # bert-classify: the label's column / feature
    seq_len: int = 256
    batch_size: int = 16  # global: the processes of a multi-process run share it
    data_dir: str | None = None  # None: $COTTENTION_DATA_DIR or ~/.cache/cottention_jax
    seed: int = 0  # shuffling and masking

    def __post_init__(self):
        parse_corpus(self.corpus)
        check_tokenizer_spec(self.tokenizer)
        if self.vocab_size is not None:
            _require(self, "vocab_size", _is_int(self.vocab_size) and self.vocab_size > 0, "None or an int > 0")
        _require(self, "text_field", isinstance(self.text_field, str) and self.text_field != "", "a field name")
        _require(
            self,
            "validation_fraction",
            _is_number(self.validation_fraction) and 0 < self.validation_fraction < 1,
            "a number in (0, 1)",
        )
        _require(
            self,
            "task",
            self.task is None or (isinstance(self.task, str) and self.task.strip() != ""),
            "None or a task name, tfds:NAME or a path",
        )
        for name in ("seq_len", "batch_size"):
            _require(self, name, _is_int(getattr(self, name)) and getattr(self, name) >= 1, "an int >= 1")
        _require(self, "seed", _is_int(self.seed), "an int")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up then decay, global-norm clipping, gradient accumulation."""

    learning_rate: float = 1e-3
    warmup_steps: int = 100
    schedule: Schedule = "cosine"  # decay after warm-up: "cosine", "linear" or "constant"
    end_lr_ratio: float = 0.1  # final learning rate / peak
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global gradient norm (0: no clipping)
    accumulate_steps: int = 1  # micro-batches per optimizer step

    def __post_init__(self):
        _require(
            self,
            "learning_rate",
            _is_number(self.learning_rate) and 0 < self.learning_rate < math.inf,
            "a finite number > 0",
        )
        _require(self, "warmup_steps", _is_int(self.warmup_steps) and self.warmup_steps >= 0, "an int >= 0")
        _require(self, "schedule", self.schedule in _SCHEDULES, f"one of {_SCHEDULES}")
        _require(
            self, "end_lr_ratio", _is_number(self.end_lr_ratio) and 0 <= self.end_lr_ratio <= 1, "a number in [0, 1]"
        )
        _require(
            self,
            "weight_decay",
            _is_number(self.weight_decay) and 0 <= self.weight_decay < math.inf,
            "a finite number >= 0",
        )
        for name in ("b1", "b2"):
            _require(self, name, _is_number(getattr(self, name)) and 0 <= getattr(self, name) < 1, "a number in [0, 1)")
        _require(self, "eps", _is_number(self.eps) and 0 < self.eps < math.inf, "a finite number > 0")
        _require(
            self,
            "grad_clip",
            _is_number(self.grad_clip) and 0 <= self.grad_clip < math.inf,
            "a finite number >= 0 (0: no clipping)",
        )
        _require(self, "accumulate_steps", _is_int(self.accumulate_steps) and self.accumulate_steps >= 1, "an int >= 1")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run: the task kind, the model, the data, the optimizer and the loop."""

    kind: TaskKind = "gpt"  # one of TASK_KINDS
    model: GPTConfig | BertConfig = dataclasses.field(default_factory=lambda: gpt_config("small"))
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    steps: int = 1000  # optimizer steps
    eval_every: int = 100
    eval_batches: int = 16  # validation batches per evaluation (0: the whole split)
    log_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    sharding: Sharding = "none"  # "none", "data" (data parallel) or "fsdp" (parameters sharded too)
    seq_parallel: int = 1  # devices the sequence is split over (cosine attention: only d x d states move)
    seed: int = 0  # parameter initialisation and dropout
    init_from: str | None = None  # a workdir whose latest checkpoint starts the model (bert-classify: a bert-mlm
    #                                    run's encoder); every parameter array but a classifier head must match it
    init_from_partial: bool = False  # init_from may match only some arrays: the others start from scratch
    vocab_from_tokenizer: bool = True  # model.vocab_size becomes the tokenizer's (with a notice); False (what a
    #                                    `model.vocab_size=N` override sets): a size not the tokenizer's is an error
    sample_tokens: int = 200  # gpt: tokens generated at the end (0: none)
    sample_prompt: str = "ROMEO:\n"

    def __post_init__(self):
        if self.kind not in TASK_KINDS:
            raise ValueError(f"kind must be one of {TASK_KINDS}; got {self.kind!r}")
        expected = GPTConfig if self.kind == "gpt" else BertConfig
        if not isinstance(self.model, expected):
            raise ValueError(f"kind={self.kind!r} needs a {expected.__name__}; got {type(self.model).__name__}")
        if self.sharding not in ("none", "data", "fsdp"):
            raise ValueError(f"sharding must be 'none', 'data' or 'fsdp'; got {self.sharding!r}")
        if self.seq_parallel < 1 or (self.seq_parallel > 1 and self.sharding == "none"):
            raise ValueError(
                f"seq_parallel must be >= 1, and > 1 only with sharding 'data' or 'fsdp'; got "
                f"seq_parallel={self.seq_parallel}, sharding={self.sharding!r}"
            )
        if self.data.seq_len % self.seq_parallel:
            raise ValueError(
                f"data.seq_len ({self.data.seq_len}) must be divisible by seq_parallel ({self.seq_parallel})"
            )
        if self.kind == "bert-classify" and self.data.task is None:
            raise ValueError(
                "kind='bert-classify' needs data.task (sentiment, paraphrase, tfds:glue/NAME or a .csv/.jsonl path)"
            )
        for name in ("steps", "eval_every", "log_every", "checkpoint_every", "keep_checkpoints"):
            _require(self, name, _is_int(getattr(self, name)) and getattr(self, name) >= 1, "an int >= 1")
        _require(
            self,
            "eval_batches",
            _is_int(self.eval_batches) and self.eval_batches >= 0,
            "an int >= 0 (0: the whole split)",
        )
        for name in ("init_from_partial", "vocab_from_tokenizer"):
            _require(self, name, isinstance(getattr(self, name), bool), "a bool")
        _require(
            self, "sample_tokens", _is_int(self.sample_tokens) and self.sample_tokens >= 0, "an int >= 0 (0: no sample)"
        )
        if self.kind == "gpt" and self.sample_tokens:
            _require(
                self,
                "sample_prompt",
                isinstance(self.sample_prompt, str) and self.sample_prompt != "",
                "a non-empty string when sample_tokens > 0 (sampling starts from its tokens)",
            )


def _gpt(name, model_overrides=None, **kw):
    return TrainConfig(kind="gpt", model=gpt_config(name, **(model_overrides or {})), **kw)


TRAIN_PRESETS: dict[str, TrainConfig] = {
    # seconds on a CPU: tests
    "gpt-tiny": _gpt(
        "tiny",
        {"vocab_size": 512, "max_len": 64},
        data=DataConfig(vocab_size=512, seq_len=64, batch_size=8),
        optim=OptimConfig(learning_rate=3e-3, warmup_steps=5),
        steps=20,
        eval_every=10,
        eval_batches=2,
        log_every=5,
        checkpoint_every=10,
        sample_tokens=20,
    ),
    # make run: a few minutes on a 2-core CPU, with the BPE vocabulary that ships in data/tokenizers
    "gpt-small": _gpt(
        "small",
        {"vocab_size": 4096, "max_len": 128},
        data=DataConfig(vocab_size=4096, seq_len=128, batch_size=16),
        optim=OptimConfig(learning_rate=2e-3, warmup_steps=30),
        steps=300,
        eval_every=50,
        eval_batches=8,
        log_every=10,
        checkpoint_every=100,
    ),
    # the paper's GPT-J-style 300M decoder, for a GPU; remat "dots" + a chunked loss fit long sequences
    # (README "Memory at the papers' size": 32 GB compiled at 65,536 tokens per step, seq 2,048 to 65,536)
    "gpt-300m": _gpt(
        "gptj-300m",
        {"vocab_size": 32768, "dtype": "bfloat16", "remat": "dots", "loss_chunk": 4096},
        data=DataConfig(corpus="mixed", vocab_size=32768, seq_len=1024, batch_size=32),
        optim=OptimConfig(learning_rate=3e-4, warmup_steps=1000, weight_decay=0.1, b2=0.95),
        steps=50_000,
        eval_every=1000,
        eval_batches=50,
        log_every=50,
        checkpoint_every=1000,
    ),
    # softmax-as-an-RNN ablation (benchmarks/softmax_rnn_ablation.py): one small model per variant
    "gpt-ablation-cpu": _gpt(
        "small",
        {
            "num_layers": 2,
            "d_model": 128,
            "num_heads": 4,
            "ff_dim": 512,
            "rotary_dim": 16,
            "vocab_size": 4096,
            "max_len": 128,
        },
        data=DataConfig(vocab_size=4096, seq_len=128, batch_size=16),
        optim=OptimConfig(learning_rate=3e-3, warmup_steps=30),
        steps=300,
        eval_every=50,
        eval_batches=16,
        log_every=10,
        checkpoint_every=300,
        sample_tokens=0,
    ),
    "gpt-ablation-gpu": _gpt(
        "small",
        {
            "num_layers": 6,
            "d_model": 512,
            "num_heads": 8,
            "ff_dim": 2048,
            "rotary_dim": 32,
            "vocab_size": 4096,
            "max_len": 512,
        },
        # the embedded corpus runs anywhere; --set data.corpus=mixed after `make corpus`
        data=DataConfig(vocab_size=4096, seq_len=512, batch_size=16),
        optim=OptimConfig(learning_rate=1e-3, warmup_steps=100),
        steps=1500,
        eval_every=100,
        eval_batches=32,
        log_every=50,
        checkpoint_every=1000,
        sample_tokens=0,
    ),
    "bert-tiny": TrainConfig(
        kind="bert-mlm",
        model=bert_config("tiny", vocab_size=512, max_len=64),
        data=DataConfig(tokenizer="wordpiece", vocab_size=512, seq_len=64, batch_size=8),
        optim=OptimConfig(learning_rate=3e-3, warmup_steps=5),
        steps=20,
        eval_every=10,
        eval_batches=2,
        log_every=5,
        checkpoint_every=10,
        sample_tokens=0,
    ),
    "bert-small": TrainConfig(
        kind="bert-mlm",
        model=bert_config("small", vocab_size=4096, max_len=128),
        data=DataConfig(tokenizer="wordpiece", vocab_size=4096, seq_len=128, batch_size=32),
        optim=OptimConfig(learning_rate=1e-3, warmup_steps=50),
        steps=1000,
        eval_every=100,
        eval_batches=8,
        checkpoint_every=200,
        sample_tokens=0,
    ),
    "bert-base": TrainConfig(
        kind="bert-mlm",
        model=bert_config("base", dtype="bfloat16"),
        data=DataConfig(corpus="mixed", tokenizer="wordpiece", vocab_size=30522, seq_len=128, batch_size=256),
        optim=OptimConfig(
            learning_rate=1e-4, warmup_steps=10_000, schedule="linear", end_lr_ratio=0.0, weight_decay=0.01, b2=0.999
        ),
        steps=1_000_000,
        eval_every=5000,
        eval_batches=50,
        checkpoint_every=5000,
        sample_tokens=0,
    ),
}


def train_preset(name: str, overrides: Sequence[str] = ()) -> TrainConfig:
    """TRAIN_PRESETS[name] with `key=value` overrides applied."""
    if name not in TRAIN_PRESETS:
        raise ValueError(f"unknown training preset {name!r}; choose from {sorted(TRAIN_PRESETS)}")
    return apply_overrides(TRAIN_PRESETS[name], overrides)


def finetune_config(pretrain: TrainConfig, task: str, init_from: str | None) -> TrainConfig:
    """Classification finetuning of a bert-mlm config on a labelled task ("sentiment" or "paraphrase").

    Same model and tokenizer; a lower learning rate, a short schedule, and
    evaluation on the task's validation split (the test split is reported at the end).
    """
    if pretrain.kind != "bert-mlm":
        raise ValueError(f"finetuning starts from a bert-mlm config; got kind={pretrain.kind!r}")
    steps = max(100, pretrain.steps // 5)
    return dataclasses.replace(
        pretrain,
        kind="bert-classify",
        init_from=init_from,
        data=dataclasses.replace(pretrain.data, task=task, batch_size=min(pretrain.data.batch_size, 32)),
        optim=dataclasses.replace(
            pretrain.optim,
            learning_rate=pretrain.optim.learning_rate / 5,
            warmup_steps=max(steps // 10, 1),
            schedule="linear",
            end_lr_ratio=0.0,
        ),
        steps=steps,
        eval_every=max(steps // 5, 1),
        eval_batches=0,
        checkpoint_every=max(steps // 2, 1),
    )


# ----------------------------------------------------------------------------- overrides


def _scalar_types(tp) -> set:
    """The scalar types an override of a field of type `tp` may take: bool, int, float, str and None
    (a Literal of strings is a str here: the config's own check then names the allowed values)."""
    if tp is type(None):
        return {type(None)}
    if tp in (bool, int, float, str):
        return {tp}
    origin = typing.get_origin(tp)
    if origin is Literal:
        return {type(a) for a in get_args(tp)}
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_scalar_types(a) for a in get_args(tp)))
    return set()


def _parse_value(raw: str, tp, annotation: str, field_name: str) -> Any:
    """Convert the text of an override to the field's declared type `tp` (written `annotation`)."""
    text = raw.strip()
    allowed = _scalar_types(tp)
    if text.lower() in ("none", "null") and type(None) in allowed:
        return None
    for kind in (k for k in (bool, int, float, str) if k in allowed):
        try:
            if kind is bool:
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(text)
                return text.lower() in ("true", "1", "yes")
            return kind(text)
        except ValueError:
            continue
    raise ValueError(f"cannot set {field_name} (type {annotation}) to {raw!r}")


def _replace_path(obj, path: list[str], raw: str, full: str):
    fields = {f.name: f for f in dataclasses.fields(obj)}
    name = path[0]
    if name not in fields:
        raise ValueError(
            f"unknown config key {full!r}: {type(obj).__name__} has no field {name!r} "
            f"(fields: {', '.join(sorted(fields))})"
        )
    current = getattr(obj, name)
    if len(path) > 1:
        if not dataclasses.is_dataclass(current):
            raise ValueError(f"config key {full!r}: {name!r} is not a section")
        return dataclasses.replace(obj, **{name: _replace_path(current, path[1:], raw, full)})
    annotation = fields[name].type
    annotation = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    tp = typing.get_type_hints(type(obj))[name]
    return dataclasses.replace(obj, **{name: _parse_value(raw, tp, annotation, full)})


def apply_overrides(config, overrides: Sequence[str]):
    """Apply `section.key=value` strings in order, e.g. ["model.attention=softmax", "steps=50"].

    Setting `model.vocab_size` of a TrainConfig makes it the user's: `vocab_from_tokenizer` becomes
    False (unless the overrides set that too), and training refuses a tokenizer of another size.
    """
    keys = []
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override must look like key=value; got {item!r}")
        key, raw = item.split("=", 1)
        keys.append(key.strip())
        config = _replace_path(config, key.strip().split("."), raw, key.strip())
    if isinstance(config, TrainConfig) and "model.vocab_size" in keys and "vocab_from_tokenizer" not in keys:
        config = dataclasses.replace(config, vocab_from_tokenizer=False)
    return config


# ----------------------------------------------------------------------------- JSON


def to_dict(config: TrainConfig) -> dict:
    """Plain JSON-able dict of a TrainConfig."""
    return dataclasses.asdict(config)


def from_dict(d: dict) -> TrainConfig:
    """Inverse of `to_dict`."""
    model_cls = GPTConfig if d["kind"] == "gpt" else BertConfig
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(
        **{
            **{k: v for k, v in d.items() if k in known},
            "model": model_cls(**d["model"]),
            "data": DataConfig(**d["data"]),
            "optim": OptimConfig(**d["optim"]),
        }
    )
