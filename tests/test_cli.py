"""The `mtlrec` entry point and the config loader, driven as a user would."""
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import Config, ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
MTLREC = Path(sys.executable).parent / "mtlrec"  # the installed console script


def run_cli(*args, cwd=REPO):
    return subprocess.run([str(MTLREC), *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_help_lists_subcommands():
    result = run_cli("--help")
    assert result.returncode == 0
    for name in ("preprocess", "train", "evaluate", "compare", "synthetic"):
        assert name in result.stdout


def test_bad_set_key_is_rejected_with_its_name():
    result = run_cli("train", "--set", "model.gate.bogus=1")
    assert result.returncode == 2
    assert "unknown key model.gate.bogus" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_wrong_type_is_rejected_with_its_name():
    result = run_cli("train", "--set", "model.num_experts=many")
    assert result.returncode == 2
    assert "model.num_experts" in result.stderr and "integer" in result.stderr


def test_bad_yaml_key_names_the_file(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  num_expert: 4\n")
    result = run_cli("train", "--config", str(config))
    assert result.returncode == 2
    assert str(config) in result.stderr and "model.num_expert" in result.stderr


def test_default_yaml_matches_code_defaults():
    assert load_config(REPO / "configs" / "default.yaml") == Config()


def test_set_overrides_and_gate_switch():
    config = load_config(None, ["model.gate.type=topk", "model.gate.k=3", "model.num_experts=16"])
    assert config.model.gate.type == "topk" and config.model.gate.k == 3
    assert config.model.num_experts == 16
    with pytest.raises(ConfigError, match="model: gate.k=20 exceeds num_experts=16"):
        load_config(None, ["model.num_experts=16", "model.gate.k=20"])
    with pytest.raises(ConfigError, match="unknown gate type 'nope'"):
        load_config(None, ["model.gate.type=nope"])


def test_invalid_yaml_names_file_and_line(tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("model:\n  num_experts: [1,\n")
    with pytest.raises(ConfigError, match=r"broken.yaml:\d+: invalid YAML"):
        load_config(config)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_yaml_round_trip(tmp_path):
    config = load_config(None, ["model.gate.type=softmax", "model.expert_units=[32, 16]"])
    path = tmp_path / "dump.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    assert load_config(path) == config


@pytest.mark.parametrize("command", [["evaluate"], ["export"], ["export", "--sparse"]])
def test_run_commands_on_a_folder_that_is_not_a_trained_run_say_what_to_pass(tmp_path, capsys, command):
    """Every --run command, given an empty folder, a data folder, a missing folder or an unfinished run:
    one line naming the folder, why it is not a run, and what to pass instead; nothing written."""
    from pipeline import cli
    instead = ("pass a run folder written by `mtlrec train`, e.g. <workdir>/models/default or "
               "<workdir>/compare/<variant>/seed<k>")
    (tmp_path / "empty").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.json").write_text("{}")
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "config.yaml").write_text("{}")
    expected = {"empty": f"not a run folder (no train.json); {instead}",
                "data": f"not a run folder (no train.json); {instead}",
                "missing": f"no such run folder (no train.json); {instead}",
                "unfinished": "its training has not finished (no train.json); run `mtlrec train` with the same "
                              f"settings to finish it, or {instead}"}
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for name, why in expected.items():
        folder = tmp_path / name
        assert cli.main([command[0], "--run", str(folder), *command[1:]]) == 2
        assert capsys.readouterr().err == f"mtlrec {command[0]}: error: {folder}: {why}\n"
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no lock file beside them either


def test_version_is_the_installed_one():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"mtlrec {importlib.metadata.version('mtlrec')}"


def test_version_from_a_checkout_is_pyprojects(monkeypatch):
    from pipeline import cli

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert cli.version() == re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)


def test_config_prints_the_defaults_from_code(tmp_path):
    result = run_cli("config")
    assert result.returncode == 0 and result.stderr == ""
    dumped = tmp_path / "defaults.yaml"
    dumped.write_text(result.stdout)
    assert load_config(dumped) == Config()
    assert yaml.safe_load(result.stdout)["model"]["gate"]["type"] == "dselect_k"


def test_config_resolves_file_then_set_and_loads_back(tmp_path):
    settings = tmp_path / "mine.yaml"
    settings.write_text("model:\n  num_experts: 6\n  gate: {type: topk, k: 3}\ntrain:\n  epochs: 9\n")
    result = run_cli("config", "--config", str(settings), "--set", "train.epochs=2", "--set", "workdir=/tmp/w")
    assert result.returncode == 0
    resolved = yaml.safe_load(result.stdout)
    assert resolved["model"]["num_experts"] == 6 and resolved["model"]["gate"]["k"] == 3
    assert resolved["train"]["epochs"] == 2 and resolved["workdir"] == "/tmp/w"
    assert resolved["data"]["source"] == "embedded"  # untouched: the default
    dumped = tmp_path / "resolved.yaml"
    dumped.write_text(result.stdout)
    assert load_config(dumped) == load_config(settings, ["train.epochs=2", "workdir=/tmp/w"])
    again = run_cli("config", "--config", str(dumped))
    assert again.returncode == 0 and again.stdout == result.stdout  # a resolved config is a fixed point


def test_config_rejects_bad_keys_like_every_subcommand(tmp_path):
    result = run_cli("config", "--set", "model.gate.bogus=1")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == ["mtlrec config: config error: --set: unknown key model.gate.bogus"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epoch: 3\n")
    result = run_cli("config", "--config", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"mtlrec config: config error: {bad}: unknown key train.epoch"]


def test_config_help_names_where_the_defaults_are():
    text = " ".join(run_cli("train", "--help").stdout.split())
    assert "configs/default.yaml" not in text and "`mtlrec config` prints all" in text


def test_exponent_notation_is_a_number(tmp_path):
    """YAML 1.1 (PyYAML) reads 1e-3 as a string; the config reads it as the number it is, in both places."""
    assert load_config(None, ["train.learning_rate=1e-3"]).train.learning_rate == 0.001
    config = tmp_path / "lr.yaml"
    config.write_text("train:\n  learning_rate: 1e-4\nmodel:\n  gate: {type: dselect_k, entropy_weight: 2E-2}\n")
    loaded = load_config(config)
    assert loaded.train.learning_rate == 1e-4 and loaded.model.gate.entropy_weight == 0.02
    with pytest.raises(ConfigError, match="model.num_experts"):  # an int field still wants an int
        load_config(None, ["model.num_experts=1e1"])


@pytest.mark.slow
def test_interrupt_ends_with_one_line_and_the_rerun_resumes(embedded_data, tmp_path):
    """SIGINT (Ctrl-C) at any point ends the run at once with one line and no traceback; running
    the same command again resumes it (issue 14: once in 5 tries a SIGINT had no effect)."""
    import signal
    import time
    data_dir, _ = embedded_data
    args = ["train", "--set", f"train.data={data_dir}", "--set", f"train.run_dir={tmp_path / 'run'}",
            "--set", "train.epochs=40", "--set", "train.steps_per_epoch=5", "--set", "train.early_stopping_patience=0"]
    for wait_for in (None, "Epoch 2/40", "Epoch 3/40"):  # importing TensorFlow, then in the middle of training
        process = subprocess.Popen([str(MTLREC), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output = []
        if wait_for is None:
            time.sleep(3.0)
        else:
            for line in process.stdout:
                output.append(line)
                if wait_for in line:
                    break
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        output += process.stdout.readlines()
        assert process.wait(timeout=120) == 130 and time.monotonic() - started < 120  # not a hang
        assert output[-1].strip() == "mtlrec train: interrupted; rerun the same command to resume", output[-5:]
        assert not any("Traceback" in line for line in output)
    progress = json.loads((tmp_path / "run" / "state" / "progress.json").read_text())
    assert progress["epoch"] >= 2  # the interrupted runs kept their completed epochs
