"""The `megaeeve` command: subcommands, --version, and a wheel installed outside the checkout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from megaeeve import __version__
from megaeeve.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]


def test_version_and_every_subcommand_answers_help(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"megaeeve {__version__}"
    for command in COMMANDS:
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        out = capsys.readouterr().out
        assert done.value.code == 0 and out.startswith(f"usage: megaeeve {command}"), command
    with pytest.raises(SystemExit) as done:
        main(["tokenize"])
    assert done.value.code == 2 and "invalid choice: 'tokenize'" in capsys.readouterr().err


@pytest.mark.slow
def test_wheel_installed_outside_the_checkout_plans_with_its_packaged_configs(tmp_path):
    """The wheel carries ds_configs/ and configs/ as package data: `python -m megaeeve train --dry-run` plans
    phi-2 from an install in another directory, with no checkout on the path."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(REPO)], check=True, capture_output=True)
    wheel, = (tmp_path / "dist").glob("megaeeve-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp_path / "site"),
                    str(wheel)], check=True, capture_output=True)
    package = tmp_path / "site" / "megaeeve"
    env = {"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", "import megaeeve.cli, sys; print(megaeeve.cli.__file__); "
                          "sys.exit(megaeeve.cli.main(sys.argv[1:]))", "train", "--dry-run",
                          "--ds_config", str(package / "ds_configs" / "zero3.json"),
                          "--model", str(package / "configs" / "models" / "phi-2"), "--world-size", "8"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.splitlines()[0] == str(package / "cli" / "__init__.py")  # the installed copy, not the checkout
    assert "2,819,340,864 parameters" in run.stdout and run.stdout.count("\nstage ") == 7
    assert (package / "configs" / "example_run.yaml").is_file()


def test_every_user_error_is_one_line_and_a_bug_keeps_its_traceback(tmp_path, capsys):
    """One hierarchy: each error class a user can cause is a MegaeeveError (keeping its builtin base), every
    command's main turns it, or a file-system OSError, into one `error:` line; anything else propagates."""
    import importlib
    import inspect
    import pkgutil

    import megaeeve
    from megaeeve.cli import merge_datasets
    from megaeeve.errors import MegaeeveError, one_line_errors

    classes = {}
    for info in pkgutil.walk_packages(megaeeve.__path__, "megaeeve."):
        if info.name.startswith("megaeeve.cli") or info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        classes.update({obj.__name__: obj for _, obj in inspect.getmembers(module, inspect.isclass)
                        if issubclass(obj, Exception) and obj.__module__ == info.name})
    assert len(classes) >= 15 and not [n for n, c in classes.items() if not issubclass(c, MegaeeveError)]
    for command, (module, _) in COMMANDS.items():
        entry = importlib.import_module(f"megaeeve.cli.{module}").main
        assert getattr(entry, "__wrapped__", None) is not None or module == "train", command

    assert merge_datasets.main(["--input", str(tmp_path / "none"), "--output-prefix", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "none" in err[0]

    @one_line_errors
    def fails(error: Exception) -> int:
        raise error

    assert fails(PermissionError(13, "Permission denied", str(tmp_path / "ro"))) == 2
    assert capsys.readouterr().err == f"error: [Errno 13] Permission denied: '{tmp_path / 'ro'}'\n"
    with pytest.raises(KeyError):
        fails(KeyError("a bug"))


@pytest.mark.parametrize("flag, value, rule", [("--fit-english-samples", "0", "must be positive"),
                                               ("--fit-samples", "0", "must be positive"),
                                               ("--fit-output-rank", "-1", "must be >= 0")])
def test_extend_refuses_a_bad_fit_count_before_any_work(tmp_path, capsys, flag, value, rule):
    """The numbers of `--init fit` are checked when the command line is read, naming the flag and the value,
    not after the base model was loaded (paths that do not exist prove nothing was opened)."""
    missing = str(tmp_path / "absent")
    with pytest.raises(SystemExit) as done:
        main(["extend", "--base-model", missing, "--base-tokenizer", missing, "--tokenizer", missing,
              "--output", str(tmp_path / "out"), flag, value])
    assert done.value.code == 2 and f"{flag} {rule}, got {value}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
