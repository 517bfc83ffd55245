#!/usr/bin/env python3
"""Make upstream cloud-init sources available to the e2e tests, verified against this repository.

    scripts/e2e/cloud_init_sources.py [--archives DIR] [--offline] [--dest DIR] [--json] [VER...]

The releases (default: all) and their tags, commits and archive checksums are recorded in
``scripts/e2e/cloud-init/RELEASES`` and ``scripts/e2e/cloud-init/SHA256SUMS``. Each release ends
up as a source tree (holding ``cloudinit/``) at ``DEST/VERSION``; DEST defaults to
``${SEALBOOT_CACHE:-/var/cache/sealboot}/cloud-init``. Where a release comes from, first match:

1. a directory of archives ``cloud-init-VERSION.tar.gz`` (``--archives``, else
   ``$SEALBOOT_CLOUD_INIT_SOURCES``, else ``../shared/cloud-init`` beside the repository when it
   exists): the archive must match the SHA256SUMS recorded here, whatever the directory says;
2. a tree already in DEST that was verified when it was put there (one line in
   ``DEST/VERSION/.sealboot-source``: the archive's sha256 or the tag's commit, as recorded here);
3. unless ``--offline``: ``git clone --depth 1 --branch TAG`` of github.com/canonical/cloud-init
   (``$SEALBOOT_CLOUD_INIT_GIT`` names a mirror), whose HEAD must be the commit recorded here
   (the first failing clone ends online attempts).

Prints ``VERSION PATH`` per release found (``--json``: ``{"sources": {VER: PATH}, "missing":
{VER: WHY}, "errors": {VER: WHY}}``). Exits 0 when every release was found, 1 when some are
missing (no archive, no cache, offline), 3 when an archive or a clone does not match what is
recorded here (never used). Needs only Python 3.9+ and, for the online path, git.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
RECORDS = HERE / "cloud-init"
# A mirror may stand in for GitHub; the recorded commits still decide.
UPSTREAM_URL = os.environ.get("SEALBOOT_CLOUD_INIT_GIT", "https://github.com/canonical/cloud-init")
STAMP = ".sealboot-source"


@dataclass(frozen=True)
class Recorded:
    """What this repository records about one upstream release."""

    version: str
    tag: str
    commit: str
    stands_for: str
    sha256: str  # of cloud-init-VERSION.tar.gz

    @property
    def archive(self) -> str:
        return f"cloud-init-{self.version}.tar.gz"


class Mismatch(Exception):
    """Sources that are not what this repository records: never used."""


def recorded() -> dict[str, Recorded]:
    """The releases of RELEASES, with their checksums from SHA256SUMS."""
    sums: dict[str, str] = {}
    for line in (RECORDS / "SHA256SUMS").read_text().splitlines():
        if line.strip():
            digest, name = line.split()
            sums[name.lstrip("*")] = digest
    out: dict[str, Recorded] = {}
    for line in (RECORDS / "RELEASES").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            version, tag, commit, stands_for = line.split(maxsplit=3)
            out[version] = Recorded(
                version, tag, commit, stands_for, sums[f"cloud-init-{version}.tar.gz"]
            )
    return out


def default_archives() -> Path | None:
    """The archive directory: $SEALBOOT_CLOUD_INIT_SOURCES, else ../shared/cloud-init if any."""
    env = os.environ.get("SEALBOOT_CLOUD_INIT_SOURCES")
    if env:
        return Path(env)
    shared = REPO.parent / "shared" / "cloud-init"
    return shared if shared.is_dir() else None


def default_dest() -> Path:
    return Path(os.environ.get("SEALBOOT_CACHE", "/var/cache/sealboot")) / "cloud-init"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cached(rel: Recorded, tree: Path) -> bool:
    """Whether *tree* was put in place from sources that matched what is recorded now."""
    stamp = tree / STAMP
    if not (stamp.is_file() and (tree / "cloudinit").is_dir()):
        return False
    return stamp.read_text().strip() in (f"archive sha256 {rel.sha256}", f"git commit {rel.commit}")


def install(tree: Path, staged: Path, stamp: str) -> None:
    """Move the verified *staged* tree to *tree* with its stamp, replacing what was there."""
    (staged / STAMP).write_text(stamp + "\n")
    if tree.exists():
        shutil.rmtree(tree)
    staged.rename(tree)


def from_archive(rel: Recorded, archive: Path, tree: Path) -> None:
    """Verify *archive* against the recorded sha256, then extract it to *tree* (if not there)."""
    got = sha256_file(archive)
    if got != rel.sha256:
        raise Mismatch(f"{archive}: sha256 {got}, recorded {rel.sha256} (scripts/e2e/cloud-init)")
    if cached(rel, tree) and (tree / STAMP).read_text().strip() == f"archive sha256 {got}":
        return
    prefix = f"cloud-init-{rel.version}/"
    with tempfile.TemporaryDirectory(dir=tree.parent, prefix=".extract-") as tmp:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            for m in members:
                if m.name.startswith("/") or ".." in Path(m.name).parts:
                    raise Mismatch(f"{archive}: unsafe member {m.name!r}")
            if not any(m.name.startswith(prefix + "cloudinit/") for m in members):
                raise Mismatch(f"{archive}: no {prefix}cloudinit/")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, members=members, filter="data")
            else:  # Python without PEP 706: plain files and directories only
                safe = [m for m in members if m.isfile() or m.isdir()]
                tar.extractall(tmp, members=safe)  # noqa: S202 (names checked above)
        install(tree, Path(tmp) / prefix.rstrip("/"), f"archive sha256 {got}")


def from_git(rel: Recorded, tree: Path) -> None:
    """Clone the release tag, check its commit, and keep the working tree (without .git)."""
    with tempfile.TemporaryDirectory(dir=tree.parent, prefix=".clone-") as tmp:
        clone = Path(tmp) / "src"
        # Give up on a stalled connection instead of hanging the test run.
        argv = ["git", "-c", "http.lowSpeedLimit=1000", "-c", "http.lowSpeedTime=30"]
        argv += ["clone", "--quiet", "--depth", "1", "--branch", rel.tag, UPSTREAM_URL, str(clone)]
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
        res = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
        if res.returncode != 0:
            raise OSError(f"git clone of {rel.tag} failed: {res.stderr.strip()[-500:]}")
        head = subprocess.run(
            ["git", "-C", str(clone), "rev-parse", "HEAD^{commit}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if head != rel.commit:
            raise Mismatch(f"tag {rel.tag} of {UPSTREAM_URL} is {head}, recorded {rel.commit}")
        shutil.rmtree(clone / ".git")
        install(tree, clone, f"git commit {head}")


def main(argv: list[str] | None = None) -> int:
    releases = recorded()
    parser = argparse.ArgumentParser(
        description="Verified upstream cloud-init sources for the e2e tests."
    )
    parser.add_argument("versions", nargs="*", metavar="VERSION", help=", ".join(releases))
    parser.add_argument("--archives", type=Path, help="directory of cloud-init-VERSION.tar.gz")
    parser.add_argument("--dest", type=Path, help="where the trees go (default: see --help)")
    parser.add_argument("--offline", action="store_true", help="never clone from upstream")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args(argv)
    unknown = [v for v in args.versions if v not in releases]
    if unknown:
        parser.error(f"unknown release(s) {', '.join(unknown)}; recorded: {', '.join(releases)}")
    archives: Path | None = args.archives or default_archives()
    if archives is not None and not archives.is_dir():
        parser.error(f"{archives} is not a directory (--archives, SEALBOOT_CLOUD_INIT_SOURCES)")
    dest: Path = args.dest or default_dest()
    dest.mkdir(parents=True, exist_ok=True)

    found: dict[str, str] = {}
    missing: dict[str, str] = {}
    errors: dict[str, str] = {}
    online = not args.offline
    with (dest / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one writer per cache; a second caller then reuses
        for version in args.versions or list(releases):
            rel, tree = releases[version], dest / version
            archive = archives / rel.archive if archives is not None else None
            try:
                if archive is not None and archive.is_file():
                    from_archive(rel, archive, tree)
                elif not cached(rel, tree):
                    if not online:
                        where = f"no {rel.archive} in {archives}" if archives else "no archives"
                        missing[version] = f"{where}, not in {dest}, offline"
                        continue
                    try:
                        from_git(rel, tree)
                    except (OSError, subprocess.SubprocessError) as exc:
                        online = False  # the network is down or blocked: do not wait again
                        missing[version] = f"not in {dest}, no archive, and {exc}"
                        continue
            except Mismatch as exc:
                errors[version] = str(exc)
                continue
            found[version] = str(tree)
    if args.json:
        print(json.dumps({"sources": found, "missing": missing, "errors": errors}))
    else:
        for version, path in found.items():
            print(f"{version} {path}")
    for version, why in {**missing, **errors}.items():
        print(f"cloud_init_sources: {version}: {why}", file=sys.stderr)
    return 3 if errors else 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
