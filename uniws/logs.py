"""Logging setup (spec 07 §6): human lines on a terminal, JSON lines otherwise.

Modules log through `logging.getLogger("uniws...")`; structured fields go in
`extra={"fields": {...}}` and become keys of the JSON object.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any

import orjson

from uniws.config import ConfigError

ROOT_LOGGER = "uniws"
TRACE = 5
_NONE = logging.CRITICAL + 10  # above every level: log nothing

# (log_level name, logging level, console tag); JSON lines use the names, as the reference does.
_LEVEL_TABLE = (
    ("trace", TRACE, "TRC"),
    ("debug", logging.DEBUG, "DBG"),
    ("info", logging.INFO, "INF"),
    ("warn", logging.WARNING, "WRN"),
    ("error", logging.ERROR, "ERR"),
    ("fatal", logging.CRITICAL, "FTL"),
)
_LEVELS: Mapping[str, int] = MappingProxyType({"none": _NONE, **{name: level for name, level, _ in _LEVEL_TABLE}})
_NAMES: Mapping[int, str] = MappingProxyType({level: name for name, level, _ in _LEVEL_TABLE})
_TAGS: Mapping[int, str] = MappingProxyType({level: tag for _, level, tag in _LEVEL_TABLE})


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return dict(fields) if isinstance(fields, dict) else {}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: level, time, message, then the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "level": _NAMES.get(record.levelno, record.levelname.lower()),
            "time": datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="seconds"),
            "message": record.getMessage(),
        }
        for key, value in _fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry.setdefault("error", self.formatException(record.exc_info))
        return orjson.dumps(entry, default=str).decode()


class ConsoleFormatter(logging.Formatter):
    """`2024-01-02 15:04:05 INF message key=value` for people at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        level = _TAGS.get(record.levelno, record.levelname[:3])
        parts = [stamp, level, record.getMessage()]
        parts.extend(f"{key}={value}" for key, value in _fields(record).items())
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def level_number(level: str) -> int:
    """Numeric level for a config `log_level`; unknown names mean info."""
    return _LEVELS.get(level.lower(), logging.INFO)


def _file_handler(log_file: str) -> logging.Handler:
    try:
        return logging.FileHandler(log_file, mode="a", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"error opening log file: {exc}") from None


def setup_logging(level: str, log_file: str = "") -> None:
    """(Re)configure the "uniws" logger. Raises ConfigError if log_file cannot be opened."""
    logging.addLevelName(TRACE, "TRACE")
    if log_file:
        handler: logging.Handler = _file_handler(log_file)
        handler.setFormatter(JsonFormatter())
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(ConsoleFormatter() if sys.stderr.isatty() else JsonFormatter())
    logger = logging.getLogger(ROOT_LOGGER)
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    logger.addHandler(handler)
    logger.setLevel(level_number(level))
    logger.propagate = False  # our handler is the only output
