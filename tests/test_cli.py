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


@pytest.mark.parametrize("command", ["pretrain", "analyze"])
def test_help_states_every_default(command):
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    for action in sub._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and "default" in sub.formatter_class(command)._expand_help(action)
