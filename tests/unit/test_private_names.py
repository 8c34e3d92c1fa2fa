"""No private name of faust, mode, aiokafka or uvicorn outside forwarder/<library>_compat.py.

A library's private names change without notice in any release. Kept in one module per library,
each use names the upstream behaviour it corrects and has a test that fails when the library
changes under it; anywhere else it breaks silently on an upgrade.

What counts as a use, found with `ast` in every forwarder/**/*.py:
- importing an underscore name (`from faust.streams import _current_event`) or from an
  underscore module (`aiokafka._x`), or an internal module listed in INTERNAL_MODULES;
- `._name` on anything not known to be ours: a library's module or class, a local variable, a
  parameter, `super()` in a class derived from a library class. `self._x` and `cls._x` pass in
  a class of our own, and in a class derived from a library class when the class itself defines
  `_x` (in its body or by assigning `self._x`);
- getattr/setattr/hasattr/delattr with an underscore name on such an object.
Dunder names (`__name__`) are public protocol and never count.
"""

from __future__ import annotations

import ast
import warnings
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "forwarder"
LIBRARIES = ("faust", "mode", "aiokafka", "uvicorn")
# Public-looking module paths a library documents as internal.
INTERNAL_MODULES = ("uvicorn.protocols",)
COMPAT_MODULES = frozenset(PACKAGE / f"{library}_compat.py" for library in LIBRARIES)

# Offenders still to be moved into their compat module (issue 14). Only removals are welcome
# here: delete an entry once its use has moved; a stale entry is reported as a warning, a new
# offender fails the test.
KNOWN_OFFENDERS: frozenset[tuple[str, str]] = frozenset()

_CHECKED_CALLS = frozenset({"getattr", "setattr", "hasattr", "delattr"})


@dataclass(frozen=True)
class Offence:
    path: str
    line: int
    code: str
    why: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.why}: {self.code}"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _library(module: str) -> bool:
    return module.split(".", 1)[0] in LIBRARIES


def _private_module(module: str) -> bool:
    return any(_private(part) for part in module.split(".")) or any(
        module == internal or module.startswith(internal + ".") for internal in INTERNAL_MODULES
    )


class _Scanner(ast.NodeVisitor):
    def __init__(self, path: str, source: str) -> None:
        self.path = path
        self.source = source
        self.offences: list[Offence] = []
        self.imported: dict[str, str] = {}  # local name -> module it comes from
        self.library_classes: set[str] = set()  # classes of this file derived from a library
        self.classes: list[tuple[bool, set[str]]] = []  # (library-derived, own names)

    def _offend(self, node: ast.AST, why: str) -> None:
        code = ast.get_source_segment(self.source, node) or ast.dump(node)
        self.offences.append(Offence(self.path, getattr(node, "lineno", 0), code, why))

    def _origin(self, node: ast.expr) -> str | None:
        """The module a name's root was imported from, when it was imported."""
        while isinstance(node, ast.Attribute):
            node = node.value
        return self.imported.get(node.id) if isinstance(node, ast.Name) else None

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            local = alias.asname or alias.name.split(".", 1)[0]
            self.imported[local] = alias.name if alias.asname else local
            if _library(alias.name) and _private_module(alias.name):
                self._offend(node, "imports a private module")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        for alias in node.names:
            self.imported[alias.asname or alias.name] = module
        if node.level or not _library(module):
            return
        if _private_module(module):
            self._offend(node, "imports from a private module")
        elif any(_private(alias.name) for alias in node.names):
            self._offend(node, "imports a private name")

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        derived = any(
            _library(self._origin(base) or "")
            or (isinstance(base, ast.Name) and base.id in self.library_classes)
            for base in node.bases
        )
        if derived:
            self.library_classes.add(node.name)
        self.classes.append((derived, _own_names(node)))
        self.generic_visit(node)
        self.classes.pop()

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if _private(node.attr):
            self._check(node, node.value, node.attr)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if (
            isinstance(node.func, ast.Name)
            and node.func.id in _CHECKED_CALLS
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _private(node.args[1].value)
        ):
            self._check(node, node.args[0], node.args[1].value)
        self.generic_visit(node)

    def _check(self, node: ast.AST, owner: ast.expr, name: str) -> None:
        derived, own = self.classes[-1] if self.classes else (False, set())
        if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
            if derived and name not in own:
                self._offend(node, "a library class's private attribute")
            return
        if (
            isinstance(owner, ast.Call)
            and isinstance(owner.func, ast.Name)
            and owner.func.id == "super"
        ):
            if derived:
                self._offend(node, "a library class's private method")
            return
        origin = self._origin(owner)
        if origin is not None and not _library(origin):
            return  # a module or class of the standard library, a third party or ours
        self._offend(node, "private name of a library object" if origin else "private name")


def _own_names(node: ast.ClassDef) -> set[str]:
    """Names a class defines itself: in its body, or by assigning `self.<name>`."""
    names: set[str] = set()
    for statement in node.body:
        if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(statement.name)
        elif isinstance(statement, ast.Assign):
            names.update(t.id for t in statement.targets if isinstance(t, ast.Name))
        elif isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            names.add(statement.target.id)
    for inner in ast.walk(node):
        targets: list[ast.expr] = []
        if isinstance(inner, ast.Assign):
            targets = inner.targets
        elif isinstance(inner, ast.AnnAssign | ast.AugAssign):
            targets = [inner.target]
        for target in targets:
            if (
                isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name)
                and target.value.id in ("self", "cls")
            ):
                names.add(target.attr)
    return names


def scan(path: Path) -> list[Offence]:
    """Every use of a library's private name in one module."""
    source = path.read_text()
    scanner = _Scanner(path.relative_to(ROOT).as_posix(), source)
    scanner.visit(ast.parse(source, str(path)))
    return scanner.offences


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p not in COMPAT_MODULES)


def test_no_private_library_name_outside_the_compat_modules() -> None:
    offences = [offence for path in _modules() for offence in scan(path)]
    new = [str(o) for o in offences if (o.path, o.code) not in KNOWN_OFFENDERS]
    assert not new, (
        "private names of faust/mode/aiokafka/uvicorn belong in forwarder/<library>_compat.py, "
        "with the upstream behaviour they correct and a test:\n" + "\n".join(new)
    )
    stale = KNOWN_OFFENDERS - {(o.path, o.code) for o in offences}
    if stale:
        warnings.warn(
            f"remove from KNOWN_OFFENDERS, no longer found: {sorted(stale)}", stacklevel=1
        )


def _offences_in(tmp_path: Path, code: str) -> list[str]:
    path = tmp_path / "module.py"
    path.write_text(code)
    scanner = _Scanner("module.py", code)
    scanner.visit(ast.parse(code))
    return [o.code for o in scanner.offences]


def test_the_scan_finds_each_kind_of_private_use(tmp_path: Path) -> None:
    code = """
import aiokafka.producer._x
from faust.streams import _current_event
from mode.utils._private import thing
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from faust.transport.consumer import Consumer
from mode import Worker


def use(consumer):
    consumer._client.force_metadata_update()
    Consumer._new_offset
    getattr(consumer, "_acked")


class Mine(Worker):
    _own = 1

    def __init__(self):
        self._state = 0

    async def stop(self):
        self._state + self._own
        self._shutdown_loop
        await super()._stop_on_signal(1)
"""
    assert _offences_in(tmp_path, code) == [
        "import aiokafka.producer._x",
        "from faust.streams import _current_event",
        "from mode.utils._private import thing",
        "from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol",
        "consumer._client",
        "Consumer._new_offset",
        'getattr(consumer, "_acked")',
        "self._shutdown_loop",
        "super()._stop_on_signal",
    ]


def test_the_scan_leaves_our_own_and_other_libraries_private_names_alone(tmp_path: Path) -> None:
    code = """
import argparse
from forwarder import records


class Ours:
    def __init__(self):
        self._x = 1

    def use(self, commands: argparse._SubParsersAction):
        self._y, self.__class__, records._private
        super()._z
"""
    assert _offences_in(tmp_path, code) == []
