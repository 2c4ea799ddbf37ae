import argparse
import subprocess
import sys

import pytest

from deadzone.cli import build_parser, main


def test_usage_errors_are_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--preset"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("deadzone: error: deadzone pretrain:") and err.count("\n") == 1


def test_unknown_command_is_one_line(capsys):
    with pytest.raises(SystemExit):
        main(["frobnicate"])
    err = capsys.readouterr().err
    assert "invalid choice: 'frobnicate'" in err and err.count("\n") == 1


def undocumented_defaults(parser) -> list[str]:
    """Options whose help, as printed, states no default, or a bare "(default: None)"."""
    bad = []
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            text = parser.formatter_class(parser.prog)._expand_help(action) if action.help else ""
            if "(required)" not in text and ("default" not in text or "(default: None)" in text):
                bad.append(action.option_strings[-1])
    return bad


COMMAND_NAMES = list(build_parser()._subparsers._group_actions[0].choices)


@pytest.mark.parametrize("command", COMMAND_NAMES)
def test_help_states_every_default(command):
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    assert undocumented_defaults(sub) == []
    assert "(default: None)" not in sub.format_help()


def test_the_default_check_catches_a_bare_none():
    parser = build_parser()._subparsers._group_actions[0].choices["analyze"]
    parser = argparse.ArgumentParser(formatter_class=parser.formatter_class)
    parser.add_argument("--fine", default=3, help="a number")
    parser.add_argument("--said", help="a path (default: not written)")
    parser.add_argument("--bare", help="a path")
    assert undocumented_defaults(parser) == ["--bare"]


def test_no_command_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        main([])
    assert capsys.readouterr().err == (
        f"deadzone: error: no command given; choose one of {', '.join(COMMAND_NAMES)} "
        "(see --help)\n"
    )


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in COMMAND_NAMES)
    assert "freeze at 25% and 50%" in " ".join(
        printed.split()
    )  # a '%' in a command's help is no format error


def test_help_imports_neither_torch_nor_transformers():
    """Building the parser and every --help stays light: the handlers import the library."""
    code = (
        "import sys\n"
        "from deadzone.cli import build_parser\n"
        "parser = build_parser()\n"
        "parser.format_help()\n"
        "for sub in parser._subparsers._group_actions[0].choices.values():\n"
        "    sub.format_help()\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_report_to_offers_exactly_the_trackers_the_library_knows():
    from deadzone.cli.options import REPORT_TO_CHOICES
    from deadzone.training.tracking import CHOICES

    assert REPORT_TO_CHOICES == CHOICES


@pytest.mark.parametrize("command", ["crystallize", "scan", "freeze", "demo"])
def test_every_experiment_command_takes_the_execution_and_tracking_options(command):
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    flags = {flag for action in sub._actions for flag in action.option_strings}
    assert {"--workers", "--backend", "--ray-address", "--report-to", "--tracking-dir"} <= flags
    args = sub.parse_args(
        [*(["MODEL", "--out", "o"] if command != "demo" else []), "--report-to", "tensorboard"]
        + (["--target", "L0.attn.c_proj"] if command == "crystallize" else [])
    )
    assert args.report_to == "tensorboard" and args.workers is None and args.backend == "local"
