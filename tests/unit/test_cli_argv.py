"""The command line read without docopt (cli.plain_args) is read as docopt reads it: the
same dict, or no reading at all (docopt then reads it, and words its errors)."""

from __future__ import annotations

import contextlib
import io
import re

import pytest
from docopt import DocoptExit, docopt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zcron import cli

OPTION_WORDS = sorted(set(re.findall(r"--?[A-Za-z][\w-]*", cli.USAGE)))
WORDS = [
    *OPTION_WORDS,
    *cli.COMMANDS,
    *(word[:4] for word in OPTION_WORDS if word.startswith("--")),  # docopt takes prefixes
    "--config=x.conf", "-cx.conf", "--json=1", "--", "-", "-5", "--version", "-h", "-cn",
    "", "x", "job", "5s", "2026-11-23T03:00:00Z", "a b", "--nope",
]  # fmt: skip


def docopt_reading(argv: list[str]) -> dict | str:
    """docopt's dict, or how it refused: "usage error", or "exit" (it printed and exited)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return dict(docopt(cli._doc_for(argv), argv=argv, default_help=False, version="v"))
    except DocoptExit:
        return "usage error"
    except SystemExit:
        return "exit"


VALUES = ["x", "job", "5s", "", "a b", "-5", "--", "--json"]


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    """A command, then its own options (with a value after them, more often), and words."""
    command = draw(st.sampled_from(list(cli.COMMANDS)))
    own = sorted(set(re.findall(r"--?[A-Za-z][\w-]*", cli.command_help(command)))) or WORDS
    pair = st.tuples(st.sampled_from(own), st.sampled_from(VALUES)).map(list)
    word = st.sampled_from([*own, *WORDS]).map(lambda word: [word])
    pieces = draw(st.lists(st.one_of(pair, pair, word), max_size=7))
    return [command, *(word for piece in pieces for word in piece)]


@st.composite
def likely_lines(draw: st.DrawFn) -> list[str]:
    """A command, each of its options at most once in any order, a few plain words, and
    maybe `-- words`: lines docopt mostly takes."""
    command = draw(st.sampled_from(list(cli.COMMANDS)))
    # each option word of its help, and whether a VALUE follows it there
    own = dict(re.findall(r"(--?[A-Za-z][\w-]*)( [A-Z])?", cli.command_help(command)))
    chosen = draw(st.lists(st.sampled_from(sorted(own)), unique=True)) if own else []
    value = st.sampled_from(["x", "job", "5s", "", "a b", "-5"])
    pieces = [[word, draw(value)] if own[word] else [word] for word in chosen]
    pieces += [[draw(value)] for _ in range(draw(st.integers(0, 2)))]
    order = draw(st.permutations(pieces)) if pieces else []
    tail = draw(st.sampled_from([[], ["--"], ["--", "x"], ["--", "grep", "--help"]]))
    return [command, *(word for piece in order for word in piece), *tail]


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(argv=st.one_of(command_lines(), likely_lines()))
def test_a_line_read_without_docopt_is_read_as_docopt_reads_it(argv: list[str]) -> None:
    plain = cli.plain_args(argv)
    assert plain is None or plain == docopt_reading(argv), argv


@pytest.mark.parametrize(
    "argv",
    [
        ["push", "-c", "z.conf", "--", "/bin/sh", "-c", "true"],
        ["push", "--pool", "p", "--user", "u", "--in", "5m", "--timeout", "1m", "--", "x"],
        ["status", "-c", "z.conf"],
        ["status", "--json"],
        ["runs", "-c", "z.conf", "--limit", "20"],
        ["runs", "backup", "--since", "1h", "--status", "failed", "--json"],
    ],
)
def test_the_usual_client_lines_are_read_without_docopt(argv: list[str]) -> None:
    assert cli.plain_args(argv) == docopt_reading(argv)
