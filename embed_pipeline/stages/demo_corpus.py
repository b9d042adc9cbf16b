"""A demo corpus of real technical prose, built at run time from the Python standard library's docstrings.

Every machine with Python has it, nothing copied is committed, and it reads like the documentation a team would
adapt an embedding model to: one Markdown document per module (``<module>.md``), with the module docstring under
a ``# module`` heading and, for each public class and function defined in that module, a ``## name`` section with
its docstring. Docstrings are cleaned into prose: doctest examples, code paragraphs, reStructuredText directives
and signature-only first lines are dropped, whitespace inside a paragraph is collapsed, paragraph breaks are kept.

The output is deterministic for a given Python version (members in sorted order) and written atomically.

    python -m embed_pipeline.stages.demo_corpus corpora/stdlib_docs
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import re
import sys
import warnings
from pathlib import Path
from types import ModuleType

from embed_pipeline.core.artifacts import write_text
from embed_pipeline.core.records import Chunk

log = logging.getLogger("embed_pipeline.demo_corpus")

# Modules with substantial docstrings. Importing any of them has no visible side effect.
DEMO_MODULES: list[str] = [
    "argparse",
    "ast",
    "asyncio",
    "base64",
    "bisect",
    "bz2",
    "calendar",
    "cmd",
    "codecs",
    "collections",
    "concurrent.futures",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "doctest",
    "email",
    "email.message",
    "enum",
    "fnmatch",
    "fractions",
    "ftplib",
    "functools",
    "getopt",
    "gettext",
    "glob",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html.parser",
    "http.client",
    "http.cookiejar",
    "http.server",
    "imaplib",
    "inspect",
    "ipaddress",
    "itertools",
    "json",
    "locale",
    "logging",
    "logging.handlers",
    "lzma",
    "mailbox",
    "mimetypes",
    "multiprocessing",
    "operator",
    "optparse",
    "os",
    "pathlib",
    "pickle",
    "pkgutil",
    "platform",
    "poplib",
    "pprint",
    "queue",
    "random",
    "re",
    "sched",
    "secrets",
    "selectors",
    "shelve",
    "shlex",
    "shutil",
    "smtplib",
    "socket",
    "socketserver",
    "sqlite3",
    "ssl",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "tokenize",
    "trace",
    "traceback",
    "typing",
    "unittest",
    "urllib.parse",
    "urllib.request",
    "uuid",
    "warnings",
    "weakref",
    "xml.dom.minidom",
    "xml.etree.ElementTree",
    "zipfile",
    "zlib",
]

# Never imported, whatever the caller asks: importing them opens windows or browsers, or prints.
UNSAFE_MODULES = frozenset(
    {"antigravity", "this", "turtle", "turtledemo", "tkinter", "idlelib", "webbrowser", "__hello__", "__phello__"}
)

_MODULE_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
# "name(args)" or "name(args) -> result" alone on a line: a signature, not prose.
_SIGNATURE_RE = re.compile(r"^[\w.]+\s*\(.*\)\s*(->.*)?$")
# Authorship and licence notes are not documentation (and would be the same junk in every corpus built from them).
_BOILERPLATE_RE = re.compile(
    r"\bcopyright\b|all rights reserved|warrant|\bliable\b|:license:|free software|\bwritten by\b|<[^<>\s]+@[^<>\s]+>",
    re.I,
)
_UNDERLINE_RE = re.compile(r"^\s*([-=~^*+#])\1{2,}\s*$")
_BULLET_RE = re.compile(r"^\s*([-*+]|\d+[.)])\s+\S")
_CODE_LINE_RES = [
    re.compile(r"^\s*[\w.\[\]'\"]+(\s*,\s*[\w.]+)*\s*[-+*/|&]?=\s*\S"),  # assignment
    re.compile(r"^\s*[\w.]+\(.*\)\s*(#.*)?$"),  # a bare call
    re.compile(
        r"^\s*(def|class|import|from|return|for|while|if|elif|else|with|try|except|finally|raise|print|await|async"
        r"|yield|pass|del|assert|lambda)\b.*[:)\w]$"
    ),
    re.compile(r"^\s*\.\.\.\s*$"),  # "..." placeholder line
    re.compile(r"\S\s{2,}#\s"),  # trailing code comment
    re.compile(r"^\s*[{}\[\]()<>]"),
    re.compile(r"^\s*\$ "),  # shell prompt
    re.compile(r"^\s*#"),  # comment line
]


def _is_code_line(line: str) -> bool:
    return any(rx.search(line) for rx in _CODE_LINE_RES)


_DROPPED = "\x00dropped"  # stands in for removed examples so the prose around them can be tidied


def _drop_doctests(lines: list[str]) -> list[str]:
    """Replace ``>>>`` examples, their ``...`` continuations and their output (up to a blank line) by a marker."""
    out: list[str] = []
    in_example = False
    for line in lines:
        stripped = line.strip()
        if stripped.startswith(">>>"):
            if not in_example:
                out += ["", _DROPPED, ""]
            in_example = True
            continue
        if in_example:
            if not stripped:
                in_example = False
                out.append(line)
            continue
        out.append(line)
    return out


def _split_paragraphs(lines: list[str]) -> list[list[str]]:
    paras: list[list[str]] = []
    current: list[str] = []
    for line in lines:
        if line.strip():
            current.append(line)
        elif current:
            paras.append(current)
            current = []
    if current:
        paras.append(current)
    return paras


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _split_blocks(para: list[str]) -> list[tuple[bool, list[str]]]:
    """Split a paragraph where a line ending in ':' is followed by deeper-indented lines (an inline example).

    Returns (is_nested, lines) blocks; nested blocks are candidates for code.
    """
    base = _indent(para[0])
    blocks: list[tuple[bool, list[str]]] = [(False, [para[0]])]
    for prev, line in zip(para, para[1:], strict=False):
        nested = blocks[-1][0]
        if not nested and prev.rstrip().endswith(":") and _indent(line) > base:
            blocks.append((True, [line]))
        elif nested and _indent(line) <= base:
            blocks.append((False, [line]))
        else:
            blocks[-1][1].append(line)
    return blocks


def _split_bullets(para: list[str]) -> list[list[str]]:
    """A list inside a paragraph becomes one paragraph per item (its continuation lines stay with it)."""
    groups: list[list[str]] = []
    for line in para:
        if _BULLET_RE.match(line) or not groups:
            groups.append([line])
        else:
            groups[-1].append(line)
    return groups


def _is_code(lines: list[str]) -> bool:
    return "```" in "".join(lines) or sum(_is_code_line(ln) for ln in lines) / len(lines) >= 0.5


def clean_docstring(doc: str | None) -> list[str]:
    """Turn a docstring into prose paragraphs (each a single line of collapsed whitespace)."""
    if not doc:
        return []
    lines = inspect.cleandoc(doc).splitlines()
    # A signature-only first line ("dumps(obj, *, skipkeys=False) -> str"), and the "--" some C docs put after it.
    while lines and _SIGNATURE_RE.match(lines[0].strip()):
        lines.pop(0)
        while lines and lines[0].strip() in {"", "--"}:
            lines.pop(0)
    lines = _drop_doctests(lines)
    lines = [ln for ln in lines if not _UNDERLINE_RE.match(ln) and not ln.strip().startswith(".. ")]
    paragraphs: list[str] = []

    def dropped_something() -> None:
        # The prose that introduced a dropped example ("Usage:", "... as follows:") must not dangle.
        if paragraphs and paragraphs[-1].endswith(":"):
            if len(paragraphs[-1].split()) <= 4:
                paragraphs.pop()
            else:
                paragraphs[-1] = paragraphs[-1][:-1] + "."

    previous_introduces_literal = False
    for para in _split_paragraphs(lines):
        literal_block = previous_introduces_literal and all(ln.startswith((" ", "\t")) for ln in para)
        previous_introduces_literal = para[-1].rstrip().endswith("::")
        if literal_block or para == [_DROPPED] or _is_code(para):
            dropped_something()
            continue
        for nested, block in _split_blocks(para):
            if nested and _is_code(block):
                dropped_something()
                continue
            for group in _split_bullets(block):
                text = " ".join(" ".join(group).split())
                if text.endswith("::"):
                    text = text[:-1]  # reST "Example::" introduces a literal block: keep one colon.
                if sum(ch.isalpha() for ch in text) >= 3 and not _BOILERPLATE_RE.search(text):
                    paragraphs.append(text)
    while paragraphs and paragraphs[-1].endswith(":") and len(paragraphs[-1].split()) <= 4:
        paragraphs.pop()
    # A bare label ("Args:", "Keyword Arguments:") joins the paragraph it introduces.
    merged: list[str] = []
    for text in paragraphs:
        if merged and merged[-1].endswith(":") and len(merged[-1].split()) <= 3:
            merged[-1] = f"{merged[-1]} {text}"
        else:
            merged.append(text)
    return merged


def _defined_in(obj: object, module_name: str) -> bool:
    """True if ``obj`` belongs to the module: defined there, in a submodule, or in its C accelerator (``_heapq``)."""
    owner = getattr(obj, "__module__", None)
    if not isinstance(owner, str):
        return False
    last = module_name.rsplit(".", 1)[-1]
    return owner == module_name or owner.startswith(module_name + ".") or owner == "_" + last


def _public_members(module: ModuleType) -> list[tuple[str, object]]:
    names = getattr(module, "__all__", None)
    if not isinstance(names, (list, tuple)):
        names = [n for n in vars(module) if not n.startswith("_")]
    members = []
    for name in sorted(set(names)):
        obj = getattr(module, name, None)
        if (inspect.isclass(obj) or inspect.isroutine(obj)) and _defined_in(obj, module.__name__):
            members.append((name, obj))
    return members


def _own_doc(obj: object) -> str | None:
    """The object's own docstring (``inspect.getdoc`` would borrow a base class's, e.g. Enum's long example)."""
    doc = getattr(obj, "__doc__", None)
    return inspect.getdoc(obj) if isinstance(doc, str) and doc.strip() else None


def _import(name: str) -> ModuleType | None:
    if not _MODULE_NAME_RE.match(name) or name.split(".")[0] in UNSAFE_MODULES:
        log.warning("Skipping module %r: not a safe standard-library module name.", name)
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except Exception as exc:  # any import failure (missing C extension, platform-only module) skips it
        log.warning("Skipping module %r: import failed (%s: %s).", name, type(exc).__name__, exc)
        return None


def _truncate_sentences(text: str, max_words: int) -> str:
    """Cut an over-long paragraph at the last sentence end that fits (or at a word, if none does)."""
    words = text.split()[:max_words]
    cut = " ".join(words)
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s|$)", cut)]
    return cut[: ends[-1]] if ends else cut


def module_document(module: ModuleType, max_words: int = 4000) -> str:
    """The Markdown document for one module, truncated at ``max_words`` on a paragraph boundary."""
    blocks: list[tuple[bool, str]] = [(True, f"# {module.__name__}")]
    blocks += [(False, p) for p in clean_docstring(module.__doc__)]
    for name, obj in _public_members(module):
        paras = clean_docstring(_own_doc(obj))
        if sum(len(p.split()) for p in paras) < 5:
            continue  # no doc, or boilerplate such as "An enumeration."
        blocks.append((True, f"## {name}"))
        blocks += [(False, p) for p in paras]

    kept: list[tuple[bool, str]] = []
    words = 0
    for is_heading, text in blocks:
        n = len(text.split())
        if words + n > max_words:
            if not any(not h for h, _ in kept):  # nothing but a heading so far: keep part of the first paragraph
                room = max_words - words
                part = _truncate_sentences(text, room) if not is_heading and room > 0 else ""
                if part:
                    kept.append((False, part))
            break
        kept.append((is_heading, text))
        words += n
    while kept and kept[-1][0]:
        kept.pop()  # never end on an empty section
    return "\n\n".join(text for _, text in kept) + "\n" if kept else ""


def build_stdlib_corpus(
    out_dir: Path,
    modules: list[str] | None = None,
    min_words: int = 150,
    max_words: int = 4000,
) -> list[Path]:
    """Write one ``<module>.md`` per module into ``out_dir``; returns the written paths.

    Modules that cannot be imported, are unsafe to import, or yield fewer than ``min_words`` words are skipped
    with a warning, never fatal.
    """
    if min_words > max_words:
        raise ValueError(f"min_words ({min_words}) must not exceed max_words ({max_words}).")
    out_dir = Path(out_dir)
    written: list[Path] = []
    for name in dict.fromkeys(modules if modules is not None else DEMO_MODULES):
        module = _import(name)
        if module is None:
            continue
        text = module_document(module, max_words=max_words)
        n_words = len(text.split())
        if n_words < min_words:
            log.info("Skipping module %r: %d words of documentation (< min_words=%d).", name, n_words, min_words)
            continue
        written.append(write_text(out_dir / f"{name}.md", text))
    log.info("Demo corpus: wrote %d documents to %s", len(written), out_dir)
    return written


def stdlib_chunks(out_dir: Path, modules: list[str]) -> list[Chunk]:
    """The corpus of ``modules`` written to ``out_dir`` and chunked as the pipeline chunks it (documents and
    chunking defaults): the LLM benchmarks' input, without a Dagster run."""
    from embed_pipeline.stages.chunking import chunk_document
    from embed_pipeline.stages.documents import DocumentsConfig, load_document

    chunks: list[Chunk] = []
    for path in build_stdlib_corpus(out_dir, modules):
        chunks += chunk_document(load_document(path.name, path, DocumentsConfig()))
    return chunks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="Folder to write <module>.md files into (created if needed).")
    parser.add_argument("--modules", help="Comma-separated module names (default: the curated DEMO_MODULES).")
    parser.add_argument("--min-words", type=int, default=150, help="Skip documents shorter than this.")
    parser.add_argument("--max-words", type=int, default=4000, help="Truncate documents at this many words.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    modules = [m.strip() for m in args.modules.split(",") if m.strip()] if args.modules else None
    paths = build_stdlib_corpus(args.out_dir, modules, min_words=args.min_words, max_words=args.max_words)
    print(f"Wrote {len(paths)} documents to {args.out_dir}")
    return 0 if paths else 1


if __name__ == "__main__":
    sys.exit(main())
