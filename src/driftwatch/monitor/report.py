"""Evidence for drift: Evidently's HTML/JSON report of a window's row sample against the reference's, and the
record kept with every automatic retrain decision.

driftwatch decides on its own statistics (monitor.stats); Evidently's report is the human-readable second
opinion. Evidently and pandas load only here, only when a report is made (``pip install 'driftwatch[report]'``).
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from driftwatch.errors import ReportError
from driftwatch.monitor.features import CATEGORICAL, COLUMNS, NUMERIC

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    json: Path
    drifted_columns: int
    columns: int


def evidently_report(reference_rows: Sequence[Sequence], current_rows: Sequence[Sequence], out_dir: Path, stem: str,
                     title: str = "") -> ReportFiles:
    """Run Evidently's DataDriftPreset on two row samples (columns in ``COLUMNS`` order); write ``stem``.html/.json."""
    if not reference_rows:
        raise ReportError("the reference profile has no row sample (it predates samples): rebuild it with "
                          "`driftwatch baseline`")
    if not current_rows:
        raise ReportError("the window has no rows yet (or monitor.report_sample is 0)")
    try:
        import pandas as pd
        from evidently import DataDefinition, Dataset, Report
        from evidently.presets import DataDriftPreset
    except ImportError as exc:
        raise ReportError(f"Evidently reports need the report extra: pip install 'driftwatch[report]' ({exc})") from None

    definition = DataDefinition(numerical_columns=list(NUMERIC), categorical_columns=list(CATEGORICAL))

    def dataset(rows: Sequence[Sequence]) -> Dataset:
        return Dataset.from_pandas(pd.DataFrame([list(r) for r in rows], columns=list(COLUMNS)),
                                   data_definition=definition)

    with warnings.catch_warnings():  # numpy's divide warnings on constant columns, inside Evidently
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = Report([DataDriftPreset()]).run(dataset(current_rows), dataset(reference_rows))
    if title:
        snapshot.set_name(title)
    out_dir.mkdir(parents=True, exist_ok=True)
    html, js = out_dir / f"{stem}.html", out_dir / f"{stem}.json"
    snapshot.save_html(str(html))
    snapshot.save_json(str(js))
    count = next((m["value"] for m in snapshot.dict()["metrics"] if m["metric_name"].startswith("DriftedColumnsCount")),
                 {"count": float("nan")})
    return ReportFiles(html, js, int(count["count"]), len(COLUMNS))


def write_evidence(out_dir: Path, decision_id: int, adapter_view, reference, rows: Sequence[Sequence],
                   reasons: Sequence[str]) -> Path:
    """Keep what a retrain decision rested on: driftwatch's own verdicts and quality signals (always) and
    Evidently's report on the same window (when the extra is installed). Returns the JSON record's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"decision-{decision_id}"
    record = {
        "decision_id": decision_id,
        "written_at": time.time(),
        "adapter": adapter_view.adapter,
        "reasons": list(reasons),
        "reference_version": reference.content_hash if reference is not None else None,
        "window": {"events": adapter_view.window_events, "closed": adapter_view.window_closed,
                   "sampled_rows": len(rows)},
        "quality": {k: getattr(adapter_view, k) for k in ("error_ratio", "refusal_rate", "empty_rate", "distinct_1",
                                                           "distinct_2", "negative_feedback_ratio", "feedback_count")},
        "drift": {name: asdict(v) for name, v in sorted(adapter_view.drift.items())},
    }
    try:
        files = evidently_report(reference.sample if reference is not None else [], rows, out_dir,
                                 f"{stem}.evidently", title=f"driftwatch decision {decision_id}: {adapter_view.adapter}")
        record["evidently"] = {"html": files.html.name, "json": files.json.name,
                               "drifted_columns": files.drifted_columns, "columns": files.columns}
    except ReportError as exc:
        record["evidently"] = {"error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - a third-party failure must not lose driftwatch's own record
        log.exception("Evidently report for decision %d failed", decision_id)
        record["evidently"] = {"error": f"{type(exc).__name__}: {exc}"}
    path = out_dir / f"{stem}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str))
    tmp.replace(path)
    return path
