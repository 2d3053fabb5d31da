"""The logger picows gets: uniws's own exceptions are logged with a traceback and counted."""

import logging

from uniws.transport import _BoundaryLogger


def test_listener_exception_is_logged_at_error_with_its_traceback(caplog):
    boundary = _BoundaryLogger()
    with caplog.at_level(logging.DEBUG, logger="uniws.transport"):
        try:
            {}["missing"]
        except KeyError:
            boundary.exception("Initiate disconnect because of exception from WSListener.on_ws_frame")
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert record.exc_info and record.exc_info[0] is KeyError
    assert "on_ws_frame" in record.getMessage()
    assert (boundary.listener_exceptions, boundary.client_protocol_errors) == (1, 0)


def test_error_without_an_active_exception_has_no_traceback(caplog):
    boundary = _BoundaryLogger()
    with caplog.at_level(logging.DEBUG, logger="uniws.transport"):
        boundary.error("Initiate disconnect because of exception from WSListener.on_ws_connected: %s", "boom")
    [record] = caplog.records
    assert record.levelno == logging.ERROR and not record.exc_info
    assert record.getMessage().endswith("on_ws_connected: boom")
    assert boundary.listener_exceptions == 1


def test_client_frame_errors_are_counted_not_logged_as_errors(caplog):
    boundary = _BoundaryLogger()
    with caplog.at_level(logging.DEBUG, logger="uniws.transport"):
        boundary.error("WS parser error: %s, initiate disconnect", (1009, "frame too big"))
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]
    assert (boundary.listener_exceptions, boundary.client_protocol_errors) == (0, 1)


def test_picows_debug_and_info_stay_silent(caplog):
    boundary = _BoundaryLogger()
    assert not boundary.isEnabledFor(logging.DEBUG) and not boundary.isEnabledFor(logging.INFO)
    with caplog.at_level(logging.DEBUG):
        boundary.info("accepted connection")
        boundary.warning("Protocol writing pause requested")
        boundary.log(5, "New data: %s", b"x")
    assert caplog.records == []
