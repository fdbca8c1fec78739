"""What the explorer exposes when served: checkpoints only under its runs folder, and the upload limit it is given."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from vitlab.errors import CheckpointError, UsageError
from vitlab.explorer import __main__ as explorer_command
from vitlab.explorer.runs_folder import runs_folder
from vitlab.explorer.sources import list_runs, resolve_checkpoint
from vitlab.explorer.uploads import MAX_UPLOAD_BYTES

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300  # seconds per AppTest run: the first loads a model, and the CPU may be shared


@pytest.fixture
def places(tmp_path: Path, demo_cache: Path) -> dict[str, Path]:
    """runs/demo (a real run), a run outside runs/, and links from inside runs/ to it."""
    runs, outside = tmp_path / "runs", tmp_path / "elsewhere"
    shutil.copytree(demo_cache / "demo", runs / "demo")
    shutil.copytree(demo_cache / "demo", outside / "secret_run")
    (runs / "link_out").symlink_to(outside / "secret_run", target_is_directory=True)
    (runs / "half").mkdir()
    (runs / "half" / "best.pt").symlink_to(outside / "secret_run" / "best.pt")
    (runs / "link_in").symlink_to(runs / "demo", target_is_directory=True)  # stays inside: allowed
    return {"runs": runs, "outside": outside, "tmp": tmp_path}


def test_paths_under_the_runs_folder_resolve_to_their_checkpoint(places, monkeypatch):
    runs = places["runs"]
    monkeypatch.chdir(places["tmp"])
    best = runs / "demo" / "best.pt"
    for typed in ("demo", "runs/demo", str(runs / "demo"), str(best), "demo/best.pt", "link_in", "demo/../demo"):
        assert resolve_checkpoint(typed, root=Path("runs")).resolve() == best.resolve(), typed


@pytest.mark.parametrize("typed", [
    "../elsewhere/secret_run", "runs/../elsewhere/secret_run", "{outside}/secret_run", "{outside}/secret_run/best.pt",
    "link_out", "half", "half/best.pt", "/etc/passwd", "/", "..", "../runs/../elsewhere/secret_run/best.pt",
    "/no/such/file.pt",
])
def test_paths_outside_the_runs_folder_are_refused_with_a_message(typed, places, monkeypatch):
    monkeypatch.chdir(places["tmp"])
    typed = typed.format(outside=places["outside"])
    with pytest.raises(CheckpointError, match="outside the runs folder runs: the explorer reads checkpoints only"):
        resolve_checkpoint(typed, root=Path("runs"))


def test_a_missing_run_inside_the_folder_says_it_is_missing(places):
    with pytest.raises(CheckpointError, match="No checkpoint at"):
        resolve_checkpoint("not_trained_yet", root=places["runs"])


def test_the_run_list_leaves_out_links_that_lead_out(places):
    listed = {run.name for run in list_runs(places["runs"])}
    assert listed == {"demo", "link_in"}  # not link_out (a folder outside), not half (its best.pt is outside)


def test_without_a_runs_folder_the_library_reads_any_path(places):
    """Library callers (and lessons) are not fenced: only the app passes its runs folder."""
    secret = places["outside"] / "secret_run"
    assert resolve_checkpoint(secret) == secret / "best.pt"


@pytest.mark.parametrize(("argv", "expected"), [
    ([], "runs"), (["--runs", "/srv/vit-runs"], "/srv/vit-runs"), (["--runs=class"], "class"),
])
def test_the_runs_folder_comes_from_the_apps_own_arguments(argv, expected):
    assert runs_folder(argv) == Path(expected)


@pytest.mark.parametrize(("argv", "named"), [
    (["--run", "x"], "does not take --run x"),  # no abbreviations: a typo is refused, not the default folder served
    (["-q", "tests/test_app.py", "--runs", "other"], "does not take -q tests/test_app.py"),
    (["--runs", ""], "--runs is empty"), (["--runs", "  "], "--runs is empty"),  # it would fence the whole folder
    (["--runs"], "expected one argument; for example --runs runs"),
])
def test_anything_but_runs_dir_is_refused_in_one_line(argv, named):
    with pytest.raises(UsageError, match=named) as refused:
        runs_folder(argv)
    assert "\n" not in str(refused.value)


def test_the_app_started_with_a_wrong_flag_says_so_and_loads_nothing(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["streamlit_app.py", "--run", "class_runs"])
    app = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=TIMEOUT).run()
    assert not app.exception and len(app.error) == 1 and "does not take --run class_runs" in app.error[0].value
    assert not app.sidebar.caption  # stopped before the model was chosen or loaded


def test_python_m_vitlab_explorer_says_how_to_open_the_page_and_takes_only_help(capsys):
    assert explorer_command.main([]) == 0
    assert "streamlit run streamlit_app.py" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        explorer_command.main(["--help"])
    assert done.value.code == 0 and "streamlit run streamlit_app.py" in capsys.readouterr().out
    assert explorer_command.main(["--bench"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == ["vitlab: unrecognized arguments: --bench; see python -m vitlab.explorer --help for "
                                "every flag."]


def test_streamlit_started_from_the_repository_reads_the_projects_config(tmp_path):
    """As documented (streamlit run, from the repository root): the upload cap is vitlab's own, no statistics."""
    env = {**os.environ, "HOME": str(tmp_path)}  # no personal ~/.streamlit/config.toml in the way
    shown = subprocess.run([sys.executable, "-m", "streamlit", "config", "show"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120).stdout
    values = dict(re.findall(r"^(\w+) = (.+)$", shown, flags=re.MULTILINE))
    assert values["maxUploadSize"] == str(MAX_UPLOAD_BYTES // 2**20)  # the browser's limit = vitlab's: 25 (MB)
    assert values["gatherUsageStats"] == "false"
    assert values["address"] == '"127.0.0.1"'  # reachable from this machine only, unless opened on purpose
    assert values["showErrorDetails"] == '"none"'  # no tracebacks with server paths in students' browsers
    # A hidden option (config show leaves it out): read as streamlit reads it. False: no 0.16 s gc.collect() after
    # every slider move (Python's own collector still runs).
    read = "import streamlit.config as c; c.get_config_options(); print(c.get_option('runner.postScriptGC'))"
    gc_after_run = subprocess.run([sys.executable, "-c", read], cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=120).stdout.strip()
    assert gc_after_run == "False"


def test_the_app_refuses_a_typed_path_outside_its_runs_folder(places, monkeypatch):
    monkeypatch.chdir(places["tmp"])
    monkeypatch.setenv("TORCH_HOME", str(places["tmp"] / "torch"))
    monkeypatch.setattr(sys, "argv", ["streamlit_app.py", "--runs", str(places["runs"])])
    app = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=TIMEOUT).run()
    app.selectbox(key="model_source").set_value("checkpoint").run()
    assert set(app.selectbox(key="run_choice").options) == {"(choose a run)", *(
        str(places["runs"] / name) for name in ("demo", "link_in"))}
    secret = places["outside"] / "secret_run" / "best.pt"
    for typed in (str(secret), "../elsewhere/secret_run", "link_out"):
        app.text_input(key="checkpoint_path").set_value(typed).run()
        assert not app.exception, [e.message for e in app.exception]
        assert len(app.error) == 1 and "outside the runs folder" in app.error[0].value, [e.value for e in app.error]
    app.text_input(key="checkpoint_path").set_value("demo").run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    assert f"Checkpoint {places['runs'] / 'demo' / 'best.pt'}" in " ".join(c.value for c in app.sidebar.caption)
