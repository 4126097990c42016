"""One JSON file per run spec, named by the spec's id, written atomically, with a content checksum.

A file that cannot be trusted (not a regular file, larger than `MAX_RESULT_BYTES`, truncated, nested too deep, a
wrong checksum or schema version, a missing or mistyped field) is "damaged": `load` raises ValueError with the
reason, `load_all` lists it as an `UnreadableResult`, and `set_aside` renames it out of the way (never deletes it).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from gfss_bench.paths import atomic_write_bytes, atomic_write_text, check_writable_folder
from gfss_bench.userfiles import InputProblem, parse_json, quote, read_regular

SCHEMA_VERSION = 3  # 2 added `method_label` and `benchmark_info`, 3 `segmenter_label` (see results/describe.py)
READABLE_SCHEMA_VERSIONS = (1, 2, 3)  # older files load as they are; reports fall back for the missing fields
PARTIAL_SUFFIX = ".partial.json"
DAMAGED_SUFFIX = ".damaged"  # `<run_id>.json.damaged-<UTC time>`: a damaged result set aside (not *.json)
MAX_RESULT_BYTES = 64 << 20  # a COCO-20i result of 5 runs is about 0.3 MiB
QUERIES_SUFFIX = ".queries.json.gz"  # `<run_id>.queries.json.gz`: the per-query records of `<run_id>.json`
MAX_QUERIES_BYTES = 256 << 20  # uncompressed; 5 COCO-20i runs of 10000 queries are about 12 MiB


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def content_checksum(result: dict) -> str:
    body = {k: v for k, v in result.items() if k != "checksum"}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


@dataclass(frozen=True)
class UnreadableResult:
    path: Path
    reason: str


class ResultStore:
    """A folder of `<run_id>.json` files; no index file, so concurrent writers never conflict."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def path_for(self, run_id: str) -> Path:
        return self.root / f"{run_id}.json"

    def contains(self, run_id: str) -> bool:
        return self.path_for(run_id).is_file()

    def save(self, result: dict) -> Path:
        """Write `<run_id>.json`. Per-query records (`runs[i]["queries"]`) go first to the sidecar
        `<run_id>.queries.json.gz`, whose checksum the result then holds (`query_records`), so the result's own
        checksum covers them too."""
        result, sidecar = split_query_records(result)
        if sidecar is not None:
            sidecar["checksum"] = content_checksum(sidecar)
            atomic_write_bytes(self.queries_path_for(result["run_id"]),
                               gzip.compress(canonical_json(sidecar).encode(), mtime=0))
            result["query_records"] = {"file": self.queries_path_for(result["run_id"]).name,
                                       "checksum": sidecar["checksum"],
                                       "runs": [run["run"] for run in sidecar["runs"]]}
        result = dict(result, schema_version=SCHEMA_VERSION)
        result["checksum"] = content_checksum(result)
        path = self.path_for(result["run_id"])
        atomic_write_text(path, json.dumps(result, indent=1, sort_keys=True) + "\n")
        return path

    def queries_path_for(self, run_id: str) -> Path:
        return self.root / f"{run_id}{QUERIES_SUFFIX}"

    def load_query_records(self, result: dict) -> Optional[list[dict]]:
        """The per-query records of a stored result, one `{"run", "queries"}` per run that has them; None for a
        result stored without them. ValueError with the reason when the sidecar is missing, damaged or is not the
        one the result's checksum covers."""
        info = result.get("query_records")
        if info is None:
            return None
        path = self.queries_path_for(result["run_id"])
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(read_regular(path, MAX_QUERIES_BYTES)), mode="rb") as handle:
                data = handle.read(MAX_QUERIES_BYTES + 1)
            if len(data) > MAX_QUERIES_BYTES:
                raise ValueError(f"{path.name} holds more than {MAX_QUERIES_BYTES >> 20} MiB")
            sidecar = parse_json(data)
        except (OSError, EOFError, zlib.error, InputProblem) as error:  # BadGzipFile is an OSError
            reason = getattr(error, "strerror", None) or error
            raise ValueError(f"{path.name} cannot be read: {reason}") from None
        if not isinstance(sidecar, dict) or sidecar.get("checksum") != info.get("checksum") \
                or content_checksum(sidecar) != sidecar.get("checksum"):
            raise ValueError(f"{path.name} is not the per-query file of this result (checksum mismatch)")
        problem = _query_runs_problem(sidecar.get("runs"))
        if problem:
            raise ValueError(f"{path.name}: {problem}")
        return sidecar["runs"]

    def partial_path_for(self, run_id: str) -> Path:
        return self.root / f"{run_id}{PARTIAL_SUFFIX}"

    def save_partial(self, run_id: str, spec: dict, runs: list[dict], extra: dict | None = None) -> Path:
        """Checkpoint of a spec's completed runs (written atomically after every run; deleted by the runner
        once the final result is stored). Carries the same schema version and checksum as a result."""
        body = dict(extra or {}, run_id=run_id, spec=spec, runs=runs, schema_version=SCHEMA_VERSION, partial=True)
        body["checksum"] = content_checksum(body)
        path = self.partial_path_for(run_id)
        atomic_write_text(path, json.dumps(body, sort_keys=True) + "\n")
        return path

    def load_partial(self, run_id: str) -> dict | None:
        """The checkpoint of `run_id`, or None when there is none or it cannot be trusted."""
        path = self.partial_path_for(run_id)
        if not path.is_file():
            return None
        try:
            partial = self._read_verified(path)
        except ValueError:
            return None
        return partial if partial.get("run_id") == run_id and partial.get("partial") is True else None

    def remove_partial(self, run_id: str) -> None:
        self.partial_path_for(run_id).unlink(missing_ok=True)

    def _read_verified(self, path: Path) -> dict:
        """A regular file of at most MAX_RESULT_BYTES holding JSON with a readable schema version and a matching
        checksum; ValueError with the reason otherwise."""
        try:
            result = parse_json(read_regular(path, MAX_RESULT_BYTES))
        except OSError as error:
            raise ValueError(f"cannot be read ({error.strerror or error})") from None
        except InputProblem as problem:
            raise ValueError(f"cannot be read as JSON: it {problem}") from None
        version = result.get("schema_version") if isinstance(result, dict) else None
        if isinstance(version, bool) or version not in READABLE_SCHEMA_VERSIONS:
            raise ValueError(f"schema version {quote(version, 40)} is not one of "
                             f"{', '.join(map(str, READABLE_SCHEMA_VERSIONS))}")
        try:
            checksum = content_checksum(result)
        except (TypeError, ValueError, RecursionError):
            checksum = None
        if result.get("checksum") != checksum:
            raise ValueError("checksum mismatch: the file was modified or truncated")
        return result

    def load(self, path: Path, run_id: Optional[str] = None) -> dict:
        """Read and verify one result file (and, with `run_id`, that it holds that spec's result); raises
        ValueError with the reason when it cannot be trusted."""
        result = self._read_verified(Path(path))
        problem = result_problem(result)
        if problem:
            raise ValueError(problem)
        if run_id is not None and result["run_id"] != run_id:
            raise ValueError(f"holds the result of run id {result['run_id'][:40]}, not {run_id}")
        return result

    def state(self, run_id: str) -> str:
        """stored (a result that loads), damaged (a file that does not), partial (a checkpoint) or missing."""
        if os.path.lexists(self.path_for(run_id)):
            try:
                self.load(self.path_for(run_id), run_id)
                return "stored"
            except ValueError:
                return "damaged"
        return "partial" if self.partial_path_for(run_id).exists() else "missing"

    def set_aside(self, path: Path) -> Optional[Path]:
        """Rename a damaged file to `<name>.damaged-<UTC time>` next to it (never deleted; `load_all` no longer
        reads it); the new path, or None when it could not be renamed (gone already, or a read-only folder)."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        target = Path(path).with_name(f"{Path(path).name}{DAMAGED_SUFFIX}-{stamp}")
        try:
            os.rename(path, target)
        except OSError:
            return None
        return target

    def check_writable(self) -> None:
        """Create and remove a probe file in the folder (or where it will be created); a GFSSError naming the folder
        when that fails (called before any work whose results could not be stored)."""
        check_writable_folder(self.root, "results folder", "pass a writable --results-dir")

    def load_all(self) -> tuple[list[dict], list[UnreadableResult]]:
        results, problems = [], []
        if not self.root.is_dir():
            return results, problems
        for path in sorted(self.root.glob("*.json")):
            if path.name.endswith(PARTIAL_SUFFIX):
                continue  # a checkpoint of a run in progress (or killed), not a result
            try:
                results.append(self.load(path))
            except ValueError as error:
                problems.append(UnreadableResult(path, str(error)))
        return results, problems


def split_query_records(result: dict) -> tuple[dict, Optional[dict]]:
    """The result without its runs' per-query records, and those records as a sidecar body (None when no run has
    any)."""
    runs = result.get("runs") or []
    if not any(isinstance(run, dict) and "queries" in run for run in runs):
        return result, None
    sidecar = {"run_id": result["run_id"],
               "runs": [{"run": run["run"], "queries": run["queries"]} for run in runs if "queries" in run]}
    stripped = [{k: v for k, v in run.items() if k != "queries"} for run in runs]
    return dict(result, runs=stripped), sidecar


def _query_runs_problem(runs: Any) -> Optional[str]:
    if not isinstance(runs, list):
        return "'runs' is not a list"
    for run in runs:
        queries = run.get("queries") if isinstance(run, dict) else None
        if not _is_int(run.get("run") if isinstance(run, dict) else None) or not isinstance(queries, list):
            return "a run is not a mapping with an integer 'run' and a list of 'queries'"
        for query in queries:
            if not (isinstance(query, dict) and isinstance(query.get("query"), str)
                    and all(isinstance(query.get(key), list) and all(_is_int(v) and v >= 0 for v in query[key])
                            for key in ("classes", "intersection", "union"))
                    and len(query["classes"]) == len(query["intersection"]) == len(query["union"])):
                return f"run {run['run']} holds a malformed query record"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _runs_problem(runs: Any, classes: Optional[int]) -> Optional[str]:
    if not isinstance(runs, list):
        return "'runs' is not a list"
    for number, run in enumerate(runs):
        if not isinstance(run, dict) or not _is_int(run.get("run")):
            return f"runs[{number}] is not a mapping with an integer 'run'"
        run_scores = run.get("scores", {})
        if not isinstance(run_scores, dict) or not all(_is_number(v) for v in run_scores.values()):
            return f"runs[{number}].scores is not a mapping of numbers"
        confusion = run.get("confusion")
        if confusion is not None:
            size = len(confusion) if isinstance(confusion, list) else -1
            if (size < 1 or (classes is not None and size != classes)
                    or not all(isinstance(row, list) and len(row) == size and all(_is_int(v) for v in row)
                               for row in confusion)):
                return f"runs[{number}].confusion is not a square matrix of integers, one row per episode class"
    return None


def result_problem(result: dict) -> Optional[str]:
    """What is missing or mistyped in a result for the reports (None when nothing): the fields they read."""
    if not isinstance(result.get("run_id"), str):
        return "'run_id' is missing or not a string"
    spec = result.get("spec")
    if not isinstance(spec, dict):
        return "'spec' is missing or not a mapping"
    for key in ("method", "benchmark", "protocol", "convention", "segmenter"):
        if not isinstance(spec.get(key), str):
            return f"spec.{key} is missing or not a string"
    for key in ("fold", "shot", "runs", "seed"):
        if not _is_int(spec.get(key)):
            return f"spec.{key} is missing or not an integer"
    for key, kinds in (("method_options", dict), ("evaluation", (dict, type(None))), ("episodes", str),
                       ("feature_precision", str)):
        if key in spec and not isinstance(spec[key], kinds):
            return f"spec.{key} has the wrong type"
    if any(key in spec and not _is_int(spec[key]) for key in ("protocol_version", "method_version")):
        return "spec.protocol_version or spec.method_version is not an integer"
    aggregate = result.get("aggregate")
    if not isinstance(aggregate, dict) or not all(
            isinstance(v, dict) and all(_is_number(x) for x in v.values()) for v in aggregate.values()):
        return "'aggregate' is missing or not a mapping of {mean, std} numbers"
    names = result.get("class_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        return "'class_names' is not a list of strings"
    ids = result.get("class_ids")
    if ids is not None and not (isinstance(ids, list) and all(_is_int(i) for i in ids)
                                and (names is None or len(ids) == len(names))):
        return "'class_ids' is not a list of integers, one per class name"
    if any(key in result and not _is_int(result[key]) for key in ("num_base", "num_novel")):
        return "'num_base' or 'num_novel' is not an integer"
    for key, kinds in (("method_label", str), ("segmenter_label", str), ("provenance", dict),
                       ("benchmark_info", dict), ("skipped_images", list), ("query_records", dict)):
        if result.get(key) is not None and not isinstance(result[key], kinds):
            return f"{key!r} has the wrong type"
    folds = (result.get("benchmark_info") or {}).get("num_folds")
    if folds is not None and not _is_int(folds):
        return "benchmark_info.num_folds is not an integer"
    return _runs_problem(result.get("runs", []), len(names) if isinstance(names, list) else None)
