"""Writing ``results.json`` (merged with what another invocation wrote there) and what is
drawn from it: ``results.md``, ``precision.md`` and the plot."""

import datetime
import json
import os

from quality.common import PLOT_FILE, PRECISION_FILE
from quality.plots import plot_curves
from quality.precision import render_precision
from quality.report import render_markdown
from quality.summary import checks, paired, summarize


def write_outputs(results, out):
    """Writes results.json/.md, merged with what another invocation wrote there meanwhile
    (runs by name; the throughput and most-popular sections when this one has none)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    if path.exists():
        try:
            disk = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            disk = {}
        # Another invocation may have rerun a run this one loaded at its start: the record
        # made last wins (records without a time are older than any with one).
        for name, rec in disk.get("runs", {}).items():
            mine = results["runs"].get(name)
            if mine is None or rec.get("recorded", "") > mine.get("recorded", ""):
                results["runs"][name] = rec
        for key in ("throughput", "most_popular", "settings"):
            if key not in results and key in disk:
                results[key] = disk[key]
    results["summary"] = summarize(results)
    results["checks"] = checks(results["summary"])
    results["paired"] = paired(results)
    results["updated"] = datetime.datetime.now().isoformat(timespec="seconds")
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(tmp, out / "results.json")
    (out / "results.md").write_text(render_markdown(results))
    precision = render_precision(results)
    if precision is not None:
        (out / PRECISION_FILE).write_text(precision)
    plot_curves(results, out / PLOT_FILE)
