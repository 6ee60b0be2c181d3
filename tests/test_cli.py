"""The command lines: a user's mistake is one line on stderr and a non-zero status, never a traceback;
`--debug` shows the traceback; an internal error keeps it.

Most cases call `train_main` / `generate_main` in this process and read what the interpreter would
print: a `SystemExit` whose code is a message is printed on stderr with status 1. A few run the
installed entry point in a subprocess, as a user does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import optax
import pytest
from flax import nnx

from cottention_jax import cli, data_cli, launch
from cottention_jax.checkpoint import Checkpointer
from cottention_jax.configs import to_dict, train_preset
from cottention_jax.models import GPT
from pallas_kernels.cosine_attn import launch_table
from tests._util import fresh_key

# gpt-tiny with the shipped 4,096-token BPE: nothing is trained or built for the tokenizer
_VOCAB = ["data.vocab_size=4096", "model.vocab_size=4096"]
_GPT = train_preset("gpt-tiny", _VOCAB)


def _run(main, argv, capsys) -> tuple[int, str]:
    """(exit status, stderr) of `main(argv)` as the interpreter would end it: a SystemExit whose code is a
    string prints it on stderr and exits 1. Any other exception propagates (a traceback)."""
    capsys.readouterr()
    try:
        main([str(a) for a in argv])
        status, message = 0, ""
    except SystemExit as stop:
        if isinstance(stop.code, str):
            status, message = 1, stop.code + "\n"
        else:
            status, message = stop.code or 0, ""
    return status, capsys.readouterr().err + message


def _assert_one_line(status: int, err: str, *needles: str) -> str:
    """A non-zero status, exactly one line on stderr, no traceback, and each needle in that line."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert status != 0, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _save_run(workdir: Path, config, step: int = 1) -> None:
    """A workdir as training leaves it: one checkpoint of random parameters and the run's config."""
    model = GPT(config.model, rngs=nnx.Rngs(params=int(jax.random.randint(fresh_key(), (), 0, 10**6)), dropout=0))
    ckpt = Checkpointer(workdir / "checkpoints", save_every=1, keep=5)
    ckpt.save(
        step,
        model,
        nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param),
        {"position": step},
        to_dict(config),
        force=True,
    )
    ckpt.close()


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("gpt-run")
    _save_run(workdir, _GPT)
    return workdir


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    """One data directory for the module: Shakespeare is tokenized once."""
    return str(tmp_path_factory.mktemp("data"))


def _train_args(data_dir: str, workdir, *overrides: str) -> list:
    args = ["--preset", "gpt-tiny", "--workdir", workdir, "--no-progress"]
    for item in [*_VOCAB, f"data.data_dir={data_dir}", "steps=2", *overrides]:
        args += ["--set", item]
    return args


# ------------------------------------------------------------------ cottention-train: the config


def test_train_an_unknown_config_key_names_the_valid_keys(capsys):
    status, err = _run(cli.train_main, ["--preset", "gpt-tiny", "--set", "model.no_such_field=1"], capsys)
    _assert_one_line(status, err, "model.no_such_field", "d_model", "num_layers")
    status, err = _run(cli.train_main, ["--preset", "gpt-tiny", "--set", "no_such_key=1"], capsys)
    _assert_one_line(status, err, "no_such_key", "steps", "optim")


def test_train_an_invalid_config_value_names_the_choices(capsys):
    status, err = _run(cli.train_main, ["--preset", "gpt-tiny", "--set", "model.attention=no-such-kind"], capsys)
    _assert_one_line(status, err, "no-such-kind", "cosine", "softmax")
    status, err = _run(cli.train_main, ["--preset", "gpt-tiny", "--set", "steps=-3"], capsys)
    _assert_one_line(status, err, "steps", "-3")
    status, err = _run(cli.train_main, ["--preset", "gpt-tiny", "--set", "steps"], capsys)
    _assert_one_line(status, err, "key=value")


def test_train_a_bad_heartbeat_timeout_is_one_line(capsys):
    status, err = _run(cli.train_main, ["--preset", "gpt-tiny", "--heartbeat-timeout", "0"], capsys)
    _assert_one_line(status, err, "heartbeat_timeout_s", "got 0")


def test_train_an_unknown_preset_is_one_line_listing_the_presets(capsys):
    """argparse printed its multi-line usage block before the error."""
    status, err = _run(cli.train_main, ["--preset", "gpt-huge"], capsys)
    _assert_one_line(status, err, "gpt-huge", "gpt-tiny", "bert-small", "--help")
    assert status == 2
    status, err = _run(cli.train_main, ["--no-such-flag"], capsys)
    _assert_one_line(status, err, "--no-such-flag")


def test_train_a_resume_refusal_is_one_line(data_dir, tmp_path, capsys):
    """A workdir whose checkpoint has another architecture: refused, in one line."""
    _save_run(tmp_path, train_preset("gpt-tiny", [*_VOCAB, f"data.data_dir={data_dir}", "steps=2"]))
    status, err = _run(cli.train_main, _train_args(data_dir, tmp_path, "model.num_layers=1"), capsys)
    _assert_one_line(status, err, "ValueError", "num_layers")


@pytest.mark.parametrize("where", ["under-a-file", "sysfs"])
def test_train_a_workdir_that_cannot_be_written_is_one_line(data_dir, tmp_path, capsys, where):
    """Root writes anywhere a mode allows, so the unwritable places are a path under a file and /sys
    (no directory can be made there, whoever asks)."""
    if where == "under-a-file":
        (tmp_path / "a-file").write_text("x")
        workdir, error = tmp_path / "a-file" / "run", "NotADirectoryError"
    else:
        if not os.path.ismount("/sys"):
            pytest.skip("no sysfs mounted at /sys (not Linux)")
        workdir, error = Path("/sys") / f"cottention-test-{os.getpid()}", "PermissionError"
    status, err = _run(cli.train_main, _train_args(data_dir, workdir), capsys)
    _assert_one_line(status, err, error, str(workdir))
    assert not workdir.exists()


def _raising(error: BaseException):
    def train_and_evaluate(*args, **kwargs):
        raise error

    return train_and_evaluate


def test_train_a_kernel_table_error_is_one_line_naming_the_variable_and_path(tmp_path, capsys, monkeypatch):
    """$COTTENTION_KERNEL_TABLE naming a missing file: the ValueError launch_table raises (on a GPU, when a
    kernel looks up its launch), said in one line by the command."""
    missing = tmp_path / "no-such-table.json"
    monkeypatch.setenv(launch_table.ENV_VAR, str(missing))
    with pytest.raises(ValueError) as caught:
        launch_table.table_paths()
    monkeypatch.setattr("cottention_jax.train.train_and_evaluate", _raising(caught.value))
    status, err = _run(cli.train_main, ["--preset", "gpt-tiny", "--workdir", tmp_path / "run"], capsys)
    _assert_one_line(status, err, launch_table.ENV_VAR, str(missing))


def test_train_debug_shows_the_traceback_and_an_internal_error_keeps_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("cottention_jax.train.train_and_evaluate", _raising(ValueError("a user's mistake")))
    argv = ["--preset", "gpt-tiny", "--workdir", tmp_path / "run"]
    _assert_one_line(*_run(cli.train_main, argv, capsys), "ValueError: a user's mistake")
    with pytest.raises(ValueError, match="a user's mistake"):  # --debug: the exception itself
        _run(cli.train_main, [*argv, "--debug"], capsys)
    with pytest.raises(ValueError, match="no-such-kind"):  # also for a config error
        _run(cli.train_main, [*argv, "--debug", "--set", "model.attention=no-such-kind"], capsys)
    monkeypatch.setattr("cottention_jax.train.train_and_evaluate", _raising(RuntimeError("a bug of ours")))
    with pytest.raises(RuntimeError, match="a bug of ours"):  # internal: its traceback
        _run(cli.train_main, argv, capsys)
    monkeypatch.setattr(
        "cottention_jax.train.train_and_evaluate", _raising(ConnectionResetError(104, "Connection reset by peer"))
    )
    with pytest.raises(ConnectionResetError):  # an OSError not of the user's
        _run(cli.train_main, argv, capsys)


# ------------------------------------------------------------------ cottention-generate


def _generate(workdir, *extra) -> list:
    return ["--workdir", workdir, "--prompt", "ROMEO:", "--max-new-tokens", 2, *extra]


def test_generate_a_step_not_found_is_one_line(gpt_run, capsys):
    status, err = _run(cli.generate_main, _generate(gpt_run, "--step", 7), capsys)
    _assert_one_line(status, err, "step 7", "[1]")


def test_generate_a_workdir_that_is_not_a_run_is_one_line(tmp_path, capsys):
    status, err = _run(cli.generate_main, _generate(tmp_path / "nowhere"), capsys)
    _assert_one_line(status, err, "nowhere", "checkpoints")


def test_generate_a_corrupt_tokenizer_is_one_line_naming_the_file(gpt_run, tmp_path, capsys):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "checkpoints").symlink_to(gpt_run / "checkpoints")
    (workdir / "tokenizer.json").write_text("{not json", encoding="utf-8")
    status, err = _run(cli.generate_main, _generate(workdir), capsys)
    _assert_one_line(status, err, "CorruptDataError", "tokenizer.json")
    with pytest.raises(Exception, match="tokenizer.json"):  # --debug: the traceback
        _run(cli.generate_main, _generate(workdir, "--debug"), capsys)


@pytest.mark.parametrize("temperature", ["inf", "nan", "-1"])
def test_generate_a_bad_temperature_is_one_line(gpt_run, capsys, temperature):
    """decoding.generate refuses it (ValueError); `inf` used to sample silently."""
    status, err = _run(cli.generate_main, _generate(gpt_run, "--temperature", temperature), capsys)
    _assert_one_line(status, err, "temperature", temperature)


def test_generate_a_bad_flag_is_one_line(gpt_run, capsys):
    status, err = _run(cli.generate_main, _generate(gpt_run, "--top-k", "many"), capsys)
    _assert_one_line(status, err, "--top-k", "many", "--help")
    assert status == 2


# ------------------------------------------------------------------ as a user runs them


def _command(name: str, *argv, cwd: Path) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / name
    return subprocess.run(
        [str(script), *map(str, argv)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )


def test_the_installed_commands_say_a_user_error_in_one_line_and_debug_shows_the_traceback(gpt_run, tmp_path):
    done = _command("cottention-train", "--preset", "gpt-huge", cwd=tmp_path)
    _assert_one_line(done.returncode, done.stderr, "cottention-train: error:", "gpt-huge")
    done = _command("cottention-generate", *_generate(gpt_run, "--step", 9), cwd=tmp_path)
    _assert_one_line(done.returncode, done.stderr, "cottention-generate: FileNotFoundError:", "step 9")
    done = _command("cottention-generate", *_generate(gpt_run, "--step", 9, "--debug"), cwd=tmp_path)
    assert done.returncode != 0 and "Traceback" in done.stderr and "step 9" in done.stderr, done.stderr


# ------------------------------------------------------------------ cottention-data, cottention-launch


@pytest.fixture
def documents(tmp_path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(4):
        (folder / f"{i}.txt").write_text(f"document {i}: a few words of text\n", encoding="utf-8")
    return folder


def test_data_an_unwritable_data_dir_is_one_line(documents, tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    data_dir = tmp_path / "a-file" / "data"
    argv = ["prepare", documents, "--tokenizer", "byte", "--no-progress", "--data-dir", data_dir]
    status, err = _run(data_cli.main, argv, capsys)
    _assert_one_line(status, err, "cottention-data: NotADirectoryError", str(data_dir))
    with pytest.raises(NotADirectoryError):  # --debug: the traceback
        _run(data_cli.main, [*argv, "--debug"], capsys)


def test_data_a_malformed_command_is_one_line(capsys):
    status, err = _run(data_cli.main, ["no-such-command"], capsys)
    _assert_one_line(status, err, "no-such-command", "prepare", "--help")
    status, err = _run(data_cli.main, ["build-task", "no-such-task"], capsys)
    _assert_one_line(status, err, "no-such-task", "sentiment")
    assert status == 2


def test_launch_a_malformed_command_is_one_line(capsys):
    for argv, needle in [
        (["--nproc", "0", "--", "true"], "--nproc must be >= 1"),
        (["--nproc", "2"], "no command"),
        (["--nproc", "two", "--", "true"], "'two'"),
    ]:
        status, err = _run(launch.main, argv, capsys)
        _assert_one_line(status, err, "cottention-launch: error:", needle)


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_is_one_line_and_status_130(gpt_run, capsys, monkeypatch):
    """Ctrl-C during generation or data preparation: no traceback (--debug: the KeyboardInterrupt)."""
    monkeypatch.setattr("cottention_jax.decoding.generate", _interrupt)
    monkeypatch.setattr(data_cli, "_run", _interrupt)
    for main, argv in [(cli.generate_main, _generate(gpt_run)), (data_cli.main, ["info", "shakespeare"])]:
        try:
            status, err = _run(main, argv, capsys)
        except KeyboardInterrupt:  # not left to propagate: it would stop the whole pytest session
            pytest.fail(f"{main.__name__}: Ctrl-C propagated (a traceback)")
        assert status == 130
        _assert_one_line(status, err, "interrupted")
        with pytest.raises(KeyboardInterrupt):
            _run(main, [*argv, "--debug"], capsys)
