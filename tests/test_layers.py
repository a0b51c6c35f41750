"""
The layer rules of urelay's layout (README "Layout"): the import-linter
contracts in setup.cfg, run on the project and on a copy with a forbidden
import added, and the rules a linter of imports cannot see, checked on the
syntax trees of urelay's modules.

Where code does not yet keep a rule, it is listed here by name (C{KNOWN_*}),
with the refactor that removes it: a new breach fails, and so does a listed
one that has gone (so the lists only shrink).
"""

from __future__ import annotations

import ast
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SkipTest, TestCase

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "urelay"

LINTER_MISSING = "" if importlib.util.find_spec("importlinter") else (
    "import-linter is not installed for this Python (tests/requirements.txt installs it in the venv run)")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """
    Run import-linter with the contracts of C{root}/setup.cfg on the
    C{urelay} package under C{root}.
    """
    return subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
         "--config", str(root / "setup.cfg"), "--no-cache"],
        cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=300,
    )


class ContractTests(TestCase):
    """
    The import-linter contracts: layers, and no Twisted below the observe layer.
    """

    def setUp(self):
        if LINTER_MISSING:
            raise SkipTest(LINTER_MISSING)

    def test_project_keeps_contracts(self):
        result = lint_imports(ROOT)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("0 broken", result.stdout)

    def copy(self) -> Path:
        tree = Path(self.mktemp()).resolve()
        tree.mkdir()
        shutil.copytree(PACKAGE, tree / "urelay", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "setup.cfg", tree / "setup.cfg")
        return tree

    def test_upward_import_breaks(self):
        """
        A policy module importing the configuration (a higher layer) breaks
        the layers contract, and the report names the import.
        """
        tree = self.copy()
        guard = tree / "urelay" / "policy" / "guard.py"
        guard.write_text(guard.read_text() + "\nfrom urelay.ops import config  # forbidden\n")
        result = lint_imports(tree)
        self.assertNotEqual(result.returncode, 0, result.stdout)
        self.assertIn("urelay.policy is not allowed to import urelay.ops", result.stdout)
        self.assertIn("urelay.policy.guard -> urelay.ops", result.stdout)

    def test_sibling_import_breaks(self):
        """
        Layers on one line (frontends | dns) may not import each other.
        """
        tree = self.copy()
        server = tree / "urelay" / "dns" / "server.py"
        server.write_text(server.read_text() + "\nfrom urelay.frontends import session  # forbidden\n")
        result = lint_imports(tree)
        self.assertNotEqual(result.returncode, 0, result.stdout)
        self.assertIn("urelay.dns is not allowed to import urelay.frontends", result.stdout)

    def test_twisted_in_codec_breaks(self):
        tree = self.copy()
        sniff = tree / "urelay" / "codecs" / "sniff.py"
        sniff.write_text(sniff.read_text() + "\nfrom twisted.internet import defer  # forbidden\n")
        result = lint_imports(tree)
        self.assertNotEqual(result.returncode, 0, result.stdout)
        self.assertIn("urelay.codecs is not allowed to import twisted", result.stdout)


def modules(*tops: str):
    """
    (relative path, syntax tree) of every Python file under C{tops}.
    """
    for top in tops:
        for path in sorted((ROOT / top).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), ast.parse(path.read_text(), str(path))


def private_imports(tree: ast.AST):
    """
    Names starting with one underscore that C{tree} imports from a urelay
    or test module.
    """
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("urelay", "tests"):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    yield f"{node.module}.{alias.name}"


def test_module_imports(tree: ast.AST):
    """
    Test modules (C{tests.test_*}) that C{tree} imports: helpers belong in
    C{tests.support}.
    """
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("tests.test_"):
                yield node.module
            elif node.module == "tests":
                yield from (f"tests.{a.name}" for a in node.names if a.name.startswith("test_"))


def foreign_private_attributes(tree: ast.AST):
    """
    C{x._name} where C{x} is not C{self} or C{cls}: reaching into another
    object's (often Twisted's) private state.
    """
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                yield ast.unparse(node)


TWISTED_INTERNALS = re.compile(r"^twisted\.(.*\._|internet\.(tcp|udp|abstract|base|posixbase|epollreactor|unix)$)")


def twisted_internal_imports(tree: ast.AST):
    """
    Twisted modules and names that are not its public API: private names,
    and the reactor's own implementation modules.
    """
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("twisted"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if TWISTED_INTERNALS.match(full) or TWISTED_INTERNALS.match(node.module) or alias.name.startswith("_"):
                    yield full
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if TWISTED_INTERNALS.match(alias.name):
                    yield alias.name


def global_reactor_uses(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "twisted.internet":
            if any(alias.name == "reactor" for alias in node.names):
                yield "from twisted.internet import reactor"
        elif isinstance(node, ast.Import) and any(a.name == "twisted.internet.reactor" for a in node.names):
            yield "import twisted.internet.reactor"


WALL_CLOCK = {("time", "time"), ("time", "monotonic"), ("time", "sleep"), ("time", "perf_counter")}


def wall_clock_uses(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name):
            if (node.func.value.id, node.func.attr) in WALL_CLOCK:
                yield f"{node.func.value.id}.{node.func.attr}()"


# Module-level values that are shared but not state: loggers and type aliases.
SHARED_OK = {"Logger", "getattr"}


def module_singletons(tree: ast.Module):
    """
    Module-level names bound to a new mutable object: an instance made by a
    call, or a list, dict or set display under a lower-case name.
    """
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        for target in targets:
            if not isinstance(target, ast.Name) or target.id.startswith("__"):
                continue
            name = target.id.lstrip("_")
            if isinstance(value, ast.Call):
                func = value.func.attr if isinstance(value.func, ast.Attribute) else getattr(value.func, "id", "")
                if func not in SHARED_OK and not name.isupper():
                    yield target.id
            elif isinstance(value, (ast.List, ast.Dict, ast.Set)) and not name.isupper():
                yield target.id


# What does not yet keep a rule, and the refactor that removes it (issue 13).
KNOWN_PRIVATE_IMPORTS: set = set()
KNOWN_TEST_IMPORTS: set = set()
KNOWN_FOREIGN_PRIVATES: set = set()
KNOWN_SINGLETONS: set = set()
# Clocks that are not a timer: the store's writer thread waits on its own,
# away from the reactor.
WALL_CLOCK_OK = {"urelay/store/writer.py"}
KNOWN_WALL_CLOCK: set = set()


class RuleTests(TestCase):
    """
    The rules checked on syntax trees.
    """

    def assertKnown(self, found: set, known: set, rule: str):
        new = found - known
        self.assertEqual(new, set(), f"{rule}: new breaches")
        gone = known - found
        self.assertEqual(gone, set(), f"{rule}: these are mended, take them off the list in tests/test_layers.py")

    def test_no_private_imports(self):
        """
        No module imports a name another module keeps private (C{_name}):
        urelay's own modules, the tests, the benchmarks.
        """
        found = {(path, name) for path, tree in modules("urelay", "tests", "bench") for name in private_imports(tree)}
        self.assertKnown(found, KNOWN_PRIVATE_IMPORTS, "private imports")

    def test_helpers_in_support(self):
        """
        Test modules share helpers through C{tests.support}, never by
        importing each other.
        """
        found = {(path, name) for path, tree in modules("tests") for name in test_module_imports(tree)}
        self.assertKnown(found, KNOWN_TEST_IMPORTS, "test modules importing test modules")

    def test_internals_only_in_platform(self):
        """
        Twisted's private modules and names, and other objects' private
        attributes, are used only in the platform layer.
        """
        internal = {(path, name) for path, tree in modules("urelay") for name in twisted_internal_imports(tree)
                    if not path.startswith("urelay/platform/")}
        self.assertEqual(internal, set())
        foreign = {path for path, tree in modules("urelay") if not path.startswith("urelay/platform/")
                   and any(foreign_private_attributes(tree))}
        self.assertKnown(foreign, KNOWN_FOREIGN_PRIVATES, "private attributes of other objects")

    def test_global_reactor_only_in_service(self):
        """
        Only the twistd plugin (outside the package) takes the global
        reactor and hands it to the service; everything else is handed its
        reactor or clock.
        """
        found = {path for path, tree in modules("urelay") if any(global_reactor_uses(tree))}
        self.assertEqual(found, set())

    def test_timers_on_injected_clock(self):
        """
        Time comes from the clock a module is handed, never from the wall
        clock directly.
        """
        found = {path for path, tree in modules("urelay") if any(wall_clock_uses(tree))} - WALL_CLOCK_OK
        self.assertKnown(found, KNOWN_WALL_CLOCK, "wall clock")

    def test_no_mutable_module_singletons(self):
        found = {(path, name) for path, tree in modules("urelay") for name in module_singletons(tree)}
        self.assertKnown(found, KNOWN_SINGLETONS, "module-level singletons")

    def test_rules_see_breaches(self):
        """
        Each rule finds what it is for in a module made for it.
        """
        tree = ast.parse(
            "from urelay.relay.transports import _Early\n"
            "from tests.test_relay import STREAM\n"
            "from twisted.internet import reactor, tcp\n"
            "import time\n"
            "pool = Pool()\n"
            "seen = {}\n"
            "log = Logger()\n"
            "TABLE = {}\n"
            "def f(transport):\n"
            "    return transport._tempDataLen, self._fine, time.monotonic()\n"
        )
        self.assertEqual(list(private_imports(tree)), ["urelay.relay.transports._Early"])
        self.assertEqual(list(test_module_imports(tree)), ["tests.test_relay"])
        self.assertEqual(list(twisted_internal_imports(tree)), ["twisted.internet.tcp"])
        self.assertEqual(list(global_reactor_uses(tree)), ["from twisted.internet import reactor"])
        self.assertEqual(list(foreign_private_attributes(tree)), ["transport._tempDataLen"])
        self.assertEqual(list(wall_clock_uses(tree)), ["time.monotonic()"])
        self.assertEqual(list(module_singletons(tree)), ["pool", "seen"])


class LayoutTests(TestCase):
    """
    Every layer is a package that says what it holds and may import, and the
    README's layout section is drawn from the tree.
    """

    def layers(self) -> list[list[str]]:
        config = (ROOT / "setup.cfg").read_text()
        block = config.split("[importlinter:contract:layers]", 1)[1].split("layers =", 1)[1]
        lines = []
        for line in block.splitlines()[1:]:
            if not line.startswith(" "):
                break
            lines.append([name.strip().removeprefix("urelay.") for name in line.split("|")])
        return lines

    def test_every_package_is_a_layer(self):
        packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
        layers = {name for line in self.layers() for name in line}
        self.assertEqual(packages, layers)
        for name in layers:
            doc = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text()))
            self.assertIn("May import:", doc or "", name)
        loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
        self.assertEqual(loose, [])

    def test_readme_layout(self):
        """
        The README's layout lists the layers top to bottom, one line each,
        naming every module of the layer.
        """
        readme = (ROOT / "README.md").read_text()
        section = readme.split("## Layout", 1)[1].split("```", 2)[1]
        lines = [line for line in section.splitlines() if line.startswith("  urelay/")]
        described = [re.match(r"  urelay/(\w+)/", line).group(1) for line in lines]
        self.assertEqual(described, [name for line in self.layers() for name in line])
        for line, name in zip(lines, described):
            listed = set(re.findall(r"\w+", line.split(":", 1)[1])) if ":" in line else set()
            stems = {p.stem for p in (PACKAGE / name).glob("*.py") if p.name != "__init__.py"}
            self.assertEqual(stems - listed, set(), f"README layout line for {name} misses modules")
