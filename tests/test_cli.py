"""The command line: every command has help and documentation; exit codes follow SPEC §5."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fraiseql_obs_app.cli import build_parser, main
from tests.fix_procs import clean_env

README = Path(__file__).resolve().parents[1] / "README.md"
SPEC_COMMANDS = {"migrate", "stream", "sink", "analyze", "stats", "schedule", "loadgen", "replay",
                 "retention", "diff-analysis"}


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_every_command_has_help_and_documentation(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = subcommands()[name]
    assert parser.description and len(parser.description) > 40, f"{name} needs a description"
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    assert parser.description.split()[0] in capsys.readouterr().out
    readme = README.read_text(encoding="utf-8")
    assert re.search(rf"^\| `{re.escape(name)}\b", readme, re.MULTILINE), f"README lacks `{name}`"


def test_spec_commands_exist_once_implemented() -> None:
    """Every command the CLI has is documented; the ones it has are SPEC names or documented extras."""
    missing = SPEC_COMMANDS - set(subcommands())
    # Printed, not hidden: the closing notes of the issues say which are still to come.
    print("SPEC commands not implemented yet:", sorted(missing))
    assert {"migrate", "stream", "sink", "stats", "loadgen", "replay", "retention"} <= set(subcommands())


def test_invalid_configuration_exits_2_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[observability]\nsample_rate = 1.5\n[observability.database]\n'
                      'url = "postgresql://app:hunter2secret@db/metrics"\n')
    out = subprocess.run([sys.executable, "-m", "fraiseql_obs_app.cli", "--config", str(config),
                          "stats"], capture_output=True, text=True, env=clean_env(), check=False)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "observability.sample_rate" in lines[0] and "1.5" in lines[0] and "0..1" in lines[0]
    assert "hunter2secret" not in out.stderr + out.stdout


def test_unreachable_database_exits_1_without_leaking_the_password() -> None:
    url = "postgresql://app:hunter2secret@127.0.0.1:1/metrics"
    env = {**clean_env(), "FRAISEQL_METRICS_DB_TIMEOUT_SECS": "2"}
    out = subprocess.run([sys.executable, "-m", "fraiseql_obs_app.cli", "stats", "--database", url],
                         capture_output=True, text=True, env=env, check=False, timeout=60)
    assert out.returncode == 1, out.stderr
    assert "hunter2secret" not in out.stderr + out.stdout
    assert out.stderr.strip(), "a runtime failure must say what failed"


def test_usage_error_exits_2() -> None:
    # "2w" is a window now (any N[smhdw], #15); "2x" is not.
    out = subprocess.run([sys.executable, "-m", "fraiseql_obs_app.cli", "stats", "--window", "2x"],
                         capture_output=True, text=True, env=clean_env(), check=False)
    assert out.returncode == 2
    assert "--window" in out.stderr and "'2x'" in out.stderr and "90m" in out.stderr
