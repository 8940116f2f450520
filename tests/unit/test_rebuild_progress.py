"""What a rebuild prints as it goes: events done of the logs' ends, rate and time left; one
line rewritten on a terminal, plain lines otherwise."""

from __future__ import annotations

import io

from concierge.rebuild import Progress, ProgressPrinter


def test_a_status_says_done_total_rate_and_time_left() -> None:
    status = Progress(done=12_000, total=48_000, seconds=0.5, source="topology")

    assert status.rate == 24_000
    assert status.seconds_left == 1.5
    assert status.line() == ("12,000/48,000 events (25%), 24,000 events/s, about 2 s left "
                             "(reading topology)")


def test_a_source_that_cannot_tell_its_end_gives_no_total_and_no_time_left() -> None:
    line = Progress(done=3_000, total=None, seconds=1.0, source="accounts").line()

    assert line == "3,000 events, 3,000 events/s (reading accounts)"


def test_on_a_terminal_one_line_is_rewritten_and_a_notice_gets_its_own() -> None:
    out = io.StringIO()
    printer = ProgressPrinter(out, tty=True)

    printer.progress(Progress(5_000, 10_000, 1.0, "topology", final=True))
    printer.progress(Progress(10_000, 10_000, 2.0, "topology", final=True))
    printer.notice("swapping the new tables in")
    printer.close()

    assert out.getvalue() == (
        "\r\033[K  5,000/10,000 events (50%), 5,000 events/s, about 1 s left (reading topology)"
        "\r\033[K  10,000/10,000 events (100%), 5,000 events/s, about 0 s left "
        "(reading topology)\nswapping the new tables in\n")


def test_elsewhere_plain_lines_a_few_seconds_apart_and_each_source_s_last() -> None:
    out = io.StringIO()
    printer = ProgressPrinter(out, tty=False)

    printer.progress(Progress(1_000, 9_000, 1.0, "topology"))
    printer.progress(Progress(2_000, 9_000, 1.1, "topology"))  # too soon: not printed
    printer.progress(Progress(5_000, 9_000, 1.2, "topology", final=True))
    printer.progress(Progress(5_000, 9_000, 1.3, "topology", final=True))  # said already

    lines = out.getvalue().splitlines()
    assert [line.split(" events")[0].strip() for line in lines] == ["1,000/9,000",
                                                                     "5,000/9,000"]
