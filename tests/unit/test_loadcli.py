"""`concierge load devices` and `concierge simulate devices`: their arguments and their bounds,
and that they refuse to run without a real broker (they never fall back to anything else)."""

from __future__ import annotations

import pytest

from concierge import entry, loadcli
from concierge.devicesim import MAX_DEVICES, MAX_SIMULATED


def test_load_needs_a_pace_a_count_and_a_duration() -> None:
    args = loadcli.parser().parse_args(["load", "devices", "--devices", "10", "--rate", "5",
                                        "--duration", "3"])
    assert (args.devices, args.rate, args.interval, args.duration) == (10, 5.0, None, 3.0)
    assert args.fn is loadcli.cmd_load
    for bad in (["load", "devices", "--devices", "10", "--duration", "3"],
                ["load", "devices", "--devices", "10", "--rate", "5", "--interval", "1",
                 "--duration", "3"],
                ["load", "devices", "--devices", "0", "--rate", "5", "--duration", "3"],
                ["load", "devices", "--devices", str(MAX_DEVICES + 1), "--rate", "5",
                 "--duration", "3"],
                ["load", "devices", "--devices", "10", "--rate", "5"]):
        with pytest.raises(SystemExit):
            loadcli.parser().parse_args(bad)


def test_simulate_is_bounded_in_devices_duration_and_failure_ratio() -> None:
    args = loadcli.parser().parse_args(["simulate", "devices", "--devices", "3",
                                        "--duration", "5", "--fail-ratio", "0.5"])
    assert (args.devices, args.duration, args.fail_ratio, args.register) == (3, 5.0, 0.5, None)
    assert args.fn is loadcli.cmd_simulate
    for bad in (["simulate", "devices", "--devices", str(MAX_SIMULATED + 1), "--duration", "5"],
                ["simulate", "devices", "--devices", "3", "--duration", "5",
                 "--fail-ratio", "1.5"],
                ["simulate", "devices", "--devices", "3"],
                ["simulate", "robots", "--devices", "3", "--duration", "5"]):
        with pytest.raises(SystemExit):
            loadcli.parser().parse_args(bad)


@pytest.mark.parametrize("command", ["load", "simulate"])
def test_both_refuse_the_in_process_bus(command: str, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AMQP_URI", "concierge-memory://")
    pace = ["--rate", "1"] if command == "load" else []
    code = entry.main([command, "devices", "--devices", "1", *pace, "--duration", "1"])
    assert code == 2
    assert "needs a real broker" in capsys.readouterr().err


def test_register_needs_the_distributor_s_login(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AMQP_URI", "amqp://guest:guest@127.0.0.1:5672/")
    monkeypatch.delenv("CONCIERGE_BOOTSTRAP_DISTRIBUTOR", raising=False)
    code = entry.main(["simulate", "devices", "--devices", "1", "--duration", "1",
                       "--register", "http://127.0.0.1:9"])
    assert code == 2
    assert "CONCIERGE_BOOTSTRAP_DISTRIBUTOR" in capsys.readouterr().err
