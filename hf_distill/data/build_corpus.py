"""Build the bundled English text corpus from the docstrings of the Python standard library.

Run it as a module::

    python -m hf_distill.data.build_corpus

The script imports every public top-level standard-library module (and, recursively, its public
submodules) of the running CPython interpreter, collects the docstrings of modules, classes,
functions and methods, splits them into paragraph-level passages, cleans and filters them, drops exact
duplicates and writes ``stdlib_docs.jsonl.gz`` next to this file. Each line is a JSON object with the
fields ``text``, ``module``, ``qualname`` and ``kind``.

The walk runs in a fresh interpreter started with ``-I -S`` (isolated, no ``site``), so no third-party
package is importable and none can patch standard-library objects beforehand (transformers, for example,
adds methods to ``logging.Logger``); the script itself only uses the standard library. The traversal is
sorted and the gzip header carries no timestamp or file name, so two runs on the same interpreter produce
byte-identical files. The text is part of CPython and is distributed under the
Python Software Foundation License (see ``README.md`` in this folder).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gzip
import hashlib
import importlib
import inspect
import io
import json
import os
import pkgutil
import re
import subprocess
import sys
import sysconfig
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

DEFAULT_OUTPUT = Path(__file__).with_name("stdlib_docs.jsonl.gz")

MIN_CHARS = 40
MAX_CHARS = 1000
# Upper bound on the total amount of passage text; the build keeps the corpus in the low megabytes.
DEFAULT_MAX_TOTAL_CHARS = 3_000_000
# A passage is kept only when at least this share of its non-space characters are letters.
MIN_LETTER_RATIO = 0.7
# Indented (literal) blocks must be cleaner still to count as prose.
INDENTED_PROSE_LETTER_RATIO = 0.78

# Top-level modules that are never imported: side effects on import (``this`` prints, ``antigravity``
# opens a browser, ``readline``/``rlcompleter`` touch the terminal, ``lib2to3`` may write grammar pickles),
# GUI toolkits, the regression-test package, and packages that third-party tools shadow (``distutils``
# is replaced by setuptools' copy when setuptools is installed).
SKIP_TOP_LEVEL = frozenset(
    {
        "antigravity",
        "this",
        "idlelib",
        "tkinter",
        "turtle",
        "turtledemo",
        "test",
        "readline",
        "rlcompleter",
        "lib2to3",
        "distutils",
    }
)
# Dotted names whose submodules are skipped (``encodings``: ~120 generated codec tables that share one
# boilerplate docstring).
SKIP_SUBMODULES_OF = frozenset({"encodings"})
# Submodule name components that mark test suites.
TEST_COMPONENTS = frozenset({"test", "tests", "idle_test"})
# Dunder methods whose (own, Python-level) docstrings are worth keeping.
KEPT_DUNDERS = frozenset({"__init__", "__call__"})

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'`])")
_WHITESPACE = re.compile(r"\s+")
_CODE_LINE = re.compile(
    r"^\s*(?:[@#$%>|]"
    r"|(?:def|class)\s+\w+"
    r"|(?:import|from)\s+[\w.]+(?:\s+import\b.*)?$"
    r"|(?:if|elif|else|for|while|with|try|except|finally)\b.*:$)"
)
_CODE_MARKERS = (" = ", "==", "->", "-->", "{", "}", "[", "]", "()", "):", "\\")
_UNDERLINE = re.compile(r"^\s*([-=~^*+#\"'`])\1{2,}\s*$")


@dataclass(frozen=True)
class Passage:
    """One paragraph-level passage of documentation text."""

    text: str
    module: str
    qualname: str
    kind: str


# --------------------------------------------------------------------------------------------------
# Module discovery
# --------------------------------------------------------------------------------------------------


def _stdlib_dirs() -> tuple[list[Path], list[Path]]:
    """Return (standard-library directories, site-packages directories) of this interpreter."""
    paths = sysconfig.get_paths()
    stdlib = sorted({Path(paths[key]).resolve() for key in ("stdlib", "platstdlib")})
    site = sorted({Path(paths[key]).resolve() for key in ("purelib", "platlib")})
    return stdlib, site


def _is_stdlib_module(module: ModuleType) -> bool:
    """True when ``module`` is built in or lives in the standard-library folder (not in site-packages)."""
    file = getattr(module, "__file__", None)
    if file is None:
        # Built-in or frozen modules have no file; they are part of the interpreter.
        return True
    path = Path(file).resolve()
    stdlib, site = _stdlib_dirs()
    if any(path.is_relative_to(s) for s in site):
        return False
    return any(path.is_relative_to(s) for s in stdlib)


def _is_skipped_name(dotted: str) -> bool:
    """True for private, test, or explicitly excluded module names."""
    parts = dotted.split(".")
    if parts[0] in SKIP_TOP_LEVEL:
        return True
    for part in parts:
        if part.startswith(("_", "test_")) or part in TEST_COMPONENTS:
            return True
    return any(dotted.startswith(prefix + ".") for prefix in SKIP_SUBMODULES_OF)


def _quiet_import(name: str) -> ModuleType | None:
    """Import ``name`` with warnings silenced and stdout/stderr captured; ``None`` on any failure."""
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module(name)
        except (Exception, SystemExit):  # noqa: BLE001 - any failure just means "skip this module"
            return None


def iter_stdlib_modules() -> Iterator[ModuleType]:
    """Yield the public standard-library modules and their public submodules, in sorted order."""
    for top in sorted(sys.stdlib_module_names):
        if _is_skipped_name(top):
            continue
        module = _quiet_import(top)
        if module is None or not _is_stdlib_module(module):
            continue
        yield from _walk_package(module)


def _walk_package(module: ModuleType) -> Iterator[ModuleType]:
    """Yield ``module`` followed by its importable public submodules (depth first, sorted)."""
    yield module
    search_path = getattr(module, "__path__", None)
    if not search_path or module.__name__ in SKIP_SUBMODULES_OF:
        return
    names = sorted(info.name for info in pkgutil.iter_modules(list(search_path), prefix=module.__name__ + "."))
    for name in names:
        if _is_skipped_name(name):
            continue
        submodule = _quiet_import(name)
        if submodule is None or not _is_stdlib_module(submodule):
            continue
        yield from _walk_package(submodule)


# --------------------------------------------------------------------------------------------------
# Docstring collection
# --------------------------------------------------------------------------------------------------


def _own_doc(obj: Any) -> str | None:
    """The cleaned docstring of ``obj`` itself, ignoring docstrings inherited from base classes."""
    raw = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    if not isinstance(raw, str) or not raw.strip():
        return None
    return inspect.getdoc(obj)


def _belongs_to(obj: Any, module_name: str) -> bool:
    """True when ``obj`` is defined in ``module_name`` or in a private implementation module."""
    owner = getattr(obj, "__module__", None)
    if owner is None or owner == module_name:
        return True
    return isinstance(owner, str) and any(part.startswith("_") for part in owner.split("."))


class DocCollector:
    """Collect ``(qualname, kind, docstring)`` triples, visiting every object at most once."""

    def __init__(self) -> None:
        self._seen: dict[int, Any] = {}

    def _first_visit(self, obj: Any) -> bool:
        key = id(obj)
        if key in self._seen:
            return False
        self._seen[key] = obj  # keep a reference so the id cannot be reused
        return True

    def collect(self, module: ModuleType) -> Iterator[tuple[str, str, str]]:
        """Yield docstrings of ``module`` and of the public classes, functions and methods it defines."""
        name = module.__name__
        if self._first_visit(module):
            doc = _own_doc(module)
            if doc:
                yield name, "module", doc
        for attr in sorted(vars(module)):
            if attr.startswith("_"):
                continue
            obj = vars(module)[attr]
            if isinstance(obj, type):
                if _belongs_to(obj, name) and self._first_visit(obj):
                    yield from self._collect_class(obj, f"{name}.{attr}", depth=0)
            elif inspect.isroutine(obj) and _belongs_to(obj, name) and self._first_visit(obj):
                doc = _own_doc(obj)
                if doc:
                    yield f"{name}.{attr}", "function", doc

    def _collect_class(self, cls: type, qualname: str, depth: int) -> Iterator[tuple[str, str, str]]:
        doc = _own_doc(cls)
        if doc:
            yield qualname, "class", doc
        namespace = vars(cls)
        for attr in sorted(namespace):
            if attr.startswith("_") and attr not in KEPT_DUNDERS:
                continue
            member = namespace[attr]
            if isinstance(member, (staticmethod, classmethod)):
                member = member.__func__
            elif isinstance(member, property):
                member = member.fget  # a property is documented by its getter; it counts as a method
            if isinstance(member, type):
                # Only genuinely nested classes; class-valued attributes that alias other classes are skipped.
                nested = member.__qualname__ == f"{cls.__qualname__}.{attr}"
                if nested and depth < 1 and _belongs_to(member, cls.__module__) and self._first_visit(member):
                    yield from self._collect_class(member, f"{qualname}.{attr}", depth + 1)
                continue
            if not inspect.isroutine(member):
                continue  # C-level descriptors, slots and plain attributes are not collected
            if attr in KEPT_DUNDERS and not inspect.isfunction(member):
                continue  # C-level __init__/__call__ only carry generic boilerplate
            if not self._first_visit(member):
                continue
            doc = _own_doc(member)
            if doc:
                yield f"{qualname}.{attr}", "method", doc


# --------------------------------------------------------------------------------------------------
# Text cleaning
# --------------------------------------------------------------------------------------------------


def _letter_ratio(text: str) -> float:
    """Share of letters among the non-whitespace characters of ``text``."""
    visible = [c for c in text if not c.isspace()]
    if not visible:
        return 0.0
    return sum(c.isalpha() for c in visible) / len(visible)


def _looks_like_indented_prose(lines: list[str], text: str) -> bool:
    """Heuristic for an indented block: sentences ending in a full stop, mostly letters, no code."""
    if not text.endswith(".") or _letter_ratio(text) < INDENTED_PROSE_LETTER_RATIO:
        return False
    if any(_CODE_LINE.match(ln) for ln in lines):
        return False
    return not any(marker in text for marker in _CODE_MARKERS)


def _clean_block(lines: list[str]) -> str | None:
    """Turn one blank-line-separated block of a docstring into a single prose paragraph, or ``None``."""
    # Doctest examples run from the first ``>>>`` prompt to the end of the block (prompts plus output).
    for i, line in enumerate(lines):
        if line.lstrip().startswith(">>>"):
            lines = lines[:i]
            break
    # Drop reST directives/comments and section underlines.
    lines = [ln for ln in lines if not ln.lstrip().startswith("..") and not _UNDERLINE.match(ln)]
    if not lines:
        return None
    text = _WHITESPACE.sub(" ", " ".join(lines)).strip()
    # A block whose every line is indented is a literal block: code, a table or a list of names. Some
    # docstrings indent ordinary prose too, so an indented block survives only if it reads like prose.
    if all(ln[:1].isspace() for ln in lines) and not _looks_like_indented_prose(lines, text):
        return None
    return text


def _split_long(text: str, limit: int = MAX_CHARS) -> list[str]:
    """Split ``text`` into chunks of at most ``limit`` characters, on sentence and then word boundaries."""
    if len(text) <= limit:
        return [text]
    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        if len(sentence) <= limit:
            pieces.append(sentence)
            continue
        words, current = sentence.split(" "), ""
        for word in words:
            candidate = f"{current} {word}" if current else word
            if len(candidate) > limit and current:
                pieces.append(current)
                current = word
            else:
                current = candidate
        if current:
            pieces.append(current[:limit])
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        candidate = f"{current} {piece}" if current else piece
        if len(candidate) > limit and current:
            chunks.append(current)
            current = piece
        else:
            current = candidate
    if current:
        chunks.append(current)
    return chunks


def is_prose(text: str) -> bool:
    """True when ``text`` is long enough, short enough and mostly made of letters."""
    return MIN_CHARS <= len(text) <= MAX_CHARS and _letter_ratio(text) >= MIN_LETTER_RATIO


def docstring_passages(doc: str) -> list[str]:
    """Split a cleaned docstring into filtered, paragraph-level passages."""
    blocks: list[list[str]] = [[]]
    for line in doc.expandtabs(4).splitlines():
        if line.strip():
            blocks[-1].append(line.rstrip())
        elif blocks[-1]:
            blocks.append([])
    passages: list[str] = []
    for block in blocks:
        paragraph = _clean_block(block) if block else None
        if not paragraph:
            continue
        passages.extend(chunk for chunk in _split_long(paragraph) if is_prose(chunk))
    return passages


# --------------------------------------------------------------------------------------------------
# Corpus assembly
# --------------------------------------------------------------------------------------------------


def collect_passages() -> list[Passage]:
    """Walk the standard library and return deduplicated passages in traversal order."""
    collector = DocCollector()
    seen_text: set[str] = set()
    passages: list[Passage] = []
    for module in iter_stdlib_modules():
        top = module.__name__.split(".")[0]
        for qualname, kind, doc in collector.collect(module):
            for text in docstring_passages(doc):
                if text in seen_text:
                    continue
                seen_text.add(text)
                passages.append(Passage(text=text, module=top, qualname=qualname, kind=kind))
    return passages


def cap_passages(passages: list[Passage], max_total_chars: int) -> list[Passage]:
    """Deterministically keep whole docstrings (chosen by qualname hash) until the character budget is spent.

    The original traversal order of the kept passages is preserved.
    """
    total = sum(len(p.text) for p in passages)
    if total <= max_total_chars:
        return passages
    by_qualname: dict[str, int] = collections.defaultdict(int)
    for p in passages:
        by_qualname[p.qualname] += len(p.text)
    ranked = sorted(by_qualname, key=lambda q: (hashlib.md5(q.encode("utf-8")).hexdigest(), q))
    kept: set[str] = set()
    budget = 0
    for qualname in ranked:
        if budget + by_qualname[qualname] > max_total_chars:
            continue
        kept.add(qualname)
        budget += by_qualname[qualname]
    return [p for p in passages if p.qualname in kept]


def write_jsonl_gz(passages: list[Passage], path: Path) -> int:
    """Write ``passages`` as gzip-compressed JSON lines without timestamp or file name; return the byte size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
        for passage in passages:
            line = json.dumps(asdict(passage), ensure_ascii=False, sort_keys=False) + "\n"
            gz.write(line.encode("utf-8"))
    os.replace(tmp, path)
    return path.stat().st_size


def summarize(passages: list[Passage], path: Path, size: int, top: int = 20) -> str:
    """Human-readable summary of the written corpus."""
    chars = sum(len(p.text) for p in passages)
    per_module = collections.Counter(p.module for p in passages)
    per_kind = collections.Counter(p.kind for p in passages)
    lines = [
        f"Python {sys.version.split()[0]} ({sys.platform})",
        f"wrote {path}",
        f"passages: {len(passages)}",
        f"characters: {chars}",
        f"modules: {len(per_module)}",
        f"file size: {size} bytes ({size / 1e6:.2f} MB)",
        "kinds: " + ", ".join(f"{kind}={count}" for kind, count in sorted(per_kind.items())),
        f"top {top} modules by passages:",
    ]
    ranked = sorted(per_module.items(), key=lambda item: (-item[1], item[0]))[:top]
    lines.extend(f"  {name:<20} {count}" for name, count in ranked)
    return "\n".join(lines)


def build(output: Path = DEFAULT_OUTPUT, max_total_chars: int = DEFAULT_MAX_TOTAL_CHARS) -> list[Passage]:
    """Build the corpus, write it to ``output`` and print a summary; return the written passages."""
    passages = cap_passages(collect_passages(), max_total_chars)
    size = write_jsonl_gz(passages, output)
    print(summarize(passages, output, size))
    return passages


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; re-runs itself in a clean, isolated interpreter unless ``--in-process``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="destination .jsonl.gz file")
    parser.add_argument(
        "--max-total-chars",
        type=int,
        default=DEFAULT_MAX_TOTAL_CHARS,
        help="cap on the total passage text; whole docstrings are dropped by qualname hash beyond it",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="walk the standard library in this interpreter (results then depend on what is already imported)",
    )
    args = parser.parse_args(argv)
    if not args.in_process:
        # -I: ignore PYTHON* variables, user site and the current directory; -S: no site-packages at all.
        command = [sys.executable, "-I", "-S", str(Path(__file__).resolve()), *argv, "--in-process"]
        return subprocess.call(command)
    build(args.output.resolve(), args.max_total_chars)
    return 0


if __name__ == "__main__":
    sys.exit(main())
