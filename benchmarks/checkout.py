"""Which checkout of Curator a benchmark's processes run: this one, or another one beside it
(`--compare PATH`, for example the landed code checked out at /tmp/landed), with the same Python.

Another checkout is reached through a small folder of links (kept in .cache/checkouts/): its
`curator`, `curator_server`, `curator_client` and `curator_proto` packages (the package-dir
mapping of pyproject.toml) and this checkout's `benchmarks`, so the benchmark's own code is the
same on both sides and only the system under test differs. Processes run with that folder as
their working directory and PYTHONPATH, which puts it ahead of the editable install's finder.
They write no bytecode and keep numba's compiled cache in that folder, so the other checkout's
files are never written to.
"""

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"curator": "curator", "curator_server": "server", "curator_client": "client",
            "curator_proto": "proto/python/curator_proto"}


@dataclass(frozen=True)
class Checkout:
    label: str
    root: Path
    shim: Path | None = None  # None: this checkout, as installed

    @classmethod
    def this(cls, label: str = "new") -> "Checkout":
        return cls(label, ROOT)

    @classmethod
    def other(cls, path: str, label: str = "old") -> "Checkout":
        root = Path(path).resolve()
        missing = [where for where in PACKAGES.values() if not (root / where / "__init__.py").exists()]
        if missing:
            raise SystemExit(f"{root} is not a checkout of Curator (no {', '.join(missing)})")
        shim = ROOT / ".cache" / "checkouts" / hashlib.sha256(str(root).encode()).hexdigest()[:12]
        shim.mkdir(parents=True, exist_ok=True)
        for name, where in (*PACKAGES.items(), ("benchmarks", None)):
            link, target = shim / name, ROOT / "benchmarks" if where is None else root / where
            if not (link.is_symlink() and link.resolve() == target):
                link.unlink(missing_ok=True)
                link.symlink_to(target)
        return cls(label, root, shim)

    @property
    def cwd(self) -> Path:
        return self.shim or self.root

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.shim is not None:
            env.update(PYTHONPATH=str(self.shim), PYTHONDONTWRITEBYTECODE="1",
                       NUMBA_CACHE_DIR=str(self.shim / "numba-cache"))
        return env

    def popen(self, args: list[str], **kwargs) -> subprocess.Popen:
        """`python ARGS` run from this checkout."""
        return subprocess.Popen([sys.executable, *args], cwd=self.cwd, env=self.env(), **kwargs)

    def describe(self) -> dict:
        """Where it is and which commit (GIT_OPTIONAL_LOCKS=0: reading never writes its index)."""
        def git(*args: str) -> str:
            done = subprocess.run(["git", *args], cwd=self.root, capture_output=True, text=True,
                                  env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
            return done.stdout.strip()
        return {"label": self.label, "path": str(self.root), "commit": git("rev-parse", "HEAD"),
                "changed_files": len(git("status", "--porcelain", "--untracked-files=no").splitlines())}


def title(described: dict) -> str:
    """A heading for a checkout's results: "new (/work/main, 1a2b3c4d5e + 3 changed files)"."""
    changed = described["changed_files"]
    return (f"{described['label']} ({described['path']}, {described['commit'][:10]}"
            + (f" + {changed} changed file{'s' if changed > 1 else ''})" if changed else ")"))
