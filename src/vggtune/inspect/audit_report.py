"""``report.html``: the audit's findings as rows of thumbnails, one tab each, readable without a server.

The thumbnails are embedded (small JPEGs as data URIs), so the file can be mailed or opened from
a laptop; each row links to the image file itself (``file://``) for a full-size look.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path
from string import Template

from vggtune.core.files import atomic_open
from vggtune.data.images import load_rgb

TEMPLATE = Path(__file__).with_name("audit_report.html")
THUMB = 96  # pixels, the longer side


@dataclass(frozen=True)
class ReportRow:
    """One image in the report: its file, the path shown, its subset and given label, and what was found."""

    file: Path
    shown: str
    subset: str
    label: str
    note: str


def thumbnail_uri(path: Path) -> str:
    """A small JPEG of the image as a ``data:`` URI (an empty string when the file cannot be decoded)."""
    try:
        im = load_rgb(path)
    except Exception:  # noqa: BLE001 - the row stays, without its picture
        return ""
    im.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _image(row: ReportRow) -> str:
    src = thumbnail_uri(row.file)
    link = html.escape(row.file.absolute().as_uri())
    return f'<a href="{link}"><img src="{src}" alt="{html.escape(row.shown)}"></a>'


def _who(row: ReportRow) -> str:
    link = html.escape(row.file.absolute().as_uri())
    return (
        f'<div>given <b class="given">{html.escape(row.label)}</b> ({html.escape(row.subset)})</div>'
        f'<div class="file"><a href="{link}">{html.escape(row.shown)}</a></div>'
    )


def _rows(rows: list[ReportRow], empty: str) -> str:
    if not rows:
        return f'<p class="empty">{empty}</p>'
    return "\n".join(
        f'<div class="row" data-path="{html.escape(r.shown)}"><span class="rank">{k}</span>{_image(r)}<div class="what">{_who(r)}'
        f'<div class="note">{html.escape(r.note)}</div></div></div>'
        for k, r in enumerate(rows, 1)
    )


def _pairs(pairs: list[tuple[ReportRow, ReportRow, str]]) -> str:
    if not pairs:
        return '<p class="empty">No exact or near copies at this threshold.</p>'
    out = []
    for k, (a, b, note) in enumerate(pairs, 1):
        what = "what flag" if ":" in note else "what"  # one class attribute: a browser ignores a second one
        paths = html.escape(f"{a.shown} {b.shown}")
        out.append(
            f'<div class="row pair" data-paths="{paths}"><span class="rank">{k}</span><div class="side">{_image(a)}{_who(a)}</div>'
            f'<div class="side">{_image(b)}{_who(b)}</div><div class="{what}">{html.escape(note)}</div></div>'
        )
    return "\n".join(out)


def _classes(per_class: dict[str, dict]) -> str:
    head = "<tr><th>class</th><th>images</th><th>suspected errors</th><th>in duplicate pairs</th><th>outliers</th></tr>"
    body = "".join(
        f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{v}</td>" for v in c.values()) + "</tr>"
        for name, c in per_class.items()
    )
    return f"<table>{head}{body}</table>"


def write_report(
    path: Path,
    summary: dict,
    issues: list[ReportRow],
    pairs: list[tuple[ReportRow, ReportRow, str]],
    outliers: list[ReportRow],
) -> None:
    """Write ``report.html``: rows sorted as given (most likely problem first), one tab per kind of finding."""
    counts = summary["counts"]
    about = (
        f"{summary['images']} images, {len(summary['classes'])} classes, from {summary['data_root']}. "
        f"Probabilities: {summary['folds']} folds, a {summary['head']} each on the {summary['vectors']} vectors of "
        f"{summary['network']} (out-of-fold accuracy {summary['out_of_fold_accuracy']:.3f}). Near copies: cosine "
        f"similarity at least {summary['near_duplicate_threshold']}. Each list shows its first {len(issues)}, "
        f"{len(pairs)}, {len(outliers)} rows; the CSV files beside this page hold them all."
    )
    page = Template(TEMPLATE.read_text(encoding="utf-8")).substitute(
        title=html.escape(Path(summary["data_root"]).name),
        about=html.escape(about),
        n_issues=counts["label_issues"],
        n_pairs=counts["duplicate_pairs"],
        n_outliers=counts["outliers"],
        issues=_rows(issues, "No likely label errors found."),
        pairs=_pairs(pairs),
        outliers=_rows(outliers, "No outliers or odd images found."),
        classes=_classes(summary["per_class"]),
    )
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(page)
