"""Refused origins are logged at info, rate-limited (transport.OriginRefusalLog)."""

from __future__ import annotations

import logging

import pytest

from uniws.transport import OriginRefusalLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def lines(caplog):
    caplog.set_level(logging.INFO, logger="uniws.transport")

    def fields() -> list[dict]:
        return [record.fields for record in caplog.records if "origin refused" in record.getMessage()]
    return fields


def test_one_line_per_origin_per_period_naming_the_option(lines) -> None:
    clock = Clock()
    log = OriginRefusalLog(period=60, burst=10, clock=clock)
    for _ in range(5):
        log.refused("https://app.example", [])
    log.refused("https://other.example", [])
    # The next line logged says how many were not.
    assert lines() == [{"origin": "https://app.example", "allowed_origins": []},
                       {"origin": "https://other.example", "allowed_origins": [], "refusals_not_logged": 4}]
    log.refused("https://app.example", [])
    clock.now += 60
    log.refused("https://app.example", [])
    assert len(lines()) == 3
    assert lines()[-1] == {"origin": "https://app.example", "allowed_origins": [], "refusals_not_logged": 1}


def test_a_flood_of_made_up_origins_is_capped(lines) -> None:
    clock = Clock()
    log = OriginRefusalLog(period=60, burst=10, clock=clock)
    for i in range(10_000):
        log.refused(f"https://{i}.evil", ["https://app.example"])
    assert len(lines()) == 10 and len(log.last) == 10
    clock.now += 61
    log.refused("https://late.evil", [])
    assert lines()[-1]["refusals_not_logged"] == 9990


def test_control_characters_do_not_reach_the_log(lines) -> None:
    OriginRefusalLog(clock=Clock()).refused("https://a\x1b[31m" + "x" * 500, [])
    [fields] = lines()
    assert fields["origin"] == "https://a?[31m" + "x" * 186
