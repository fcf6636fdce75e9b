"""Logging: readable lines by default, one JSON object per line with LOG_FORMAT=json.

The same configuration is handed to uvicorn, so its access and error logs follow it too.
Messages carry what others wrote (file names, node file errors, request paths), so every
message is escaped the same way in both formats: a control character, a line break or a
byte that is not UTF-8 is written as a visible escape and can neither start a line of its
own nor colour the terminal. A text record's traceback keeps its line breaks, each line
indented, so that only the first line of a record starts at the left margin.
"""

from __future__ import annotations

import logging
import logging.config
import sys
import threading
from types import TracebackType
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from .settings import Settings

#: The program name that starts a start-up failure line in text.
PROG = "droq-registry"
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"
JSON_RENAMES = {"asctime": "time", "levelname": "level", "name": "logger"}

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape(text: str, keep_newlines: bool = False) -> str:
    """`text` with everything that is not printable written as an escape (`\\n`, `\\x1b`,
    `\\u202e`); a byte that was not UTF-8 (a lone surrogate from `os.fsdecode`) as `\\xff`."""
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char.isprintable() or (keep_newlines and char == "\n"):
            out.append(char)
        elif char in _NAMED:
            out.append(_NAMED[char])
        else:
            code = ord(char)
            if 0xDC80 <= code <= 0xDCFF:  # surrogateescape's stand-in for the byte code - 0xDC00
                out.append(f"\\x{code - 0xDC00:02x}")
            elif code <= 0xFF:
                out.append(f"\\x{code:02x}")
            elif code <= 0xFFFF:
                out.append(f"\\u{code:04x}")
            else:
                out.append(f"\\U{code:08x}")
    return "".join(out)


def _block(text: str) -> str:
    """A traceback or stack as continuation lines: escaped, each line indented."""
    return "\n".join("    " + line for line in escape(text, keep_newlines=True).split("\n"))


class TextFormatter(logging.Formatter):
    """`logging.Formatter` with the message escaped and tracebacks indented."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        raw = record.message
        record.message = escape(raw)
        try:
            return super().formatMessage(record)
        finally:
            record.message = raw

    def formatException(self, ei: Any) -> str:
        return _block(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _block(super().formatStack(stack_info))


class JsonLineFormatter(JsonFormatter):
    """python-json-logger's formatter with the message escaped as in text lines.

    JSON would escape control characters anyway; escaping the message here too keeps it
    the same text in both formats and turns undecodable bytes into `\\xff`, not a lone
    surrogate that strict JSON parsers refuse."""

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        message = log_data.get("message")
        if isinstance(message, str):
            log_data["message"] = escape(message)
        for key in ("exc_info", "stack_info"):
            if isinstance(log_data.get(key), str):
                log_data[key] = escape(log_data[key], keep_newlines=True)
        return log_data


def _formatter(log_format: str) -> dict[str, Any]:
    if log_format == "json":
        return {
            "()": f"{__name__}.JsonLineFormatter",
            "fmt": JSON_FIELDS,
            "rename_fields": JSON_RENAMES,
            "timestamp": False,
        }
    return {"()": f"{__name__}.TextFormatter", "fmt": TEXT_FORMAT}


def uvicorn_log_config(settings: Settings) -> dict[str, Any]:
    """A `logging.config.dictConfig` for the service and uvicorn alike."""
    level = "DEBUG" if settings.log_level == "trace" else settings.log_level.upper()
    handler = {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": _formatter(settings.log_format)},
        "handlers": {"default": handler},
        "loggers": {
            "droq_registry": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": ["default"], "level": level, "propagate": False},
            "watchfiles": {"handlers": ["default"], "level": "WARNING", "propagate": False},
        },
        "root": {"handlers": ["default"], "level": "WARNING"},
    }


def configure_logging(settings: Settings) -> None:
    """Set up logging before anything else logs, so every line has the chosen format:
    warnings and uncaught exceptions (in any thread) go through it too."""
    logging.config.dictConfig(uvicorn_log_config(settings))
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def startup_failure(log_format: str, message: str) -> None:
    """Report why the service cannot start: one line on stderr, in the log format asked for
    (`droq-registry: message` as text), also when logging is not set up yet."""
    if log_format != "json":
        print(f"{PROG}: {escape(message)}", file=sys.stderr)
        return
    record = logging.LogRecord("droq_registry", logging.ERROR, __file__, 0, message, None, None)
    formatter = JsonLineFormatter(JSON_FIELDS, rename_fields=JSON_RENAMES, timestamp=False)
    print(formatter.format(record), file=sys.stderr)


def _log_uncaught(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    logging.getLogger("droq_registry").critical("uncaught exception", exc_info=(kind, value, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("droq_registry").error(
        "uncaught exception in thread %s", name, exc_info=(args.exc_type, args.exc_value, args.exc_traceback)
    )
