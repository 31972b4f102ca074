"""``python -m train``'s command line: its help, how fast it answers, ``--config``."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import build_image_folder

from dali_cutmix.files import DatasetError
from train import cli
from train.config import Device, Precision, TrainConfig, get_args_parser, parse_config
from train.status import ExitStatus

HEAVY = ("torch", "torchvision", "nvidia", "matplotlib")


def _help_entries(text: str) -> dict[str, str]:
    """Each option's help in ``--help``'s output: its first flag -> its help text."""
    options = text[text.index("\noptions:") : text.index("\nresuming:")]
    entries: dict[str, str] = {}
    flag = None
    for line in options.splitlines():
        if line.startswith("  -"):  # a new option: its flags, then two spaces and its help
            invocation, _, help_text = line.strip().partition("  ")
            flag = invocation.split(",")[0].split()[0]
            entries[flag] = help_text.strip()
        elif line.startswith("    ") and flag is not None:  # the help continued
            entries[flag] = f"{entries[flag]} {line.strip()}".strip()
        else:  # a group's title or a blank line
            flag = None
    return entries


def test_help_gives_every_flag_a_line_of_help_and_its_default_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    parser = get_args_parser()
    text = parser.format_help()
    entries = _help_entries(text)
    flags = {action.option_strings[0] for action in parser._actions}
    assert set(entries) == flags  # every option has an entry
    assert "--momentum" in entries and "--seed" in entries
    for flag, help_text in entries.items():
        assert help_text, f"{flag} has no help"
        assert help_text.count("(default:") <= 1, f"{flag}: {help_text}"
        assert not re.search(r"\(default: None\)", help_text), f"{flag}: {help_text}"
    assert entries["--momentum"] == "SGD momentum (default: 0.9)"
    assert entries["--nesterov"] == "Nesterov momentum (default: on)"
    assert entries["--deterministic"].count("default") == 0  # a switch, off unless typed
    assert "(default: None)" not in text


def _heavy_imports(script: str) -> list[str]:
    """The modules of torch, torchvision, DALI and matplotlib that ``script`` imported."""
    script = (
        f"import sys\nbefore = set(sys.modules)\n{script}\n"
        f"print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in {HEAVY!r}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return ast.literal_eval(done.stdout.strip().splitlines()[-1])


def test_the_parser_and_the_configuration_load_neither_torch_nor_dali() -> None:
    """``python -m train --help`` and a bad flag answer before the heavy libraries load."""
    script = "import train.__main__, train.config\ntrain.config.get_args_parser().format_help()"
    assert _heavy_imports(script) == []


def test_help_and_a_bad_flag_answer_without_the_heavy_imports() -> None:
    for flag, status in (("--help", 0), ("--bogus", 2)):
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "train", flag],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == status, done.stderr[-2000:]
        imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines()}
        assert not imported & {"torch", "torchvision", "nvidia.dali"}, flag
    assert "unrecognized arguments: --bogus" in done.stderr


def test_the_parser_offers_torchvisions_resnets() -> None:
    torchvision = pytest.importorskip("torchvision")
    resnets = [
        name
        for name in torchvision.models.list_models(module=torchvision.models)
        if name.startswith(("resnet", "resnext", "wide_resnet"))
    ]
    assert sorted(resnets) == sorted(cli.ARCHS)


# ------------------------------------------------------------------------- --config


def _saved_run(
    tmp_path: Path, *argv: str, resume: Path | None = None, world_size: int | None = None
) -> tuple[TrainConfig, Path]:
    """A run's configuration, saved as ``python -m train`` saves it (``world_size``: on that
    many ranks; ``None``: as files written before the rank count was saved)."""
    config = parse_config(["--device", "cpu", "--output-dir", str(tmp_path / "run"), *argv])
    config = dataclasses.replace(config, resume=resume)  # as a resumed run saves it
    path = tmp_path / "run" / "config.json"
    path.parent.mkdir(parents=True)
    path.write_text(config.to_json(world_size=world_size) + "\n")
    return config, path


def test_config_replays_a_run_with_typed_flags_over_it(tmp_path: Path) -> None:
    flags = ["--epochs", "3", "--mix-prob", "0.5", "--aa", "rand-m9-n2", "--reprob", "0.25"]
    saved, path = _saved_run(tmp_path, *flags, "--crop-size", "48", resume=Path("x.pth"))
    # --device typed, as saved: the machine's settings follow the machine (a GPU node here)
    replayed = parse_config(["--config", str(path), "--device", "cpu"])
    # a new run: its own output folder, nothing resumed
    assert (replayed.resume, replayed.output_dir.parent) == (None, Path("runs"))
    expected = dataclasses.replace(saved, resume=None, output_dir=replayed.output_dir)
    assert replayed == expected
    changed = parse_config(["--config", str(path), "--epochs", "5", "--crop-size", "64"])
    assert changed.epochs == 5 and changed.augment == saved.augment
    assert (changed.data.train_crop_size, changed.data.val_resize_size) == (64, 73)
    assert changed.mix == saved.mix
    # the default warmup (at most epochs / 5) follows the typed --epochs: 0.6 of 3, 1 of 5
    assert saved.optim.warmup_epochs == 0.6
    assert changed.optim == dataclasses.replace(saved.optim, warmup_epochs=1.0)


def test_config_leaves_the_machines_settings_to_this_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A GPU run's config.json replayed on a CPU node: "--device must be 'cpu' or 'auto'",
    # then with --device cpu bf16 and NHWC on the CPU, and its 16 workers refused.
    saved, path = _saved_run(tmp_path, "--epochs", "3", "--mix-prob", "0.5", world_size=1)
    on_gpu = json.loads(path.read_text())
    on_gpu |= {"device": "gpu", "precision": "bf16", "channels_last": True}
    on_gpu["data"]["workers"] = 16
    path.write_text(json.dumps(on_gpu))
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # a CPU node
    replayed = parse_config(["--config", str(path), "--output-dir", str(saved.output_dir)])
    here = parse_config(["--output-dir", str(saved.output_dir)])  # a first run on this node
    assert (here.device, here.precision, here.channels_last) == (
        Device.CPU,
        Precision.FP32,
        False,
    )
    assert replayed == dataclasses.replace(
        saved,
        device=here.device,
        precision=here.precision,
        channels_last=here.channels_last,
        data=dataclasses.replace(saved.data, workers=here.data.workers),
    )
    # typed, they are the typed values
    typed = ["--config", str(path), "--amp", "bf16", "--channels-last", "-j", "1"]
    replayed = parse_config(typed)
    assert (replayed.precision, replayed.channels_last, replayed.data.workers) == (
        Precision.BF16,
        True,
        1,
    )


def test_config_derives_default_warmup_and_lr_again_and_keeps_chosen_ones(
    tmp_path: Path,
) -> None:
    # The embedded run's 1-epoch warmup made a replay with --epochs 1 all warmup, no decay,
    # and its lr of 0.1 stayed for a batch of 8 on another dataset (default 0.1 * 8 / 256).
    saved, path = _saved_run(tmp_path)
    assert (saved.epochs, saved.optim.warmup_epochs, saved.optim.lr) == (6, 1.0, 0.1)
    data = build_image_folder(tmp_path / "data" / "train", classes=2, per_class=1).parent
    (data / "val").symlink_to(data / "train")
    replayed = parse_config(["--config", str(path), "--epochs", "1", "--data", str(data)])
    assert (replayed.optim.warmup_epochs, replayed.optim.lr) == (0.2, 0.1 * 64 / 256)
    replayed = parse_config(["--config", str(path), "-b", "8"])  # still embedded: lr 0.1
    assert (replayed.optim.warmup_epochs, replayed.optim.lr) == (1.0, 0.1)
    chosen, path = _saved_run(tmp_path / "b", "--warmup-epochs", "0.5", "--lr", "0.3")
    replayed = parse_config(["--config", str(path), "--epochs", "1", "-b", "8"])
    assert (replayed.optim.warmup_epochs, replayed.optim.lr) == (0.5, 0.3)
    typed = ["--config", str(path), "--epochs", "2", "--warmup-epochs", "0.1", "--lr", "0.2"]
    assert (parse_config(typed).optim.warmup_epochs, parse_config(typed).optim.lr) == (0.1, 0.2)


def test_config_on_other_ranks_derives_a_default_lr_again_and_keeps_a_chosen_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # config.json held no rank count: a 1-rank run's default lr (0.1 * 64 / 256) stayed for a
    # replay on 8 ranks, whose global batch is 8 times larger.
    data = build_image_folder(tmp_path / "data" / "train", classes=2, per_class=1).parent
    (data / "val").symlink_to(data / "train")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    default, path = _saved_run(tmp_path / "a", "--data", str(data), "-b", "64", world_size=1)
    assert json.loads(path.read_text())["world_size"] == 1 and default.optim.lr == 0.025
    assert parse_config(["--config", str(path)]).optim.lr == 0.025
    monkeypatch.setenv("WORLD_SIZE", "8")  # as under torchrun --nproc_per_node 8
    assert parse_config(["--config", str(path)]).optim.lr == 0.1 * 64 * 8 / 256
    assert parse_config(["--config", str(path), "-b", "32"]).optim.lr == 0.1 * 32 * 8 / 256
    assert parse_config(["--config", str(path), "--lr", "0.3"]).optim.lr == 0.3
    flags = ["--data", str(data), "-b", "64"]
    chosen, path = _saved_run(tmp_path / "b", *flags, "--lr", "0.025", world_size=2)
    assert parse_config(["--config", str(path)]).optim.lr == 0.025  # 0.05 is 2 ranks' default
    monkeypatch.setenv("WORLD_SIZE", "2")
    two, path = _saved_run(tmp_path / "c", *flags, world_size=2)
    assert two.optim.lr == 0.05 and parse_config(["--config", str(path)]).optim.lr == 0.05
    monkeypatch.delenv("WORLD_SIZE")  # a file of before the rank count: taken as 1 rank's
    _, path = _saved_run(tmp_path / "d", *flags)
    assert "world_size" not in json.loads(path.read_text())
    assert parse_config(["--config", str(path), "-b", "32"]).optim.lr == 0.1 * 32 / 256


def test_config_names_a_saved_folder_or_list_that_is_gone_and_the_flag_for_its_place(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # it said "--config RUN/config.json: --data X: no such folder", as if --data was typed
    data = build_image_folder(tmp_path / "data" / "train", classes=2, per_class=1).parent
    (data / "val").symlink_to("train")  # relative: it moves with the folder
    files = tmp_path / "files.txt"
    files.write_text("class_000/img_0000.jpg 0\n")
    _, path = _saved_run(tmp_path, "--data", str(data), "--train-list", str(files))
    files.unlink()
    with pytest.raises(SystemExit):
        parse_config(["--config", str(path)])
    assert capsys.readouterr().err == (
        f"python -m train: error: --config {path}: the run's --train-list {files} is gone (no "
        "such file); give --train-list with its new place\n"
    )
    moved = data.rename(tmp_path / "moved")
    again = tmp_path / "again.txt"
    again.write_text("class_000/img_0000.jpg 0\n")
    with pytest.raises(SystemExit):
        parse_config(["--config", str(path), "--train-list", str(again)])
    assert capsys.readouterr().err == (
        f"python -m train: error: --config {path}: the run's --data {data} is gone (no such "
        "folder); give --data with its new place\n"
    )
    replayed = parse_config(
        ["--config", str(path), "--data", str(moved), "--train-list", str(again)]
    )
    assert (replayed.data.root, replayed.data.train_list) == (moved, again)


def test_config_gives_the_defaults_of_settings_the_file_lacks(tmp_path: Path) -> None:
    # A file without some keys (timm's -c files are partial) failed with "--device must be
    # one of ..., got None" or "'<=' not supported between instances of 'float' and 'NoneType'".
    flags = ["--momentum", "0.8", "--cutmix-alpha", "0.5", "--print-freq", "3", "--amp", "bf16"]
    saved, path = _saved_run(tmp_path, *flags, world_size=1)
    partial = json.loads(path.read_text())
    for section, key in [("optim", "momentum"), ("mix", "cutmix_alpha"), (None, "print_freq")]:
        del (partial[section] if section else partial)[key]
    del partial["precision"], partial["device"]
    path.write_text(json.dumps(partial))
    replayed = parse_config(["--config", str(path), "--output-dir", str(saved.output_dir)])
    default = parse_config(["--output-dir", str(saved.output_dir)])
    assert replayed == dataclasses.replace(
        saved,
        optim=dataclasses.replace(saved.optim, momentum=default.optim.momentum),
        mix=dataclasses.replace(saved.mix, cutmix_alpha=default.mix.cutmix_alpha),
        print_freq=default.print_freq,
        precision=default.precision,
        device=default.device,
    )
    assert (default.optim.momentum, default.mix.cutmix_alpha, default.print_freq) == (0.9, 1.0, 10)


@pytest.mark.parametrize(
    "contents, message",
    [
        (None, "--config {path}: no such file"),
        ("not json", "--config {path}: not a run's config.json (Expecting value: line 1"),
        ('{"epochs": 3}', "--config {path}: not a run's config.json (it has no data or optim"),
        # a value of the wrong kind is named (it said "... ('>' not supported between ...)")
        (
            '{"data": {}, "optim": {}, "mix": {}, "epochs": "x"}',
            "--config {path}: --epochs must be an int, got 'x'\n",
        ),
    ],
)
def test_config_names_a_file_it_cannot_use_in_one_line(
    tmp_path: Path, contents: str | None, message: str, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / "config.json"
    if contents is not None:
        path.write_text(contents)
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--config", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m train: error: " + message.format(path=path))
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "change, message",
    [
        ({"epoch": 3}, "--config {path}: unknown setting(s) epoch"),
        ({"epochs": 2.5}, "--config {path}: --epochs must be an int >= 1, got 2.5"),
        ({"world_size": 0}, "--config {path}: world_size must be an int >= 1, got 0"),
        ({"world_size": "2"}, "--config {path}: world_size must be an int >= 1, got '2'"),
    ],
)
def test_config_refuses_unknown_settings_and_values_of_another_kind(
    tmp_path: Path, change: dict, message: str, capsys: pytest.CaptureFixture
) -> None:
    _, path = _saved_run(tmp_path, "--epochs", "3")
    saved = json.loads(path.read_text())
    path.write_text(json.dumps(saved | change))
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--config", str(path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"python -m train: error: {message.format(path=path)}\n"


def test_config_and_resume_exclude_each_other(tmp_path: Path, capsys) -> None:
    _, path = _saved_run(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--config", str(path), "--resume", str(tmp_path / "checkpoint.pth")])
    assert exit_info.value.code == 2
    assert "--config and --resume both give the configuration; give one" in capsys.readouterr().err


# ------------------------------------------------------------------------- logging under torchrun


@pytest.mark.parametrize("rank, shown", [("0", True), ("1", False)])
def test_only_rank_0_logs_information(rank: str, shown: bool) -> None:
    """Under torchrun rank 1 does not repeat the dataset lines; its warnings still show."""
    script = (
        "import logging\n"
        "from train.__main__ import main\n"
        "try:\n"
        "    main(['--bogus'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "logging.getLogger('dali_cutmix.synthetic').info('generated the dataset')\n"
        "logging.getLogger('train').warning('a warning')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RANK": rank},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert ("generated the dataset" in done.stderr) is shown
    assert "train: a warning" in done.stderr


@pytest.mark.parametrize("rank", [0, 1])
def test_rank_0_makes_the_default_output_folder_as_it_parses(
    rank: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # made atomically, so that a run started in the same second takes the next name; the
    # other ranks only name it, and take rank 0's (train.utils.rank_0s)
    import train.config
    import train.runner
    from train.__main__ import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(train.config.time, "strftime", lambda form: "20261123-120000")
    seen = []

    def started(config: TrainConfig) -> None:
        seen.append((config.output_dir, config.output_dir.is_dir()))
        raise KeyboardInterrupt

    monkeypatch.setattr(train.runner, "run", started)
    assert main(["--device", "cpu"]) == 130
    assert seen == [(Path("runs/20261123-120000"), rank == 0)]


@pytest.mark.parametrize(
    ("flags", "rank", "writes", "error", "kept"),
    [
        ([], 0, [], KeyboardInterrupt, False),  # Ctrl-C while the run starts
        ([], 0, [], DatasetError("no full batch"), False),
        ([], 0, [], RuntimeError("an internal error"), False),  # its traceback says all
        ([], 0, ["checkpoint.pth"], KeyboardInterrupt, True),
        ([], 0, ["metrics.jsonl"], DatasetError("no full batch"), True),
        ([], 0, ["scan-train/"], DatasetError("no full batch"), True),
        # a new --output-dir (and the parents it made) goes as runs/<date-time> does: it
        # was left with .lock and config.json
        (["--output-dir", "mine"], 0, [], DatasetError("no full batch"), False),
        (["--output-dir", "mine/deep"], 0, [], DatasetError("no full batch"), False),
        (["--output-dir", "."], 0, [], DatasetError("no full batch"), True),  # it was there
        ([], 1, [], KeyboardInterrupt, True),  # rank 0 claimed it, and removes it
    ],
)
def test_only_the_folder_a_failed_run_claimed_and_left_unused_is_removed(
    flags: list[str],
    rank: int,
    writes: list[str],
    error: BaseException,
    kept: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import train.config
    import train.runner
    from train.__main__ import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setattr(train.config.time, "strftime", lambda form: "20261123-120000")
    folder = Path(flags[1] if flags else "runs/20261123-120000")

    def fails(config: TrainConfig) -> None:
        assert config.output_dir == folder
        config.output_dir.mkdir(parents=True, exist_ok=True)  # as rank 0's train.runner._set_up
        (config.output_dir / "config.json").write_text("{}\n")
        for name in writes:
            path = config.output_dir / name
            path.mkdir() if name.endswith("/") else path.write_bytes(b"")
        raise error

    monkeypatch.setattr(train.runner, "run", fails)
    if isinstance(error, RuntimeError):
        with pytest.raises(RuntimeError, match="an internal error"):
            main(["--device", "cpu", *flags])
    else:
        assert main(["--device", "cpu", *flags]) in (ExitStatus.USAGE, ExitStatus.ABORTED)
    assert folder.is_dir() is kept
    if kept:
        written = ["config.json", *(name.rstrip("/") for name in writes)]
        assert sorted(p.name for p in folder.iterdir()) == sorted(written)
    # runs/ goes with the folder this command made it for (an empty runs/ was left)
    assert Path("runs").is_dir() == (not flags and kept)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "config.json") == (
        ["runs"] if not flags and kept else []
    )


def test_a_folder_another_run_holds_is_not_removed_with_this_one(tmp_path: Path) -> None:
    # Two runs given one new --output-dir: the one refused as "another run is writing there
    # now" had seen the folder missing, and removed it in its clean-up, the other's lock
    # and config.json with it; the other crashed an epoch later (FileNotFoundError).
    from train.config import drop_unused_run_dir, first_missing
    from train.utils import folder_lock

    out = tmp_path / "new" / "run"
    made = first_missing(out)
    assert made == tmp_path / "new"
    with folder_lock(out):  # the other run, training
        (out / "config.json").write_text("{}\n")
        assert drop_unused_run_dir(out, made) is False
        assert sorted(p.name for p in out.iterdir()) == [".lock", "config.json"]
    assert drop_unused_run_dir(out, made) is True  # released: this run's to remove
    assert list(tmp_path.iterdir()) == []


def test_a_second_ctrl_c_ends_with_one_line_and_status_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    # The first Ctrl-C stops at the next step; the second raises KeyboardInterrupt wherever
    # the run is (as does a Ctrl-C while torch loads), which used to print a traceback.
    import train.runner
    from train.__main__ import main

    def interrupted(config: TrainConfig) -> None:
        raise KeyboardInterrupt

    run = train.runner.run
    monkeypatch.setattr(train.runner, "run", interrupted)
    out = tmp_path / "run"
    # before any checkpoint (a Ctrl-C while the run starts): it named one that did not exist
    assert main(["--device", "cpu", "--output-dir", str(out)]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        "python -m train: aborted by Ctrl-C; no checkpoint was written"
    )

    def interrupted_after_a_checkpoint(config: TrainConfig) -> None:
        config.output_dir.mkdir()
        (config.output_dir / "checkpoint.pth").write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr(train.runner, "run", interrupted_after_a_checkpoint)
    out = tmp_path / "run2"
    assert main(["--device", "cpu", "--output-dir", str(out)]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"python -m train: aborted by Ctrl-C; the last checkpoint written is intact: "
        f"{out / 'checkpoint.pth'}"
    )
    # --test-only of that checkpoint: an evaluation writes nothing, and it said "the last
    # checkpoint written" of the one it read
    import train.__main__

    monkeypatch.setattr(train.runner, "run", interrupted)
    parse = train.__main__._parse
    monkeypatch.setattr(
        train.__main__,
        "_parse",
        lambda argv, rank: dataclasses.replace(
            parse(argv, rank), test_only=True, resume=out / "checkpoint.pth", output_dir=out
        ),
    )
    assert main(["--device", "cpu", "--output-dir", str(tmp_path / "run4")]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        "python -m train: aborted by Ctrl-C; the evaluation wrote nothing; the checkpoint is "
        f"intact: {out / 'checkpoint.pth'}"
    )
    monkeypatch.setattr(train.__main__, "_parse", parse)
    # under torchrun, rank 0's folder, where this rank's flags named another
    monkeypatch.setattr(train.runner, "run", run)
    monkeypatch.setattr(train.runner, "rank_0s", lambda path, info: out)
    monkeypatch.setattr(train.runner, "_run", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    assert main(["--device", "cpu", "--output-dir", str(tmp_path / "run3")]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"python -m train: aborted by Ctrl-C; the last checkpoint written is intact: "
        f"{out / 'checkpoint.pth'}"
    )


def test_sigterm_while_the_run_starts_ends_it_as_ctrl_c_does_with_status_143(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    # Python's default ended the process at once, without a word, leaving an empty run
    # folder (timeout and batch schedulers send SIGTERM).
    import train.runner
    from train.__main__ import main

    def terminated(config: TrainConfig) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        pytest.fail("SIGTERM went unhandled")

    monkeypatch.setattr(train.runner, "run", terminated)
    monkeypatch.chdir(tmp_path)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["--device", "cpu"]) == 143
    assert capsys.readouterr().err.splitlines()[-1] == (
        "python -m train: aborted by SIGTERM; no checkpoint was written"
    )
    assert not (tmp_path / "runs").exists()  # the run's folder is gone, and runs/ made for it
    assert signal.getsignal(signal.SIGTERM) == before


def test_an_embedded_set_that_cannot_be_used_ends_in_one_line_before_training(
    tmp_path: Path, capsys
) -> None:
    # generate's refusal was a traceback (status 1), and under torchrun the other ranks'
    # too, from the barrier they waited in.
    from train.__main__ import main

    argv = ["--device", "cpu", "--cache-dir", str(tmp_path / "c"), "--output-dir"]
    folder = parse_config([*argv, str(tmp_path / "probe")], claim=False).data.dataset_dir
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("someone's\n")
    assert main([*argv, str(tmp_path / "run")]) == ExitStatus.USAGE
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"python -m train: error: {folder} exists and is no dataset this command generated "
        "(no readable manifest.json); remove it or choose another path"
    )


def test_an_unusable_checkpoint_ends_with_one_line_and_status_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys
) -> None:
    import train.runner
    from train.__main__ import main
    from train.checkpoint import CheckpointError

    def unusable(config: TrainConfig) -> None:
        raise CheckpointError("c.pth: its model weights do not fit ResNet of its configuration")

    monkeypatch.setattr(train.runner, "run", unusable)
    assert main(["--device", "cpu", "--output-dir", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "python -m train: error: c.pth: its model weights do not fit ResNet of its configuration"
    )


def test_ctrl_c_while_the_flags_are_read_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    # --resume loads torch and the checkpoint while parsing: seconds a Ctrl-C may hit.
    import train.__main__ as entry

    def interrupted(argv: list[str], *, claim: bool) -> TrainConfig:
        raise KeyboardInterrupt

    monkeypatch.setattr(entry, "parse_config", interrupted)
    assert entry.main(["--resume", "x.pth"]) == 130
    assert capsys.readouterr().err == "python -m train: aborted by Ctrl-C; nothing was started\n"
    # torchrun forwards a Ctrl-C to every rank: rank 0 alone says it (each rank printed it)
    monkeypatch.setenv("RANK", "1")
    assert entry.main(["--resume", "x.pth"]) == 130
    assert capsys.readouterr().err == ""


def test_sigterm_raises_terminated_once_and_a_second_one_is_ignored(monkeypatch) -> None:
    # timeout sends SIGTERM to the command and to its group: the second, raised while the
    # first was being answered, ended the run in two tracebacks and status 1.
    from train.__main__ import _sigterm_as_interrupt
    from train.status import Terminated

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    before = signal.getsignal(signal.SIGTERM)
    with _sigterm_as_interrupt():
        with pytest.raises(Terminated):
            signal.raise_signal(signal.SIGTERM)
        try:  # while the first is answered: nothing raised
            signal.raise_signal(signal.SIGTERM)
        except Terminated:  # a KeyboardInterrupt: uncaught, it would end the whole session
            pytest.fail("a second SIGTERM raised Terminated again")
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_sigterm_inside_dalis_import_while_the_flags_are_read_is_a_stop(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    # -j's default loads DALI: a SIGTERM as its backend initialised came out as "ImportError:
    # initialization failed" (from Terminated), two tracebacks and status 1
    import train.__main__ as entry
    from train.status import Terminated

    def parse(argv, rank):
        try:
            raise Terminated
        except Terminated as stop:
            raise ImportError("initialization failed") from stop

    monkeypatch.setattr(entry, "_parse", parse)
    assert entry.main(["--output-dir", str(tmp_path / "run")]) == 143
    assert capsys.readouterr().err.splitlines()[-1] == (
        "python -m train: aborted by SIGTERM; nothing was started"
    )


@pytest.mark.parametrize(
    "change, message",
    [
        # a misspelt key inside a section was dropped without a word: the run took 0.0
        ({"mix": {"mixup_alpah": 0.3}}, "unknown setting(s) mix.mixup_alpah"),
        ({"optim": {"learning_rate": 5}}, "unknown setting(s) optim.learning_rate"),
        # any non-empty string was true: "no" turned the average on
        ({"model_ema": "no"}, "--model-ema must be true or false, got 'no'"),
        ({"deterministic": 0}, "--deterministic must be true or false, got 0"),
    ],
)
def test_a_partial_config_refuses_misspelt_keys_and_switches_that_are_no_bool(
    tmp_path: Path, change: dict, message: str, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / "partial.json"
    partial = {"data": {"root": str(tmp_path), "batch_size": 8}, "optim": {}, "mix": {}}
    for key, value in change.items():
        partial[key] = partial[key] | value if isinstance(value, dict) else value
    path.write_text(json.dumps(partial))
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--config", str(path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"python -m train: error: --config {path}: {message}\n"


def test_a_partial_config_without_a_section_is_told_which(tmp_path: Path, capsys) -> None:
    # it said "it has no data, optim and mix settings" of a file that had two of them
    path = tmp_path / "partial.json"
    path.write_text(json.dumps({"data": {"root": str(tmp_path)}, "mix": {}}))
    with pytest.raises(SystemExit):
        parse_config(["--config", str(path)])
    assert capsys.readouterr().err == (
        f"python -m train: error: --config {path}: not a run's config.json (it has no optim "
        "section); a partial file has all three of data, optim and mix, empty ones included "
        '("optim": {})\n'
    )


def test_a_replay_with_the_other_loader_takes_that_loaders_mix_mode_unless_one_was_chosen(
    tmp_path: Path, capsys
) -> None:
    # A DALI run's file with --loader torchvision was refused for the "elem" it never typed;
    # a torchvision run's with --loader dali kept "batch"
    _, dali_run = _saved_run(tmp_path / "a")
    config = parse_config(["--config", str(dali_run), "--loader", "torchvision"])
    assert config.mix.mode.value == "batch"
    _, tv_run = _saved_run(tmp_path / "b", "--loader", "torchvision")
    assert parse_config(["--config", str(tv_run), "--loader", "dali"]).mix.mode.value == "elem"
    _, pair_run = _saved_run(tmp_path / "c", "--mix-mode", "pair")  # chosen: kept, and refused
    assert parse_config(["--config", str(pair_run)]).mix.mode.value == "pair"
    with pytest.raises(SystemExit):
        parse_config(["--config", str(pair_run), "--loader", "torchvision"])
    assert "--mix-mode pair needs --loader dali" in capsys.readouterr().err
