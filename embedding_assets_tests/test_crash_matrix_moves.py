"""The crash matrix's second half (see test_crash_matrix): the refresh's later failpoints, a migration and
a rollback. A file of its own so the test workers (one file each) share the matrix."""

from __future__ import annotations

import pytest

from embedding_assets_tests.test_crash_matrix import CASES, FIRST_CASES, crash_and_converge

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("command", "point", "base", "then", "edited"),
    CASES[FIRST_CASES:],
    ids=[f"{c[0][0]}-{c[1]}" for c in CASES[FIRST_CASES:]],
)
def test_a_crash_costs_nothing_and_no_reader_sees_it(
    deployment_bases, tmp_path, tmp_path_factory, command, point, base, then, edited
):
    crash_and_converge(deployment_bases, tmp_path, tmp_path_factory, command, point, base, then, edited)
