"""Reading task data files: compressed or plain, with line numbers, and one policy for malformed rows.

Every reader yields ``(line, record)`` pairs so that a malformed row can be reported as ``file:line: reason``.
Problems with a whole file (missing, not UTF-8, no header, broken JSON syntax) always raise
:class:`~privtune.errors.DataError`; problems with single rows go through :class:`BadRows`, which either
refuses the file (``on_bad_rows="error"``) or skips the rows and warns with counts (``"skip"``).
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.abc import Traversable
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

from privtune.errors import DataError, PrivtuneError

BadRowPolicy = Literal["error", "skip"]
BAD_ROW_POLICIES: tuple[str, ...] = ("error", "skip")

# How many bad lines an error message or warning quotes before "... and N more".
_SHOWN_BAD_ROWS = 5

_MAGIC = ((b"\xfd7zXZ\x00", lzma.decompress), (b"\x1f\x8b", gzip.decompress), (b"BZh", bz2.decompress))


class BadRowsWarning(UserWarning):
    """Malformed rows were skipped (``on_bad_rows="skip"``); the message gives counts and the first lines."""


@dataclass(frozen=True)
class BadRow:
    """One malformed row: its 1-based line number in the file and what is wrong with it."""

    line: int
    reason: str


def check_policy(on_bad_rows: str) -> None:
    """Refuse an unknown bad-row policy early, before any file is read."""
    if on_bad_rows not in BAD_ROW_POLICIES:
        raise PrivtuneError(f"on_bad_rows must be one of {', '.join(BAD_ROW_POLICIES)}; got {on_bad_rows!r}")


class BadRows:
    """Collects the malformed rows of one file and applies the policy once the file has been read.

    Use: ``bad = BadRows(name, policy)``; ``bad.add(line, reason)`` per bad row; ``bad.finish(n_good)`` at the
    end, which raises (policy "error", or nothing usable left) or warns (policy "skip").
    """

    def __init__(self, name: str, on_bad_rows: str) -> None:
        check_policy(on_bad_rows)
        self.name = name
        self.policy = on_bad_rows
        self.rows: list[BadRow] = []

    def add(self, line: int, reason: str) -> None:
        self.rows.append(BadRow(line, reason))

    def __len__(self) -> int:
        return len(self.rows)

    def _listing(self) -> str:
        shown = "; ".join(f"line {r.line}: {r.reason}" for r in self.rows[:_SHOWN_BAD_ROWS])
        more = len(self.rows) - _SHOWN_BAD_ROWS
        return shown + (f"; ... and {more} more" if more > 0 else "")

    def finish(self, n_good: int, unit: str = "rows", skipped_note: str = "") -> None:
        """Raise (policy "error") or warn (policy "skip") about the bad rows collected, if any.

        ``n_good``: examples kept; ``unit``: what a row is called; ``skipped_note``: what skipping drops.
        """
        if self.rows and self.policy == "error":
            raise DataError(
                f"{self.name}: {len(self.rows)} malformed {unit} ({self._listing()}). "
                "Fix the file, or pass on_bad_rows='skip' (CLI: --on-bad-rows skip) to skip them."
            )
        if self.rows:
            warnings.warn(
                f"{self.name}: skipped {len(self.rows)} malformed {unit}{skipped_note}, kept {n_good} examples "
                f"({self._listing()})",
                BadRowsWarning,
                stacklevel=3,
            )


def shipped_file(relative: str) -> Traversable:
    """The data file ``privtune/data/<relative>`` shipped inside the package (see privtune/data/NOTICE.md)."""
    return files("privtune").joinpath("data", *relative.split("/"))


def read_text(source: Path | Traversable) -> str:
    """The whole text of a UTF-8 file, decompressed first if it is xz, gzip or bzip2 (sniffed, not by name).

    A byte-order mark is dropped. Missing, unreadable or non-UTF-8 files raise DataError.
    """
    name = str(source)
    try:
        if not source.is_file():
            what = "is a directory, not a file" if source.is_dir() else "does not exist"
            raise DataError(f"{name}: {what}")
        with source.open("rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise DataError(f"{name}: cannot read: {exc.strerror or exc}") from exc
    for magic, decompress in _MAGIC:
        if data.startswith(magic):
            try:
                data = decompress(data)
            except (OSError, EOFError, lzma.LZMAError) as exc:
                raise DataError(f"{name}: corrupt compressed file: {exc}") from exc
            break
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{name}: line {line}: not UTF-8 text ({exc.reason}); save the file as UTF-8"
        ) from exc
    return text.removeprefix("\ufeff")


Columns = dict[str, tuple[str, ...]]


def lines(text: str) -> Iterator[str]:
    """The lines of ``text`` without their endings, split at \\n, \\r\\n or \\r only (``str.splitlines`` would
    also split inside fields at form feeds and Unicode separators, and miscount line numbers)."""
    for line in io.StringIO(text, newline=""):
        yield line.rstrip("\r\n")


def _header_map(name: str, line: int, header: list[str], columns: Columns) -> dict[str, int]:
    """Position of each wanted field: the first of its accepted column names in the header, else DataError."""
    found = {}
    for field, names in columns.items():
        index = next((header.index(c) for c in names if c in header), None)
        if index is None:
            raise DataError(
                f"{name}: line {line}: no column {' or '.join(repr(c) for c in names)} in the header "
                f"(found: {', '.join(header)})"
            )
        found[field] = index
    return found


def iter_csv(
    text: str, name: str, bad: BadRows, columns: Columns, delimiter: str = ","
) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a CSV file with a header line, as ``(line where the row starts, {field: value})``.

    ``columns`` maps each wanted field to its accepted column names. Quoted fields may span lines. A row
    whose field count differs from the header's, or that breaks CSV quoting, goes to ``bad``; blank lines
    are ignored; a header without a wanted column raises DataError.
    """
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header: list[str] | None = None
    where: dict[str, int] = {}
    end = 0  # last physical line consumed so far
    while True:
        start = end + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            end = reader.line_num
            bad.add(start, f"broken CSV quoting ({exc})")
            continue
        end = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if header is None:
            header = [h.strip() for h in row]
            where = _header_map(name, start, header, columns)
            continue
        if len(row) != len(header):
            bad.add(start, f"expected {len(header)} fields ({delimiter.join(header)}), found {len(row)}")
            continue
        yield start, {field: row[i] for field, i in where.items()}
    if header is None:
        raise DataError(f"{name}: empty file (expected a header line and data rows)")


def iter_tsv(text: str, name: str, bad: BadRows, columns: Columns) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a GLUE-style TSV file (header line, tab-separated, no quoting) as ``(line, {field: value})``;
    ``columns`` as in :func:`iter_csv`."""
    header: list[str] | None = None
    where: dict[str, int] = {}
    for number, raw in enumerate(lines(text), start=1):
        if not raw.strip():
            continue
        fields = raw.split("\t")
        if header is None:
            header = [h.strip() for h in fields]
            where = _header_map(name, number, header, columns)
            continue
        if len(fields) != len(header):
            bad.add(
                number,
                f"expected {len(header)} tab-separated fields ({', '.join(header)}), found {len(fields)}",
            )
            continue
        yield number, {field: fields[i] for field, i in where.items()}
    if header is None:
        raise DataError(f"{name}: empty file (expected a header line and data rows)")


_WS = re.compile(r"\s*")


def iter_json_records(text: str, name: str) -> Iterator[tuple[int, str, Any]]:
    """Records of a JSON file as ``(line where the record starts, key or index, value)``.

    Accepts an object of records (``{"0": {...}, "1": {...}}``, the GLUE subsets' layout), a list of records,
    or JSON Lines (one record per line). Broken JSON syntax raises DataError with its line.
    """
    decoder = json.JSONDecoder()
    counted = [0, 1]  # [position, line at that position]: line numbers computed incrementally

    def line_at(pos: int) -> int:
        counted[1] += text.count("\n", counted[0], pos)
        counted[0] = pos
        return counted[1]

    def decode(pos: int) -> tuple[Any, int]:
        try:
            return decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise DataError(f"{name}: line {exc.lineno}: broken JSON ({exc.msg})") from exc

    def expect(pos: int, chars: str) -> int:
        pos = _WS.match(text, pos).end()
        if pos >= len(text) or text[pos] not in chars:
            got = repr(text[pos]) if pos < len(text) else "end of file"
            raise DataError(
                f"{name}: line {line_at(pos)}: broken JSON (expected {' or '.join(chars)}, got {got})"
            )
        return pos

    pos = _WS.match(text).end()
    if pos == len(text):
        return
    first, after = decode(pos)
    rest = _WS.match(text, after).end()
    if rest == len(text) and isinstance(first, dict | list) and not _looks_like_record(first):
        # One document holding all records: walk it again to know where each record starts.
        closing = "}" if isinstance(first, dict) else "]"
        pos = _WS.match(text, pos + 1).end()
        index = 0
        if text[pos] == closing:
            return
        while True:
            key = str(index)
            if closing == "}":
                key, pos = decode(_WS.match(text, pos).end())
                pos = expect(pos, ":") + 1
            start = _WS.match(text, pos).end()
            value, pos = decode(start)
            yield line_at(start), str(key), value
            index += 1
            pos = expect(pos, "," + closing)
            if text[pos] == closing:
                return
            pos += 1
    # JSON Lines.
    for number, raw in enumerate(lines(text), start=1):
        if raw.strip():
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise DataError(f"{name}: line {number}: broken JSON ({exc.msg})") from exc
            yield number, str(number), value


def _looks_like_record(value: dict | list) -> bool:
    """A single JSON Lines record (an object of plain fields) rather than a container of records."""
    return isinstance(value, dict) and bool(value) and not any(isinstance(v, dict) for v in value.values())
