"""The quick tier's line coverage per module of src/vggtune, and a floor every module must reach.

    python -m pytest -m "not slow" --cov=vggtune --cov-report=json:quick-coverage.json
    python tests/quick_coverage.py quick-coverage.json            # the table (markdown); exit 1 under the floor

"Covers every module at unit level" (CONTRIBUTING.md) means: every module is imported by the quick tier and
its main logic runs there. The floor, MINIMUM, is the line share below which a module's main path cannot have
run (a module's imports, docstrings and signatures alone are 20-35% of its lines); modules that only start
processes (LitServe's worker loop, the server's signal handlers) are listed in EXEMPT with the reason, and
their slow tests are named there. Not a file pytest collects (no test_ prefix): the coverage run writes its
JSON at the end of the session, after any test could read it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MINIMUM = 50  # percent of a module's statements
EXEMPT = {
    # run_server: signal handlers and LitServer.run, in the server process (tests/test_serve.py, slow)
    "vggtune/serve/server.py": 45,
}


def table(report: dict) -> list[tuple[str, int, int, float]]:
    """(module, statements, missed, percent) for every file of the package, by path."""
    rows = []
    for path, data in sorted(report["files"].items()):
        name = path[path.index("vggtune/") :] if "vggtune/" in path else path
        s = data["summary"]
        rows.append((name, s["num_statements"], s["missing_lines"], s["percent_covered"]))
    return rows


def main(argv: list[str]) -> int:
    report = json.loads(Path(argv[1] if len(argv) > 1 else "quick-coverage.json").read_text())
    rows = table(report)
    src = Path(__file__).resolve().parents[1] / "src"
    modules = {p.relative_to(src).as_posix() for p in (src / "vggtune").rglob("*.py")}
    never = sorted(modules - {name for name, *_ in rows})
    print("| module | statements | missed | covered |\n|---|---:|---:|---:|")
    for name, statements, missed, percent in rows:
        print(f"| `{name.removeprefix('vggtune/')}` | {statements} | {missed} | {percent:.0f}% |")
    total = report["totals"]
    print(f"| **all** | {total['num_statements']} | {total['missing_lines']} | {total['percent_covered']:.0f}% |")
    low = [(n, p) for n, s, _, p in rows if s and p < EXEMPT.get(n, MINIMUM)]
    for name in never:
        print(f"never imported by the quick tier: {name}", file=sys.stderr)
    for name, percent in low:
        print(f"under the floor ({EXEMPT.get(name, MINIMUM)}%): {name} {percent:.0f}%", file=sys.stderr)
    return 1 if never or low else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
