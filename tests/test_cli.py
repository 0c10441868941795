"""The `covr` command line: every command listed with a one-line help; errors are clean."""

from __future__ import annotations

import subprocess
import sys

from covr_ray.bench import BENCHES
from covr_ray.cli import COMMANDS, main


def _covr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "covr_ray.cli", *args], capture_output=True, text=True,
                          timeout=300)


def test_help_lists_every_command_with_its_line():
    proc = _covr("--help")
    assert proc.returncode == 0
    for name, (_module, help_text) in COMMANDS.items():
        assert name in proc.stdout
        assert help_text[:30] in " ".join(proc.stdout.split())


def test_every_registered_module_has_the_command_interface():
    import importlib

    for module, _help in list(COMMANDS.values()) + list(BENCHES.values()):
        mod = importlib.import_module(module)
        assert callable(mod.add_arguments) and callable(mod.run), module


def test_presets_command_lists_all_presets(capsys):
    from covr_ray.config import available_presets

    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in available_presets():
        assert name in out


def test_config_error_exits_2_and_names_the_field():
    proc = _covr("config", "--preset", "smoke", "--set", "sac.lam=-3")
    assert proc.returncode == 2
    assert "sac.lam" in proc.stderr and "-3" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_config_prints_resolved_yaml():
    import yaml

    proc = _covr("config", "--preset", "carla-gp", "--set", "seed=3")
    assert proc.returncode == 0, proc.stderr
    data = yaml.safe_load(proc.stdout)
    assert data["seed"] == 3 and data["env"]["name"] == "carla-gp" and data["sac"]["lam"] == 2.0
