"""The results folder's Parquet files (record shards, the series table), made and read in a
short-lived child process: ``python -m clinreadnet_cli.engine.tables``.

Arrow's libraries stay in a process to its end: 22 MiB resident once imported, 43 MiB once a table
is written (their code, allocator and threads). A DICOM node, or ``score-archive`` over many
series, would carry them through every later inference peak, above ``score`` on the same files.
In a child they are held only while a table is written (about 0.3 s a call, start-up included).
The child imports Arrow and nothing of clinreadnet beyond this module, ``child`` and ``atomic``.

Rows travel as JSON lines (made by the caller: NaN and infinity as null, as in score's JSON) and
are parsed by Arrow's own reader against an explicit schema. A schema is a ``Spec``, plain data:
(column, type name) pairs. The child reads one JSON header line (the request) and then the rows
from stdin, and answers one JSON object on stdout: ``{"error": ..., "kind": "os" | "value" | "other"}``
where the request could not be done.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

from ..child import module_command

Spec = list[tuple[str, str]]  # (column, "string" | "int64" | "float64" | "bool" | "list<float64>")


# --- in the caller ------------------------------------------------------------------------------

def write_table(path: Path, lines: bytes, spec: Spec) -> None:
    """The rows ``lines`` (JSON lines) as the Parquet file ``path`` of schema ``spec``, whole or not at all."""
    _ask({"op": "write", "path": str(path), "spec": spec, "rows": lines.count(b"\n")}, lines)


def column_names(path: Path) -> list[str]:
    """The columns of the Parquet file ``path``; ValueError or OSError where it cannot be read."""
    return _ask({"op": "columns", "path": str(path)})["names"]


def keep_owned_rows(folder: Path, groups: dict[str, str]) -> None:
    """Keep in each ``folder/part-<group>-<k>.parquet`` only the rows of the units ``groups`` maps
    to that group: other rows go, and a file left without rows is removed."""
    if any(folder.glob("*.parquet")):  # nothing to start a child for in a new folder
        _ask({"op": "keep", "folder": str(folder), "groups": groups})


class TableError(RuntimeError):
    """The child stopped without an answer, or failed for a reason that is neither a file's (OSError)
    nor a table's content (ValueError)."""


def _ask(request: dict, payload: bytes = b"") -> dict:
    done = subprocess.run(module_command(__name__), input=json.dumps(request).encode() + b"\n" + payload,
                          capture_output=True)
    try:
        answer = json.loads(done.stdout)
    except ValueError:
        last = (done.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise TableError(f"the Parquet writer stopped (exit {done.returncode}): {last}") from None
    if "error" in answer:
        raise {"os": OSError, "value": ValueError}.get(answer["kind"], TableError)(answer["error"])
    return answer


# --- in the child (and in Ray's workers, which hold Arrow anyway) --------------------------------

def schema(spec: Spec):
    import pyarrow as pa

    types = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_(),
             "list<float64>": pa.list_(pa.float64())}
    return pa.schema([(name, types[kind]) for name, kind in spec])


def arrow_table(lines: bytes, spec: Spec):
    """JSON lines as an Arrow table of ``spec``: a column a row lacks is null. Not
    ``Table.from_pylist``: pyarrow's conversion of Python objects imports pandas where it is
    installed (about 35 MiB more); the reader costs a fifth of that conversion."""
    import pyarrow.json as pj

    table_schema = schema(spec)
    if not lines.strip():
        return table_schema.empty_table()
    return pj.read_json(io.BytesIO(lines), read_options=pj.ReadOptions(use_threads=False),
                        parse_options=pj.ParseOptions(explicit_schema=table_schema))


def _read_parquet(path: Path, columns: list[str] | None = None):
    """``pq.ParquetFile``: ``pq.read_table`` goes through the dataset module, which imports pandas."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as f:
        return f.read(columns=columns)


def _write_parquet(table, path: Path) -> None:
    import pyarrow.parquet as pq

    from ..atomic import atomic_path

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _keep_owned_rows(folder: Path, groups: dict[str, str]) -> None:
    import pyarrow as pa

    for file in sorted(folder.glob("*.parquet")):
        group = file.stem[len("part-"):].rsplit("-", 1)[0]
        units = _read_parquet(file, columns=["unit"]).column("unit").to_pylist()
        keep = [groups.get(unit) == group for unit in units]
        if all(keep):
            continue
        if not any(keep):
            file.unlink()
            continue
        _write_parquet(_read_parquet(file).filter(pa.array(keep, pa.bool_())), file)


def _answer(request: dict, payload: bytes) -> dict:
    import pyarrow.parquet as pq

    if request["op"] == "write":
        table = arrow_table(payload, request["spec"])
        if table.num_rows != request["rows"]:  # input cut short (the caller killed mid-write)
            raise ValueError(f"{table.num_rows} of {request['rows']} rows arrived")
        _write_parquet(table, Path(request["path"]))
        return {}
    if request["op"] == "columns":
        return {"names": pq.read_schema(request["path"]).names}
    if request["op"] == "keep":
        _keep_owned_rows(Path(request["folder"]), request["groups"])
        return {}
    raise ValueError(f"no such request {request['op']!r}")


def main() -> None:
    header, _, payload = sys.stdin.buffer.read().partition(b"\n")
    try:
        answer = _answer(json.loads(header), payload)
    except OSError as exc:
        answer = {"error": str(exc), "kind": "os"}
    except ValueError as exc:  # pyarrow's ArrowInvalid (a damaged file, rows that do not parse) too
        answer = {"error": str(exc), "kind": "value"}
    except Exception as exc:  # noqa: BLE001 - said to the caller, which raises TableError
        answer = {"error": f"{type(exc).__name__}: {exc}", "kind": "other"}
    sys.stdout.write(json.dumps(answer))
    sys.stdout.flush()  # the answer is out before anything at exit could fail


if __name__ == "__main__":
    main()
