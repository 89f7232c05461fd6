"""mkdocs hooks (mkdocs.yml ``hooks:``): links from the pages to the repository's other files.

A page links the sources of its figures as they sit in the repository (``../bench/README.md#deploy``,
``../bench/results/<run>.json``), so that the links work on GitHub as well. mkdocs only knows the files
under docs/ and would report those links as broken, so each linked file is put into the site under
``repo/<its path>`` (a markdown file as a page, which may link on in the same way) and the link rewritten to
it. A link to a file that does not exist is still a warning, which ``mkdocs build --strict`` turns into a
failure.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.repo_links")
# A markdown link or image target: ](target) or ](target#anchor), no spaces, no title.
LINK = re.compile(r"(\]\()([^)\s#]*)(#[^)\s]*)?(\))")
SITE_FOLDER = "repo"


def _outside_target(source: Path, target: str, docs: Path, repo: Path) -> Path | None:
    """The repository file a relative link from ``source`` names, when it lies outside docs/."""
    if not target or re.match(r"^[a-z][a-z0-9+.-]*:|^/", target):  # a URL, mailto:, an absolute path
        return None
    path = (source.parent / target).resolve()
    if path.is_relative_to(docs) or not path.is_relative_to(repo):
        return None
    return path


def on_files(files, config):
    """Add every repository file a page links to (and, for a markdown file, the files it links to)."""
    docs, repo = Path(config.docs_dir).resolve(), Path(config.config_file_path).resolve().parent
    queue = [Path(f.abs_src_path) for f in files.documentation_pages() if f.abs_src_path]
    added: set[Path] = set()
    while queue:
        source = queue.pop()
        text = source.read_text(encoding="utf-8")
        for match in LINK.finditer(text):
            path = _outside_target(source, match[2], docs, repo)
            if path is None or path in added or not path.is_file():
                continue  # a missing file is reported by on_page_markdown
            added.add(path)
            uri = posixpath.join(SITE_FOLDER, path.relative_to(repo).as_posix())
            files.append(File.generated(config, uri, abs_src_path=str(path)))
            if path.suffix == ".md":
                queue.append(path)
    return files


def on_page_markdown(markdown, page, config, files):
    """Point the links that leave docs/ at the copies on_files added; warn about a missing file."""
    docs, repo = Path(config.docs_dir).resolve(), Path(config.config_file_path).resolve().parent
    source = Path(page.file.abs_src_path)
    here = posixpath.dirname(page.file.src_uri)

    def rewrite(match: re.Match) -> str:
        path = (source.parent / match[2]).resolve() if match[2] else None
        if path is not None and path.is_relative_to(docs) and not source.is_relative_to(docs):
            # a repository page linking back into docs/
            uri = path.relative_to(docs).as_posix()
        elif (path := _outside_target(source, match[2], docs, repo)) is not None:
            if not path.is_file():
                log.warning("%s links to %s, which is not a file in the repository", page.file.src_uri, match[2])
                return match[0]
            uri = posixpath.join(SITE_FOLDER, path.relative_to(repo).as_posix())
        else:
            return match[0]
        return f"{match[1]}{os.path.relpath(uri, here or '.').replace(os.sep, '/')}{match[3] or ''}{match[4]}"

    return LINK.sub(rewrite, markdown)
