"""One JSON file per run spec, named by the spec's id, written atomically, with a content checksum."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gfss_bench.paths import atomic_write_text

SCHEMA_VERSION = 3  # 2 added `method_label` and `benchmark_info`, 3 `segmenter_label` (see results/describe.py)
READABLE_SCHEMA_VERSIONS = (1, 2, 3)  # older files load as they are; reports fall back for the missing fields
PARTIAL_SUFFIX = ".partial.json"


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
        result = dict(result, schema_version=SCHEMA_VERSION)
        result["checksum"] = content_checksum(result)
        path = self.path_for(result["run_id"])
        atomic_write_text(path, json.dumps(result, indent=1, sort_keys=True) + "\n")
        return path

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
            partial = self.load(path)
        except ValueError:
            return None
        return partial if partial.get("run_id") == run_id and partial.get("partial") is True else None

    def remove_partial(self, run_id: str) -> None:
        self.partial_path_for(run_id).unlink(missing_ok=True)

    def load(self, path: Path) -> dict:
        """Read and verify one result file; raises ValueError with the reason when it cannot be trusted."""
        try:
            result = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot be read as JSON ({error})") from None
        if not isinstance(result, dict) or result.get("schema_version") not in READABLE_SCHEMA_VERSIONS:
            raise ValueError(f"schema version {result.get('schema_version') if isinstance(result, dict) else None!r}"
                             f" is not one of {', '.join(map(str, READABLE_SCHEMA_VERSIONS))}")
        if result.get("checksum") != content_checksum(result):
            raise ValueError("checksum mismatch: the file was modified or truncated")
        return result

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
