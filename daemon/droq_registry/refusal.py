"""How a refused node file is worded: `NodeFileError` (the file, the place, the reason).

A reason is one printable line of bounded size, whatever the file holds, because it goes to
the API, the log and a terminal: places in a document (`place`) and values (`show`) are
shown short and escaped (`printable`). A schema rejection is explained in the schema's own
words (`x-expected`) by jsonschema, loaded only when a file is refused, since its errors
carry the exact path and the failing sub-schema. Pure: no file system, no clock.
"""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Iterable
from typing import Any

import fastjsonschema
import orjson

#: How much of a key or value an error message shows, and of a place or a reason.
_SHOWN = 80
_MESSAGE = 1000


class NodeFileError(Exception):
    """A node file that cannot be used. `where` is a dotted path inside the document."""

    def __init__(self, path: str, where: str | None, why: str) -> None:
        # A message is one printable line of bounded size, whatever the file holds: it goes
        # to the API, the log and a terminal.
        where = _bounded(where) if where else where
        why = _bounded(why)
        super().__init__(path, where, why)
        self.path = path
        self.where = where
        self.why = why

    def __str__(self) -> str:
        return f"{printable(self.path)}: {self.message}"

    @property
    def message(self) -> str:
        """The error without the file name: `components.Foo.path: expected ...`."""
        return f"{self.where}: {self.why}" if self.where else self.why


def explain(
    path: str, schema: dict[str, Any], document: Any, fast_error: fastjsonschema.JsonSchemaValueException
) -> NodeFileError:
    """The error of `document`, which fastjsonschema refused against `schema`."""
    best = _explainer(orjson.dumps(schema)).best_match(document)
    if best is None:  # the libraries disagree (regex dialects): explain the fast one's find
        where = place(fast_error.path[1:]) or None
        expected = _expected(fast_error.definition, str(fast_error.rule))
        why = f"expected {expected}, got {show(fast_error.value)}" if expected else fast_error.message
        return NodeFileError(path, where, why)
    return _explain(path, best)


class _Explainer:
    """jsonschema, loaded only when a file is refused: it names the exact place and the
    failing sub-schema, but a service whose files are fine need not carry it in memory."""

    def __init__(self, schema_json: bytes) -> None:
        import jsonschema  # type: ignore[import-untyped]

        self._jsonschema = jsonschema
        self._validator = jsonschema.Draft7Validator(orjson.loads(schema_json))

    def best_match(self, document: Any) -> Any:
        return self._jsonschema.exceptions.best_match(self._validator.iter_errors(document))


@functools.lru_cache(maxsize=4)
def _explainer(schema_json: bytes) -> _Explainer:
    return _Explainer(schema_json)


def _explain(path: str, error: Any) -> NodeFileError:
    """Turn jsonschema's error into `where: why` with the schema's own wording."""
    where = place(error.absolute_path) or None
    keyword = error.validator
    expected = _expected(error.schema, str(keyword))
    got = show(error.instance)
    if keyword == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        return NodeFileError(path, where, f"missing required key {show(missing[0])}")
    if keyword == "oneOf" and where is None:
        present = [k for k in ("components", "components_json_path") if k in error.instance]
        if present:
            why = 'give either "components" or "components_json_path", not both'
        else:
            why = 'missing "components" (or "components_json_path"); "components": {} declares none'
            close = difflib.get_close_matches("components", list(error.instance), n=1, cutoff=0.75)
            if close:
                why += f' (is {show(close[0])} a misspelling of "components"?)'
        return NodeFileError(path, where, why)
    if expected:
        return NodeFileError(path, where, f"expected {expected}, got {got}")
    return NodeFileError(path, where, error.message)


def _expected(schema: Any, keyword: str) -> str | None:
    """The schema's own wording of what it wants: `x-expected`, per keyword if it is an object."""
    expected = schema.get("x-expected") if isinstance(schema, dict) else None
    if isinstance(expected, dict):
        expected = expected.get(keyword, expected.get("default"))
    return expected if isinstance(expected, str) else None


def place(parts: Iterable[Any]) -> str:
    """A place in a document: `components.Foo.path`, `tags[0]`, `extra["a b"]`."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _plain_key(part):
            out += f".{part}" if out else part
        else:  # any key a reader could misread, or that could break a line: quoted, escaped
            out += f"[{_clip(json.dumps(str(part)))}]"
    return out


def _plain_key(key: Any) -> bool:
    return (
        isinstance(key, str)
        and 0 < len(key) <= _SHOWN
        and key.isprintable()
        and not any(c in key for c in '.[]" ')
    )


def _clip(text: str) -> str:
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _bounded(text: str) -> str:
    text = printable(text)
    return text if len(text) <= _MESSAGE else text[: _MESSAGE // 2] + "..." + text[-_MESSAGE // 2 :]


def printable(text: str) -> str:
    """`text` with every character that is not printable (controls, line and paragraph
    separators, bidirectional overrides, lone surrogates) written as a JSON escape, so that
    it cannot break, forge or reorder a line wherever it is shown."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in text)


def show(value: Any) -> str:
    """A value as a reason names it: its kind for a container, else its JSON, clipped."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str) and len(value) > _SHOWN:
        value = value[:_SHOWN]  # a huge string is not encoded whole to show 80 characters
    return _clip(printable(orjson.dumps(value).decode()))
