"""The per-case review form and the review CSV it produces (schema: data_manifests/reviews/README.md).

The form is plain HTML with a little JavaScript, so it works the same in Jupyter and in the self-contained HTML
report that a reviewer opens without Jupyter: a verdict (agree / disagree / unsure), a corrected label, an
"unusable" box and a comment per case; "Download review CSV" saves ``<run id>.csv``, which goes in
``data_manifests/reviews/`` and back into training as ``data.reviews=data_manifests/reviews/<run id>.csv``.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

from medtl.atomic import write_csv_atomic
from medtl.data.reviews import REVIEW_COLUMNS

__all__ = ["review_template", "write_review_template", "review_form_html", "REVIEWS_FOLDER"]

REVIEWS_FOLDER = Path("data_manifests") / "reviews"


def review_template(cases: pd.DataFrame, run_id: str) -> pd.DataFrame:
    """An empty review file for ``cases`` (``case, label, pred``...): the schema's columns, verdicts blank."""
    template = pd.DataFrame({column: "" for column in REVIEW_COLUMNS}, index=range(len(cases)))
    template["case"] = list(cases["case"])
    template["run_id"] = run_id
    template["unusable"] = "false"
    template["run_label"] = list(cases["label"])  # the label the run had, and its prediction: for reference only
    template["run_pred"] = list(cases["pred"])
    return template


def write_review_template(cases: pd.DataFrame, run_id: str, path: str | Path) -> Path:
    """Write :func:`review_template` atomically (never over an existing file: reviews already made stay)."""
    path = Path(path)
    if path.exists():
        return path
    return write_csv_atomic(review_template(cases, run_id), path)


def review_form_html(cases: pd.DataFrame, classes: list[str], run_id: str) -> str:
    """The form for ``cases`` (``case, label, pred``, and ``group`` when ordered for review) as an HTML string."""
    options = "".join(f'<option value="{html.escape(c)}">{html.escape(c)}</option>' for c in ["", *classes])
    rows = []
    for index, row in enumerate(cases.to_dict("records")):
        name = f"v{index}"
        verdicts = "".join(f'<label><input type="radio" name="{name}" value="{v}"> {v}</label> '
                           for v in ("agree", "disagree", "unsure"))
        rows.append(
            f'<tr data-case="{html.escape(str(row["case"]))}"><td>{index + 1}</td><td><code>{html.escape(str(row["case"]))}'
            f'</code></td><td>{html.escape(str(row.get("group", "")))}</td><td>{html.escape(str(row["label"]))}</td>'
            f'<td>{html.escape(str(row["pred"]))}</td><td class="verdict">{verdicts}</td>'
            f'<td><select class="corrected">{options}</select></td><td><input type="checkbox" class="unusable"></td>'
            f'<td><input type="text" class="comment" size="24"></td></tr>')
    header = "".join(f"<th>{h}</th>" for h in ("#", "case", "why shown", "truth", "model", "your verdict",
                                               "corrected label", "unusable", "comment"))
    return _FORM.format(run=html.escape(run_id), header=header, rows="\n".join(rows),
                        columns=json.dumps(list(REVIEW_COLUMNS)), run_json=json.dumps(run_id))


_FORM = """
<div class="medtl-review-form">
<p>Reviewer: <input type="text" id="medtl-reviewer" size="20" placeholder="your name or initials"></p>
<table class="medtl-review" style="font-size:0.85em"><thead><tr>{header}</tr></thead><tbody>
{rows}
</tbody></table>
<p><button type="button" id="medtl-download">Download review CSV</button>
saves <code>{run}.csv</code>: put it in <code>data_manifests/reviews/</code> and train with
<code>data.reviews=data_manifests/reviews/{run}.csv</code>.</p>
</div>
<script>
(function () {{
  const columns = {columns};
  const quote = (v) => /[",\\n]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v;
  function reviewCsv() {{
    const reviewer = document.getElementById("medtl-reviewer").value;
    const lines = [columns.join(",")];
    document.querySelectorAll("table.medtl-review tbody tr").forEach((tr) => {{
      const checked = tr.querySelector(".verdict input:checked");
      const row = {{case: tr.dataset.case, verdict: checked ? checked.value : "",
                   corrected_label: tr.querySelector(".corrected").value,
                   unusable: tr.querySelector(".unusable").checked ? "true" : "false",
                   comment: tr.querySelector(".comment").value, reviewer: reviewer, run_id: {run_json}}};
      lines.push(columns.map((c) => quote(String(row[c] || ""))).join(","));
    }});
    return lines.join("\\n") + "\\n";
  }}
  window.medtlReviewCsv = reviewCsv;
  document.getElementById("medtl-download").addEventListener("click", () => {{
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([reviewCsv()], {{type: "text/csv"}}));
    link.download = {run_json} + ".csv";
    document.body.appendChild(link);
    link.click();
    link.remove();
  }});
}})();
</script>
"""
