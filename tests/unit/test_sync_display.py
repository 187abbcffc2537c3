"""sync's progress display: a tqdm bar with bytes, rate and ETA on a terminal, plain lines
otherwise, and the summary lines of a run over several users."""

from __future__ import annotations

import io

from gateway.config import RouteConfig
from gateway.edges.sync_run import Display, Job, Outcome, failed, summary_lines
from gateway.features.sync import Summary

ROUTE = RouteConfig("partners", "p*", "main", legacy="old-ftp", phase="shadow")


def test_a_terminal_gets_a_bar_and_the_notable_lines_above_it():
    out = io.StringIO()
    display = Display(2048, out, tty=True, label=lambda job: f"[{job.user}] ")
    progress = display.for_job(Job(ROUTE, "p1"))
    progress.step("a.csv", "skip")  # on a terminal a skip only shows in the bar
    progress.step("b.csv", "copy")
    progress.advance(2048)
    display.close()
    text = out.getvalue()
    assert "[p1] copy: b.csv" in text and "[p1] skip: a.csv" not in text
    assert "2.00k/2.00k" in text and "B/s" in text  # tqdm's bytes and rate


def test_plain_lines_end_with_the_totals():
    out = io.StringIO()
    display = Display(1000, out, tty=False, label=lambda job: "")
    progress = display.for_job(Job(ROUTE, "p1"))
    progress.step("a.csv", "skip")
    progress.step("b.csv", "copy")
    progress.advance(1000)
    display.close()
    lines = out.getvalue().splitlines()
    assert lines[:2] == ["skip: a.csv", "copy: b.csv"]
    assert lines[2].startswith("sync: 0.98kB of 0.98kB, ") and lines[2].endswith("ETA -")


def test_summary_of_several_users():
    ok = Summary(files=2, copied=2, bytes_copied=30)
    torn = Summary(files=1, conflicts=["b.csv: changed on SFTP since sync copied it"])
    outcomes = [
        Outcome(Job(ROUTE, "p1"), ok),
        Outcome(Job(ROUTE, "p2"), torn),
        Outcome(Job(ROUTE, "p3"), problem="cannot log in: 530 Login incorrect."),
    ]
    assert list(summary_lines(outcomes, dry_run=False)) == [
        "p1: 2 files: 2 copied (30 bytes), 0 already matching, 0 conflicts, 0 mismatches, 0 errors",
        "p2: 1 files: 0 copied (0 bytes), 0 already matching, 1 conflicts, 0 mismatches, 0 errors",
        "p3: not synced: cannot log in: 530 Login incorrect.",
        "all 3 users: 3 files: 2 copied (30 bytes), 0 already matching, 1 conflicts, 0 mismatches, 0 errors",
        "  conflict: p2: b.csv: changed on SFTP since sync copied it",
    ]
    assert failed(outcomes) and not failed(outcomes[:1])
