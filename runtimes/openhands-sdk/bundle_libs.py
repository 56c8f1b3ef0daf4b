"""Make a runtime tree self-contained: copy every shared library its ELF files need that the system does not
provide into LIBDIR, and give each ELF file that needs one a RUNPATH relative to $ORIGIN.

usage: bundle_libs.py TREE LIBDIR   (run in the build stage, where the libraries are installed)
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

# Never copied: glibc's own libraries (a copied libc would not match the container's ld.so), and the C++ and
# GCC runtimes, which manylinux wheels assume too (every Debian/Ubuntu image has them: apt links them). Copies
# of these built on Debian 12 would raise the tree's glibc floor from 2.35 to 2.36 (Ubuntu 22.04 has 2.35).
SYSTEM = {"libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1", "libutil.so.1",
          "libresolv.so.2", "libanl.so.1", "ld-linux-x86-64.so.2", "linux-vdso.so.1",
          "libstdc++.so.6", "libgcc_s.so.1"}


def is_elf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"


def resolved(path: Path) -> dict[str, str | None]:
    """Each library ldd lists for path -> where it resolves here (None when not found)."""
    out = subprocess.run(["ldd", str(path)], capture_output=True, text=True).stdout
    libs: dict[str, str | None] = {}
    for line in out.splitlines():
        name, arrow, rest = line.strip().partition(" => ")
        if arrow:
            libs[name] = None if rest.startswith("not found") else rest.split(" (")[0]
    return libs


def needed(path: Path) -> list[str]:
    out = subprocess.run(["patchelf", "--print-needed", str(path)], capture_output=True, text=True)
    return out.stdout.split() if out.returncode == 0 else []


def main(tree: Path, libdir: Path) -> None:
    libdir.mkdir(parents=True, exist_ok=True)
    queue = [p for p in tree.rglob("*") if p.is_file() and not p.is_symlink() and is_elf(p)]
    patched = 0
    while queue:
        path = queue.pop()
        where = resolved(path)
        outside = [n for n in needed(path) if n not in SYSTEM and where.get(n) and not Path(where[n]).is_relative_to(tree)]
        for name in needed(path):
            if name not in SYSTEM and name in where and where[name] is None:
                print(f"bundle_libs: {path}: {name} not found (left as is)", file=sys.stderr)
        if not outside:
            continue
        for name in outside:
            target = libdir / name
            if not target.exists():
                shutil.copy2(Path(where[name]).resolve(), target)
                queue.append(target)
        rpath = "$ORIGIN/" + os.path.relpath(libdir, path.parent) if path.parent != libdir else "$ORIGIN"
        old = subprocess.run(["patchelf", "--print-rpath", str(path)], capture_output=True, text=True).stdout.strip()
        # Into a new file, renamed over the old: this very interpreter may have the old one mapped (zlib, ...).
        new = path.with_name(path.name + ".patched")
        subprocess.run(["patchelf", "--set-rpath", ":".join(p for p in (rpath, old) if p), "--output", str(new),
                        str(path)], check=True)
        new.chmod(path.stat().st_mode)
        os.replace(new, path)
        patched += 1
    print(f"bundle_libs: {len(list(libdir.glob('*.so*')))} libraries in {libdir}, {patched} files patched")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
