"""docs/extending.md, run: every command and code block of the page, in its order, in a copy of
the repository (so the page's model file and registry line can be added), on twenty 16x16 pairs
written as a user's folder, with the tiny sizes of conftest.FAST."""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

from pathlib import Path

import nbformat
import pandas as pd
import pytest

from conftest import FAST, REPO
from test_data import write_pair_folder

PAGE = REPO / "docs" / "extending.md"
COPY_IGNORES = shutil.ignore_patterns(".git", ".venv", "data", "runs", "results", "__pycache__",
                                      ".pytest_cache", "predictions")
# what makes each tool tiny and quiet here: appended to the page's commands (a later flag wins); the page's
# batch size is kept, since it must suit the twenty pairs as typed
FAST_SIZES = [word for i, word in enumerate(FAST) if "--batch-size" not in (word, FAST[i - 1])]
TEST_FLAGS = {"train.py": [*FAST_SIZES, "--no-progress", "--epochs", "1"],
              "produce_scores.py": ["--device", "cpu", "--no-progress"],
              "predict.py": ["--device", "cpu"],
              "data_scripts/import_folder.py": ["--no-progress"],
              "data_scripts/show_samples.py": [],
              "launch.py": [*FAST_SIZES, "--no-progress", "--epochs", "1"],  # after the page's `--`: train.py's
              "-m analysis tables": [],
              "-m analysis waves": ["--n", "2", "--split", "test"],
              "jupyter nbconvert": []}  # WAVES_QUICK=1 makes the notebooks small


def blocks(text):
    """(language, body) of every fenced code block, in order."""
    return re.findall(r"^```(\w+)\n(.*?)^```", text, flags=re.S | re.M)


def add_to_registry(repo, lines):
    """The page's registry lines put where it says: imports after the last import, entries at the end of _REGISTRY."""
    path = repo / "models" / "__init__.py"
    source = path.read_text().splitlines()
    last_import = max(i for i, line in enumerate(source) if line.startswith("from ."))
    registry_end = source.index("}", next(i for i, line in enumerate(source) if line.startswith("_REGISTRY = {")))
    entries = [line for line in lines if line.startswith(" ")]
    imports = [line for line in lines if line.startswith("from ")]
    assert len(entries) + len(imports) == len(lines), lines
    source[registry_end:registry_end] = entries
    source[last_import + 1:last_import + 1] = imports
    path.write_text("\n".join(source) + "\n")


def run_page_command(line, repo):
    """Runs one command of the page (VAR=value words first, as a shell takes them) with its TEST_FLAGS."""
    words = shlex.split(line)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAVES_")}  # the defaults, as for a user
    while "=" in words[0]:
        env.update([words.pop(0).split("=", 1)])
    tool = " ".join(words[1:4]) if words[1] == "-m" else words[1] if words[0] == "python" else " ".join(words[:2])
    assert words[0] in ("python", "jupyter") and tool in TEST_FLAGS, f"docs/extending.md: no test flags for {line}"
    program = [sys.executable] if words[0] == "python" else [str(Path(sys.executable).parent / "jupyter")]
    run = subprocess.run([*program, *words[1:], *TEST_FLAGS[tool]], cwd=repo, env=dict(env, WAVES_QUICK="1"),
                         capture_output=True, text=True)
    assert run.returncode == 0, f"{line}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run.stdout


@pytest.mark.slow
def test_every_command_of_docs_extending_md(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(REPO, repo, ignore=COPY_IGNORES)
    (repo / ".venv").symlink_to(Path(sys.executable).parents[1])  # the launcher's runs use the repo's interpreter
    write_pair_folder(repo / "my_folder")
    commands = []
    for language, body in blocks(PAGE.read_text()):
        lines = body.strip().splitlines()
        if language == "bash":
            for line in lines:
                commands.append(line)
                run_page_command(line, repo)
        elif language == "python" and lines[0] == "# models/heat.py":
            (repo / "models" / "heat.py").write_text(body)
        elif language == "python" and lines[0].startswith("# models/__init__.py"):
            add_to_registry(repo, lines[1:])
    assert [c.split()[1] for c in commands] == [
        "data_scripts/import_folder.py", "data_scripts/show_samples.py", "train.py", "produce_scores.py", "predict.py",
        "train.py", "produce_scores.py", "predict.py", "launch.py", "produce_scores.py", "-m", "-m",
        "WAVES_SCORES=runs/scores.csv"]

    meta = json.loads((repo / "data" / "my_shapes" / "dataset.json").read_text())
    assert meta["split_sizes"] == {"train": 16, "val": 2, "test": 2} and meta["class_names"][2] == "large"
    assert (repo / "my_shapes_samples.png").is_file()
    for run in ("nwm", "heat"):
        config = json.loads((repo / "runs" / "my_shapes" / run / "config.json").read_text())
        assert config["dataset"] == "my_shapes" and config["model"] == run
        assert (repo / "runs" / "my_shapes" / run / "test_metrics.json").is_file()
    scores = pd.read_csv(repo / "runs" / "scores.csv")
    grid = {f"my_shapes/{model}-linear-T8-h2-seed{seed}" for model in ("nwm", "heat") for seed in (0, 1)}
    assert set(scores["run"].dropna()) == {"my_shapes/nwm", "my_shapes/heat"} | grid  # one run per seed, scored
    assert set(scores.loc[scores["run"].notna(), "evaluated"]) == {"re-evaluated"}
    assert all(label.startswith("imported, sha256 ") for label in scores["data"])
    assert (repo / "predictions" / "img02_mask.png").is_file() and (repo / "predictions" / "img02_panel.png").is_file()
    assert (repo / "predictions" / "heat" / "img02_waves.gif").is_file()
    table = (repo / "runs" / "tables" / "scores.md").read_text()
    assert "my_shapes" in table and "background only" in table and "heat" in table
    waves = pd.read_csv(repo / "runs" / "tables" / "waves.csv")
    assert set(waves["run"]) == {"my_shapes/nwm", "my_shapes/heat"} | grid  # the notebook's, every recurrent run
    assert (repo / "runs" / "sounds" / "my_shapes_heat-small.wav").is_file()
    for name in ("scores_tables", "wave_analysis", "wave_animations"):  # the notebooks, run on the user's runs
        outputs = [o for cell in nbformat.read(repo / "runs" / "notebooks" / f"{name}.ipynb", as_version=4).cells
                   for o in cell.get("outputs", [])]
        assert not any(o["output_type"] == "error" for o in outputs), name
        assert any("image/png" in o.get("data", {}) for o in outputs), name
        text = "".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
        assert name != "wave_analysis" or "runs/my_shapes/heat" in text  # the user's recurrent runs were measured
    assert (repo / "runs" / "figures" / "scores_my_shapes.png").is_file()
    assert {p.name.split("-")[0] for p in (repo / "runs" / "figures" / "animations").glob("*.gif")} == {
        "my_shapes_nwm", "my_shapes_heat"}
    assert not (REPO / "models" / "heat.py").exists()  # the model went into the copy only



def test_an_imported_dataset_under_another_data_root_trains_and_its_model_loads_without_the_data(tmp_path):
    """--data-root reaches imported datasets as it does the built-in ones, and a trained run records its class
    names and image size, so pretrained.load and predict.py need no data at all."""
    import pretrained
    import train
    from data_scripts import import_folder
    write_pair_folder(tmp_path / "my_folder")
    root = tmp_path / "elsewhere"
    import_folder.main([str(tmp_path / "my_folder"), "--name", "my_shapes", "--data-root", str(root), "--no-progress"])
    train.main(["--dataset", "my_shapes", "--data-root", str(root), "--runs-root", str(tmp_path / "runs"),
                "--run-name", "r", "--no-progress", *FAST_SIZES, "--batch-size", "8", "--epochs", "1"])
    shutil.rmtree(root)
    model = pretrained.load(tmp_path / "runs" / "r")
    assert model.class_names == ("background", "small", "large") and model.image_size == (16, 16)
    with pytest.raises(SystemExit) as refused:  # and a name no data root holds is refused before any work
        train.main(["--dataset", "my_shapes", "--data-root", str(root), "--runs-root", str(tmp_path / "runs"),
                    "--run-name", "s"])
    assert refused.value.code == 2 and not (tmp_path / "runs" / "s").exists()
