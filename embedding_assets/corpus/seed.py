"""Write the default corpus: Python documentation that ships inside the running interpreter."""

from __future__ import annotations

import importlib
import inspect
import re
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

# Standard-library modules whose docstrings make the corpus; all import without side effects.
DOCUMENTED_MODULES = tuple(
    """
abc argparse array ast asyncio base64 bdb binascii bisect builtins bz2 calendar cmath cmd code
codecs collections collections.abc colorsys compileall concurrent.futures configparser contextlib
contextvars copy copyreg cProfile csv ctypes dataclasses datetime decimal difflib dis doctest email
email.message email.utils enum errno faulthandler filecmp fileinput fnmatch fractions ftplib
functools gc getopt getpass gettext glob graphlib gzip hashlib heapq hmac html html.parser http
http.client http.cookies http.server imaplib importlib importlib.metadata importlib.resources
inspect io ipaddress itertools json json.decoder json.encoder keyword linecache locale logging
logging.config logging.handlers lzma mailbox marshal math mimetypes mmap multiprocessing
multiprocessing.pool netrc numbers operator os os.path pathlib pdb pickle pickletools pkgutil
platform plistlib poplib pprint profile pstats pty py_compile pyclbr queue quopri random re reprlib
rlcompleter runpy sched secrets select selectors shelve shlex shutil signal site smtplib socket
socketserver sqlite3 ssl stat statistics string stringprep struct subprocess symtable sys sysconfig
tabnanny tarfile tempfile textwrap threading time timeit token tokenize tomllib trace traceback
tracemalloc types typing unicodedata unittest unittest.mock urllib.error urllib.parse urllib.request
urllib.robotparser uuid venv warnings optparse dbm wave weakref webbrowser wsgiref wsgiref.headers
wsgiref.simple_server wsgiref.util xml.dom xml.dom.minidom xml.etree.ElementTree xml.sax
xml.sax.handler xml.sax.saxutils xmlrpc.client zipapp email.headerregistry email.policy email.parser
email.generator asyncio.queues asyncio.locks asyncio.tasks asyncio.streams asyncio.events
concurrent.futures.thread concurrent.futures.process http.cookiejar zipfile zipimport zlib zoneinfo
""".split()
)

# Small standard-library modules copied as source, so the corpus exercises the Python (ast) chunker.
SOURCE_MODULES = ("bisect", "colorsys", "fnmatch", "getopt", "glob", "keyword", "shlex", "textwrap")

MIN_DOCSTRING_CHARS = 80

# The corpus's top folders, and what kind of document each holds (the gates report quality per kind).
LIBRARY, TOPICS, SOURCE = "library", "topics", "source"
DOCUMENT_KINDS = {LIBRARY: "library page", TOPICS: "reference topic", SOURCE: "source file"}


@dataclass(frozen=True)
class SeedReport:
    """What the seed wrote."""

    root: Path
    documents: int
    topics: int
    api_pages: int
    source_files: int


def _clean(text: object) -> str:
    return inspect.cleandoc(text).strip() if isinstance(text, str) else ""


def _topic_pages() -> dict[str, str]:
    from pydoc_data.topics import topics

    return {f"{TOPICS}/{name}.md": f"# {name}\n\n{body.strip()}\n" for name, body in sorted(topics.items())}


def _members(module: object) -> list[tuple[str, object]]:
    public = getattr(module, "__all__", None)
    names = public if public is not None else [n for n in dir(module) if not n.startswith("_")]
    members = []
    for name in sorted(set(names)):
        obj = getattr(module, name, None)
        if name.endswith("hook") and hasattr(module, f"__{name}__"):
            obj = getattr(module, f"__{name}__")  # the original: a test runner may have swapped in its own
        if inspect.isclass(obj) or inspect.isroutine(obj):
            owner = getattr(obj, "__module__", module.__name__)  # type: ignore[attr-defined]
            if owner in (module.__name__, f"_{module.__name__}", "builtins") or public is not None:  # type: ignore[attr-defined]
                members.append((name, obj))
    return members


MEMORY_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
LITERALS = (type(None), bool, int, float, complex, str, bytes)


class _Opaque:
    """Stands in for a default whose repr depends on the process (objects, live registries)."""

    def __repr__(self) -> str:
        return "..."


def _stable(value: object) -> bool:
    if isinstance(value, tuple | frozenset):
        return all(_stable(v) for v in value)
    return isinstance(value, LITERALS)


def _signature(name: str, obj: object) -> str:
    """`name(params)` with only literal defaults spelled out, so the corpus is byte-for-byte reproducible."""
    try:
        signature = inspect.signature(obj)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return name
    params = [
        p.replace(default=_Opaque()) if p.default is not p.empty and not _stable(p.default) else p
        for p in signature.parameters.values()
    ]
    return MEMORY_ADDRESS.sub("", f"{name}{signature.replace(parameters=params)}")


def _class_page(qualname: str, cls: type) -> str:
    parts = [f"# class {_signature(qualname, cls)}\n\n{_clean(cls.__doc__)}\n"]
    for name, member in sorted(vars(cls).items()):
        doc = _clean(getattr(member, "__doc__", None)) if not name.startswith("_") else ""
        if doc and inspect.isroutine(member):
            parts.append(f"## {_signature(f'{qualname}.{name}', member)}\n\n{doc}\n")
    return "\n".join(parts)


def _api_pages(module_name: str) -> dict[str, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = importlib.import_module(module_name)
    pages: dict[str, str] = {}
    module_doc = _clean(module.__doc__)
    if len(module_doc) >= MIN_DOCSTRING_CHARS:
        pages[f"{LIBRARY}/{module_name}/index.md"] = f"# {module_name}\n\n{module_doc}\n"
    for name, obj in _members(module):
        doc = _clean(getattr(obj, "__doc__", None))
        if len(doc) < MIN_DOCSTRING_CHARS:
            continue
        qualname = f"{module_name}.{name}"
        body = (
            _class_page(qualname, obj)
            if inspect.isclass(obj)
            else f"# {_signature(qualname, obj)}\n\n{doc}\n"
        )
        pages[f"{LIBRARY}/{module_name}/{name}.md"] = body
    return pages


def _source_files() -> dict[str, Path]:
    files = {}
    for name in SOURCE_MODULES:
        path = Path(importlib.import_module(name).__file__ or "")
        if path.suffix == ".py":
            files[f"{SOURCE}/{name}.py"] = path
    return files


def seed_corpus(root: Path, *, overwrite: bool = False) -> SeedReport:
    """Write the interpreter's documentation under `root` as .md files plus a few .py sources."""
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{root} already holds a corpus; pass overwrite=True (--force) to replace it"
            )
        shutil.rmtree(root)
    topics = _topic_pages()
    api: dict[str, str] = {}
    for module_name in DOCUMENTED_MODULES:
        api.update(_api_pages(module_name))
    sources = _source_files()
    for rel, text in {**topics, **api}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    for rel, src in sources.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, path)
    total = len(topics) + len(api) + len(sources)
    print(f"seeded {total} documents from Python {sys.version.split()[0]} into {root}", file=sys.stderr)
    return SeedReport(root, total, len(topics), len(api), len(sources))
