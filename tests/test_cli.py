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
