"""The plain progress lines' time left: paced from the first advance on, never from its warm-up."""

from __future__ import annotations

from datetime import timedelta

from deadzone import progress


def _lines(monkeypatch, capsys, times: list[float], total: int) -> list[str]:
    """Plain lines of a task advanced once at each of ``times`` (seconds after its start)."""
    clock = iter([0.0, *times])
    monkeypatch.setattr(progress, "INTERVAL", 0.0)  # a line at every advance
    monkeypatch.setattr(progress, "_clock", lambda: next(clock))
    with progress.PlainProgress() as bar:
        task = bar.add_task("demo", total=total)
        for _ in times:
            bar.update(task, advance=1)
    return capsys.readouterr().err.splitlines()


def test_a_slow_first_unit_is_not_extrapolated_to_the_rest(monkeypatch, capsys):
    # The demo's shape: pretraining (one unit, 360 s) then 65 units of 10 s each. Extrapolating
    # the first unit printed 360 * 65 s = 6:30:00 left.
    times = [360.0 + 10.0 * i for i in range(66)]
    lines = _lines(monkeypatch, capsys, times, total=66)
    assert "left" not in lines[0]  # one advance: no pace known yet
    assert lines[1].split(", ")[2] == "0:10:40 left"  # 64 units at 10 s
    left = [line.split(", ")[2] for line in lines[1:-1]]
    assert left == [f"{timedelta(seconds=10 * (65 - i))} left" for i in range(1, 65)]
    assert "left" not in lines[-1]  # done


def test_a_steady_pace_gives_the_exact_time_left(monkeypatch, capsys):
    lines = _lines(monkeypatch, capsys, [2.0 * (i + 1) for i in range(5)], total=10)
    assert [line.split(", ")[-1] for line in lines[1:]] == [
        "0:00:16 left", "0:00:14 left", "0:00:12 left", "0:00:10 left"
    ]  # fmt: skip
