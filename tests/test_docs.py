"""The documentation: the generated config reference matches conf/, every key has a comment (or is on the
list of those still without one), every page is in the site's nav, the README stays short, and the site
builds with ``mkdocs build --strict``, where a link to a missing file fails."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS))
import gen_config_reference  # noqa: E402  (docs/ is not a package)

UNCOMMENTED = Path(__file__).with_name("uncommented_config_keys.txt")


def test_the_config_reference_is_what_conf_generates():
    checked_in = gen_config_reference.PAGE.read_text(encoding="utf-8")
    assert checked_in == gen_config_reference.render(), (
        "docs/reference/config.md is out of date: run python docs/gen_config_reference.py"
    )


def test_the_reference_has_every_task_group_option_and_key():
    page = gen_config_reference.render()
    for task in sorted((ROOT / "conf").glob("*.yaml")):
        assert f"{{#task-{task.stem}}}" in page, task
    for option in sorted((ROOT / "conf").glob("*/*.yaml")):
        assert f"{{#group-{option.parent.name}}}" in page and f"- `{option.stem}`" in page, option
    # a few keys from different depths and kinds of file, by their full override names
    for key in ("data.root", "finetune.unfreeze_at_epoch", "callbacks.progress_bar.every_n_steps", "max_queue"):
        assert f"| `{key}` |" in page, key


def test_a_comment_above_or_beside_a_key_is_its_documentation(tmp_path):
    (tmp_path / "x.yaml").write_text(
        "# The file.\n\n# Above,\n# two lines.\nsize: 3   # and beside\nnested:\n  # inner\n  deep: 'a # b'\nbare: 1\n"
    )
    keys = gen_config_reference.parse(tmp_path / "x.yaml").keys
    assert keys[("size",)].comment == "Above, two lines. and beside"
    assert (keys[("nested", "deep")].value, keys[("nested", "deep")].comment) == ("'a # b'", "inner")
    assert keys[("bare",)].comment == ""
    assert gen_config_reference.parse(tmp_path / "x.yaml").description == "The file."


def test_every_config_key_has_a_comment_or_is_listed_as_lacking_one():
    listed = {line for line in UNCOMMENTED.read_text().splitlines() if line and not line.startswith("#")}
    missing = set(gen_config_reference.missing_comments())
    new = sorted(missing - listed)
    assert not new, f"comment these keys in conf/ (the comment is their documentation): {new}"
    fixed = sorted(listed - missing)
    assert not fixed, f"these keys have a comment now: remove them from {UNCOMMENTED.name}: {fixed}"


def _nav_pages(nav) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [p for value in nav.values() for p in _nav_pages(value)]
    return [p for item in nav for p in _nav_pages(item)]


def test_every_docs_page_is_in_the_nav_and_every_nav_entry_exists():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = _nav_pages(config["nav"])
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert pages <= set(nav), sorted(pages - set(nav))
    for entry in nav:  # repo/<path>: a repository file docs/hooks.py puts into the site
        assert (DOCS / entry).is_file() or (ROOT / entry.removeprefix("repo/")).is_file(), entry


def test_the_readme_fits_in_10_kb():
    assert len((ROOT / "README.md").read_bytes()) <= 10 * 1024


def _build(config_file: Path, site: Path):
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    build(load_config(str(config_file), strict=True, site_dir=str(site)))


@pytest.mark.slow
def test_the_site_builds_strict(tmp_path):
    _build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert (tmp_path / "site" / "reference" / "config" / "index.html").is_file()
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert "vggtune.use.inference" in api and "UserError" in api  # mkdocstrings found src/
    # a figure's source outside docs/ is in the site, and the page links to it there
    assert "vggtune beside fastai" in (tmp_path / "site" / "repo" / "bench" / "index.html").read_text()
    assert 'href="../repo/bench/demo.py"' in (tmp_path / "site" / "getting-started" / "index.html").read_text()


def test_a_link_to_a_missing_repository_file_fails_the_strict_build(tmp_path):
    """docs/hooks.py copies linked repository files into the site; a link to one that is not there fails."""
    from mkdocs.exceptions import Abort

    (tmp_path / "docs").mkdir()
    (tmp_path / "tool.py").write_text("print('hi')\n")
    (tmp_path / "docs" / "index.md").write_text("# Home\n\n[the tool](../tool.py)\n")
    config = tmp_path / "mkdocs.yml"
    config.write_text(f"site_name: t\nhooks: [{DOCS / 'hooks.py'}]\nnav: [index.md]\n")
    _build(config, tmp_path / "site")
    assert 'href="repo/tool.py"' in (tmp_path / "site" / "index.html").read_text()
    assert (tmp_path / "site" / "repo" / "tool.py").read_text() == "print('hi')\n"
    (tmp_path / "docs" / "index.md").write_text("# Home\n\n[gone](../gone.py)\n")
    with pytest.raises(Abort):
        _build(config, tmp_path / "site2")
