"""The wheel installs next to any app: unique import names, a light recorder, real Kafka.

The wheel is built from this checkout and installed, without its dependencies, into a fresh venv
that borrows the dependencies from the project's venv (a ``.pth`` line: site directories added
that way do not run the project's own editable-install hook, so only the wheel provides our
packages). An app with its own ``schemas``, ``analyzer`` and ``streams`` modules then records a
query to the real broker.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

from fraiseql_observability.config import KafkaSettings

from .fix_kafka import consume_all
from .query_events import events_of

REPO = Path(__file__).resolve().parent.parent
OUR_TOP_LEVEL = {
    "fraiseql_observability", "fraiseql_obs_producers", "fraiseql_obs_streams", "fraiseql_obs_sinks",
    "fraiseql_obs_analyzer", "fraiseql_obs_app", "fraiseql_obs_schemas",
}
# What an API process that only records must not load (SPEC: the recorder is light).
HEAVY = ("psycopg", "psycopg_pool", "croniter", "fraiseql_obs_analyzer", "fraiseql_obs_sinks",
         "fraiseql_obs_streams", "fraiseql_obs_app", "fraiseql_obs_producers.loadgen",
         "fraiseql_obs_producers.workload", "fraiseql_obs_producers.execute",
         "fraiseql_obs_producers.appdb", "fraiseql_obs_producers.table_stats",
         "fraiseql_obs_producers.table_snapshot")

APP = '''
import json, sys
import schemas, analyzer, streams          # the app's own modules, named like our folders
from fraiseql_observability.config import load_settings
from fraiseql_obs_producers import Recorder

recorder = Recorder(load_settings("fraiseql.toml")).start()
kept = recorder.record(query_name="orders", sql="SELECT data FROM tv_order WHERE id = $1",
                       execution_time_ms=3.5, sql_generation_time_ms=0.1,
                       db_round_trip_time_ms=3.0, projection_time_ms=0.4, rows_returned=1,
                       cache_hit=False)
dropped = recorder.close(timeout=30)
heavy = sorted(m for m in sys.modules if m.startswith(HEAVY))
print(json.dumps({"kept": kept, "dropped": dropped, "heavy": heavy,
                  "own": [schemas.OWN, analyzer.OWN, streams.OWN]}))
'''


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(out), str(REPO)], check=True, cwd=out)
    (built,) = out.glob("fraiseql_observability-*.whl")
    return built


def test_wheel_holds_only_our_import_names(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == OUR_TOP_LEVEL
    for package in OUR_TOP_LEVEL - {"fraiseql_obs_schemas"}:
        assert f"{package}/py.typed" in names
    assert "fraiseql_obs_schemas/query_event.avsc" in names
    assert any(n.startswith("fraiseql_observability/metricsdb/migrations/0001_") for n in names)


@pytest.mark.kafka
@pytest.mark.slow
def test_app_with_colliding_module_names_records_an_event(
    wheel: Path, tmp_path: Path, kafka_settings: KafkaSettings
) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "borrowed-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--target", site, str(wheel)], check=True)

    app = tmp_path / "app"
    app.mkdir()
    (app / "schemas.py").write_text("OWN = 'schemas'\nSCHEMA_DIR = None\n")
    (app / "analyzer.py").write_text("OWN = 'analyzer'\n")
    (app / "streams").mkdir()
    (app / "streams" / "__init__.py").write_text("OWN = 'streams'\n")
    (app / "fraiseql.toml").write_text(textwrap.dedent(f"""
        [observability]
        enabled = true
        sample_rate = 1.0
        [observability.metrics]
        flush_interval_secs = 0.2
        [observability.kafka]
        bootstrap_servers = "{kafka_settings.bootstrap_servers}"
        region = "app-region"
        events_topic = "{kafka_settings.events_topic}"
    """))
    (app / "main.py").write_text(f"HEAVY = {HEAVY!r}\n" + APP)
    run = subprocess.run([str(python), "main.py"], cwd=app, capture_output=True, text=True, check=False,
                         timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result == {"kept": True, "dropped": 0, "heavy": [], "own": ["schemas", "analyzer", "streams"]}

    messages = consume_all(kafka_settings.bootstrap_servers, kafka_settings.events_topic, expected=1)
    assert len(messages) == 1
    # Batched by default (SPEC §3): one QueryEventBatch message holding the one event.
    events = events_of(messages[0][1])
    assert len(events) == 1
    event = events[0]
    assert (event["query_name"], event["region"], event["rows_returned"]) == ("orders", "app-region", 1)
