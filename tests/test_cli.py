"""The command-line conventions of cli.py: the flags the entry scripts share are cli's, with one help
text each, in every script."""
import argparse
import re
import subprocess
import sys

import pytest

import animate
import bench
import cli
import predict
import produce_scores
import settings
import train
from analysis import __main__ as analysis_cli
from conftest import REPO
from data_scripts import common, show_samples, verify_datasets
from dataset_config import get_info

SHARED = {"--data-root": cli.add_data_root, "--runs-root": cli.add_runs_root, "--device": cli.add_device,
          "--threads": cli.add_threads, "--no-progress": cli.add_progress}


def analysis_waves_parser():
    commands, = (a for a in analysis_cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices["waves"]


# each entry script's parser, the shared flags it has, and what its --no-progress says a log gets
PARSERS = {
    "train.py": (train.build_parser, {"--data-root", "--runs-root", "--device", "--threads", "--no-progress"},
                 "one line per epoch"),
    "produce_scores.py": (produce_scores.build_parser,
                          {"--data-root", "--runs-root", "--device", "--threads", "--no-progress"}, "one line per run"),
    "predict.py": (predict.build_parser, {"--device", "--threads"}, None),
    "bench.py": (bench.build_parser, {"--device", "--threads"}, None),
    "animate.py": (animate.build_parser, {"--data-root"}, None),
    "analysis waves": (analysis_waves_parser, {"--data-root", "--threads", "--no-progress"}, "one line per run"),
    "data_scripts (create_*)": (lambda: common.make_parser(get_info("tetrominoes"), "doc"),
                                {"--data-root", "--no-progress"}, "one line per split"),
    "data_scripts/download_mnist.py": (lambda: common.make_parser(get_info("mnist"), "doc", generated=False),
                                       {"--data-root", "--no-progress"}, "one line per split"),
    "data_scripts/show_samples.py": (show_samples.build_parser, {"--data-root"}, None),
    "data_scripts/verify_datasets.py": (verify_datasets.build_parser, {"--data-root"}, None),
}


def reference(flag, log):
    """The action cli writes for `flag` (in a fresh parser)."""
    parser = argparse.ArgumentParser()
    return SHARED[flag](parser, log=log) if flag == "--no-progress" else SHARED[flag](parser)


def described(action):
    """What a flag is: its names, destination, default, type, kind and help."""
    kind = getattr(action.type, "__name__", action.type)
    return (action.option_strings, action.dest, action.default, kind, type(action).__name__, action.nargs,
            action.help)


@pytest.mark.parametrize("name", PARSERS)
def test_shared_flags_are_cli_s(name):
    """A script that writes a shared flag itself (its own help text, default or type) fails here."""
    build, flags, log = PARSERS[name]
    actions = {option: action for action in build()._actions for option in action.option_strings}
    assert flags == set(SHARED) & set(actions)
    for flag in flags:
        assert described(actions[flag]) == described(reference(flag, log)), (name, flag)


def test_each_shared_flag_has_one_help_text():
    texts = {}
    for build, flags, _ in PARSERS.values():
        actions = {option: action for action in build()._actions for option in action.option_strings}
        for flag in flags - {"--no-progress"}:
            texts.setdefault(flag, set()).add(actions[flag].help)
    assert texts == {"--data-root": {cli.DATA_ROOT_HELP}, "--runs-root": {cli.RUNS_ROOT_HELP},
                     "--device": {cli.DEVICE_HELP}, "--threads": {cli.THREADS_HELP}}
    assert f"${settings.DATA_ROOT_ENV}," in cli.DATA_ROOT_HELP and f"${settings.RUNS_ROOT_ENV}," in cli.RUNS_ROOT_HELP


def test_no_script_writes_a_shared_flag_itself():
    """Scripts added later too: every add_argument of a shared flag is in cli.py."""
    pattern = re.compile(r"""add_argument\(\s*f?["'](%s)["']""" % "|".join(SHARED))
    skip = {".venv", ".git", "tests"}
    found = [f"{path.relative_to(REPO)}: {m.group(1)}" for path in sorted(REPO.rglob("*.py"))
             if path.name != "cli.py" and not skip & set(path.relative_to(REPO).parts)
             for m in pattern.finditer(path.read_text(encoding="utf-8"))]
    assert found == []


def test_shared_flags_parse_as_before():
    args = train.build_parser().parse_args([])
    assert (args.data_root, args.runs_root, args.device, args.threads, args.progress) == (None, None, "auto", None, True)
    args = produce_scores.build_parser().parse_args(["--data-root", "d", "--runs-root", "r", "--device", "cpu",
                                                     "--threads", "2", "--no-progress"])
    assert (args.data_root, args.runs_root, args.device, args.threads, args.progress) == ("d", "r", "cpu", 2, False)
    with pytest.raises(SystemExit):
        predict.build_parser().parse_args(["x.png", "--model", "m", "--out", "o", "--threads", "0"])


def test_bench_worker_command_line_parses():
    """bench.run_worker passes --device and --threads on to each worker."""
    argv = ["--worker", "tetrominoes_nwm", "project", "--batch-size", "8", "--steps", "1", "--device", "cpu",
            "--threads", "1"]
    args = bench.build_parser().parse_args(argv)
    assert (args.worker, args.device, args.threads) == (["tetrominoes_nwm", "project"], "cpu", 1)


def test_cli_imports_no_torch():
    code = "import sys, cli; assert 'torch' not in sys.modules, 'cli.py imports torch'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


@pytest.mark.parametrize("argv", [["--epochs", "0"], ["--model", "transformer"], ["--no-such-flag"]])
def test_a_refusal_is_the_error_and_where_to_look_not_the_usage_block(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(argv)
    assert exit_info.value.code == 2
    prog = train.build_parser().prog  # train.py when run as a script
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{prog}: error: ") and "usage:" not in lines[0]
    assert lines[1] == f"(every setting and its valid values: python {prog} --help)"


@pytest.mark.parametrize("command", [
    ["pretrained.py"],
    ["produce_scores.py", "--no-eval", "--runs-root", "results/runs", "--out", "{tmp}/scores.csv"],
    ["data_scripts/verify_datasets.py", "--data-root", "{tmp}"],
])
def test_a_reader_that_goes_away_ends_a_tool_quietly(command, tmp_path):
    """`python pretrained.py | head -1`: the tool stops with 141 (128 + SIGPIPE), as a shell tool does,
    and no traceback."""
    argv = [sys.executable, *(word.format(tmp=tmp_path) for word in command)]
    reader = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader.stdout.close()  # gone before the first line is written
    stderr = reader.stderr.read().decode()
    assert reader.wait(timeout=120) == 141 and "Traceback" not in stderr, stderr
