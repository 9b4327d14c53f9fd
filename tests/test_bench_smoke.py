"""The benchmark must not rot: every case runs at a tiny N and every result is checked.

Correctness only, never speed. Each contender's check compares what it loaded
(counts and sums read back by a separate raw connection) or returned (rows,
latest bars, hourly bars, values read by each transaction) with the seeded data
or with the reference's own result; a failed check raises here.
"""
from __future__ import annotations

import marketstore
import pytest

from bench import cases, data
from bench.context import Context
from bench.runner import ORDER, parse, run

SMOKE_ROWS = 2_000


@pytest.fixture(scope="module")
def results(create_database, tmp_path_factory):
    url = create_database()
    marketstore.run_migrations(url)
    ctx = Context(url, SMOKE_ROWS, repeat=1, workdir=str(tmp_path_factory.mktemp("bench")),
                  log=lambda _: None, quick=True)
    try:
        done, errors = run(ctx, ORDER, strict=True)
        yield ctx, done, errors
    finally:
        ctx.close()


def test_every_case_runs_and_every_contender_is_checked(results):
    _, done, errors = results
    assert errors == []
    assert {c.case for c in done} == set(ORDER)
    for comparison in done:
        names = {c.name for c in comparison.contenders}
        assert comparison.baseline in names
        for contender in comparison.contenders:
            assert contender.check is not None, f"{comparison.title}: {contender.name} is unchecked"
            assert len(contender.times) == 1 and contender.times[0] > 0
        for target in comparison.targets:
            assert {target.contender, target.reference} <= names, f"{comparison.title}: {target}"
            assert target.ratio(comparison.medians()) is not None


@pytest.mark.parametrize("case, title", [
    ("ingest", f"ingest {SMOKE_ROWS:,} rows into an empty table"),
    ("upsert", f"upsert {SMOKE_ROWS:,} rows, half of them already stored"),
    ("range", "range read of 200 rows of one symbol"),
    ("latest", "latest price of 500 symbols"),
    ("resample", "resample 200 minute bars to 4 hourly bars"),
    ("sessions", "4 threads x 200 short transactions"),
    ("scaling", f"copy_from(CSV file) of {SMOKE_ROWS:,} rows"),
    ("scaleout", "one PriceRepository.latest() read, primary vs routed to a caught-up replica"),
])
def test_each_case_measured_the_expected_work(results, case, title):
    _, done, _ = results
    assert title in [c.title for c in done if c.case == case]


def test_scaling_reports_memory_and_flatness(results):
    _, done, _ = results
    findings = [f for c in done if c.case == "scaling" for f in c.findings]
    labels = " | ".join(f.label for f in findings)
    assert "peak memory" in labels and "cost per row" in labels and "fixed window" in labels
    assert all(f.value == f.value for f in findings)  # no NaN


def test_the_table_holds_what_the_last_load_left(results):
    """Read back through a raw connection: the sessions case ran on the read data set."""
    ctx, _, _ = results
    expected = data.summarize(ctx.read_rows)
    assert ctx.summary() == expected
    assert expected.count == SMOKE_ROWS + len(data.TAIL_SYMBOLS) * 2


@pytest.mark.parametrize("corrupt", [
    lambda rows: rows[:-1],
    lambda rows: rows[:1] + [rows[2]] + rows[2:],
    lambda rows: [rows[0][:5] + (rows[0][5] + 1,) + rows[0][6:]] + rows[1:],
])
def test_a_wrong_range_result_fails_its_check(results, corrupt):
    """The checks prove something: a result one row short, or one value off, is refused."""
    ctx, _, _ = results
    comparison = next(cases.range_read(ctx))
    reference = comparison.contenders[0]
    good = reference.run()
    reference.check(good)
    with pytest.raises(AssertionError):
        reference.check(corrupt(list(good)))


def test_a_wrong_latest_result_fails_its_check(results):
    ctx, _, _ = results
    comparison = next(cases.latest(ctx))
    contender = next(c for c in comparison.contenders if c.name == "latest_for_symbols")
    found = contender.run()
    contender.check(found)
    found.pop(data.HEAVY)
    with pytest.raises(AssertionError):
        contender.check(found)


@pytest.mark.parametrize("argv", [["--only", "nope"], ["--rows", "10"], ["--repeat", "0"]])
def test_cli_refuses_bad_arguments(argv):
    with pytest.raises(SystemExit):
        parse(argv)


def test_cli_runs_cases_in_a_fixed_order():
    assert parse(["--only", "sessions,ingest"]).names == ["ingest", "sessions"]
