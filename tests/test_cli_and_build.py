"""build_info() and the command line (python -m ekinet info / demo)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import ekinet

PACKAGE_PARENT = str(Path(ekinet.__file__).resolve().parent.parent)


def _env():
    """The current environment, with the directory ekinet was imported from first on PYTHONPATH (so the
    subprocess imports the same package, source tree or installed)."""
    env = dict(os.environ)
    paths = [PACKAGE_PARENT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def _run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "ekinet", *args], capture_output=True, text=True, env=_env(),
                          timeout=timeout)


def test_build_info():
    info = ekinet.build_info()
    assert info["version"] == ekinet.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", info["version"])
    assert isinstance(info["cuda"], bool)
    assert isinstance(info["blas"], str) and info["blas"]
    assert isinstance(info["compiler"], str) and info["compiler"]
    assert isinstance(info["cuda_devices"], int) and info["cuda_devices"] >= 0
    if info["cuda"]:
        assert info["cuda_version"]
    else:  # a CPU-only build sees no devices and names no toolkit
        assert info["cuda_devices"] == 0
        assert info["cuda_version"] == ""


def test_cli_info_prints_json():
    result = _run("info")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    expected = ekinet.build_info()
    for key in ("version", "cuda", "blas", "compiler", "cuda_devices"):
        assert printed[key] == expected[key]


def test_cli_demo_recovers_the_oscillator_parameters():
    result = _run("demo", "--ensemble", "50", "--iterations", "8", "--no-progress")
    assert result.returncode == 0, result.stderr
    estimates = {}
    for line in result.stdout.splitlines():
        match = re.match(r"\s*(omega|zeta)\s+([-\d.eE+]+)\s+([-\d.eE+]+)\s+([-\d.eE+]+)", line)
        if match:
            estimates[match.group(1)] = (float(match.group(2)), float(match.group(3)))
    assert set(estimates) == {"omega", "zeta"}, result.stdout
    assert estimates["omega"][0] == 2.0 and estimates["zeta"][0] == 0.15  # the truth column
    assert estimates["omega"][1] == pytest.approx(2.0, rel=0.1)
    assert estimates["zeta"][1] == pytest.approx(0.15, rel=0.1)
    misfit = re.search(r"misfit: ([\d.eE+-]+) at the start -> ([\d.eE+-]+) before the last", result.stdout)
    assert misfit and float(misfit.group(2)) < 0.1 * float(misfit.group(1))
    assert "it/s" not in result.stderr  # --no-progress hides the bar


@pytest.mark.parametrize("value,message", [("0", r"'0' is not a positive integer"),
                                           ("1", r"--ensemble must be at least 2"),
                                           ("ten", r"argument --ensemble: 'ten' is not a positive integer")])
def test_cli_demo_rejects_a_bad_ensemble_size(value, message):
    result = _run("demo", "--ensemble", value, "--no-progress")
    assert result.returncode != 0
    assert re.search(message, result.stderr), result.stderr
    assert "Traceback" not in result.stderr


def test_cli_needs_a_command():
    result = _run()
    assert result.returncode != 0
    assert "info" in result.stderr and "demo" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_main_in_process(capsys):
    from ekinet import cli

    assert cli.main(["info"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == ekinet.__version__
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--iterations", "0"])
    assert exit_info.value.code != 0
    assert "not a positive integer" in capsys.readouterr().err


def test_cli_refuses_bad_values_and_unwritable_outputs_before_training(capsys, tmp_path):
    """Option values name the option and what was expected; an output path that cannot be written (a file
    where a directory is needed, a directory where a file is) fails before any training, not after it."""
    from ekinet import cli

    for argv, message in ((["train", "--ensemble", "abc"], "argument --ensemble: 'abc' is not a positive integer"),
                          (["train", "--seed", "-1"], "argument --seed: '-1' is not a non-negative integer seed"),
                          (["train", "--step", "nan"], "argument --step: 'nan' is not a positive number")):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for argv, message in (
            (["experiment", "quickstart", "--smoke", "--checkpoints", str(a_file)], "checkpoints = .* is a file"),
            (["experiment", "quickstart", "--smoke", "--out", str(a_file)], "out = .* is a file"),
            (["train", "--history", str(tmp_path)], "--history .* is a directory"),
            (["train", "--plot", str(tmp_path / "curves.xyz")], "--plot .*: the extension must name an image format"),
            (["train", "--checkpoint", str(tmp_path)], "checkpoint = .* is a directory")):
        assert cli.main([*argv, "--no-progress"]) == 2
        assert re.search(f"^ekinet {argv[0]}: {message}", capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing trained, nothing written


def test_cli_says_when_train_size_exceeds_the_data(capsys):
    from ekinet import cli

    assert cli.main(["train", "--train-size", "999999", "--ensemble", "4", "--epochs", "1", "--batch-size", "500",
                     "--no-progress"]) == 0
    assert re.search(r"--train-size 999999 exceeds the \d+ training examples of mnist-small; using all of them",
                     capsys.readouterr().err)
