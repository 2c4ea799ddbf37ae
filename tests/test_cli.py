import argparse

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
