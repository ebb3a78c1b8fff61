"""CI guards around steps that run submission code (standard library only).

A pull request adds ``submissions/<name>/`` and result files; their code runs in CI (pytest imports
a press, ``verify`` runs it). These subcommands make sure what ran earlier cannot change what
judges the pull request:

  clean --rev REV [--step NAME]
      Fail if the working tree differs from commit REV: a tracked file changed or removed, or a
      new file outside the paths the committed .gitignore files ignore. Run after each step that
      runs submission code.
  trusted --rev REV [--python PY] -- ARGS...
      Run ``PY -m benchmark.cli ARGS`` with REV's ``benchmark/`` written afresh to a temporary
      folder and imported from there, not the working tree's.
  results-unchanged --base REV
      Fail if a result file of REV under leaderboard/results/ was removed, or its predictions
      changed while its submission hash and spec hash stayed the same.

Everything is read from git's objects by commit id, never through the index or git status:
code running as the same user can mark a file ``skip-worktree``/``assume-unchanged``, install an
fsmonitor hook or add ``.git/info/exclude`` and ``.git/info/attributes`` entries, and git status
or git archive would then hide a change. Pass commit ids recorded before any untrusted code ran;
a branch name can be moved by that code.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS_DIR = "leaderboard/results"
SCORED_FIELDS = ("generation", "prediction", "rouge_l", "exact_match", "kv_entries")
# Replacement refs swap objects behind a commit id; hooks and fsmonitor run code git does not need.
GIT = ["git", "-c", "core.fsmonitor=false", "-c", "core.untrackedCache=false", "-c", "core.hooksPath=/dev/null"]


class GuardError(Exception):
    """A one-line reason to fail the CI step."""


def git(*args: str, cwd: Path) -> bytes:
    env = dict(os.environ, GIT_NO_REPLACE_OBJECTS="1")
    proc = subprocess.run([*GIT, *args], cwd=cwd, capture_output=True, env=env)
    if proc.returncode:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise GuardError(f"git {' '.join(args)}: {err[-1] if err else f'exit code {proc.returncode}'}")
    return proc.stdout


def resolve(rev: str, cwd: Path) -> str:
    try:
        return git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", cwd=cwd).decode().strip()
    except GuardError:
        raise GuardError(f"{rev}: not a commit of the repository at {cwd}") from None


def toplevel(path: str) -> Path:
    return Path(git("rev-parse", "--show-toplevel", cwd=Path(path)).decode().strip()).resolve()


def tree(rev: str, cwd: Path, *paths: str) -> dict[str, tuple[str, str]]:
    """path -> (mode, blob id) of every file in commit ``rev`` (under ``paths``, if given)."""
    out = git("ls-tree", "-r", "-z", "--full-tree", rev, "--", *paths, cwd=cwd)
    entries = {}
    for record in out.split(b"\0"):
        if record:
            meta, path = record.split(b"\t", 1)
            mode, kind, oid = meta.decode().split()
            if kind == "blob":  # submodules (kind commit) have no content here
                entries[path.decode()] = (mode, oid)
    return entries


def blobs(oids: list[str], cwd: Path) -> dict[str, bytes]:
    """Raw contents of ``oids``, read from the object store: no filters, attributes or substitutions."""
    if not oids:
        return {}
    env = dict(os.environ, GIT_NO_REPLACE_OBJECTS="1")
    out = subprocess.run([*GIT, "cat-file", "--batch"], cwd=cwd, input="".join(f"{o}\n" for o in oids).encode(),
                         capture_output=True, env=env).stdout
    contents, pos = {}, 0
    for oid in oids:
        header_end = out.find(b"\n", pos)
        header = out[pos:header_end].decode(errors="replace").split() if header_end >= 0 else []
        if len(header) != 3 or header[1] != "blob":
            raise GuardError(f"object {oid} could not be read as a file ({' '.join(header) or 'no output'})")
        got, _, size = header
        contents[got] = out[header_end + 1:header_end + 1 + int(size)]
        pos = header_end + 1 + int(size) + 1
    return contents


def blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def working_blob_id(path: Path, mode: str) -> str | None:
    """The blob id of ``path`` as git would store it with ``mode``; None when it is gone or changed kind."""
    if mode == "120000":
        return blob_id(os.readlink(path).encode()) if path.is_symlink() else None
    if path.is_symlink() or not path.is_file():
        return None
    return blob_id(path.read_bytes())


def changes(root: Path, rev: str) -> list[tuple[str, str]]:
    """(what, path) for each difference between the working tree and commit ``rev``."""
    committed = tree(rev, root)
    found = []
    for path, (mode, oid) in sorted(committed.items()):
        now = working_blob_id(root / path, mode)
        if now != oid:
            found.append(("removed" if now is None and not os.path.lexists(root / path) else "modified", path))
    # Only the .gitignore files count: .git/info/exclude and core.excludesFile are not in the commit.
    listed = git("ls-files", "-z", "--cached", "--others", "--exclude-per-directory=.gitignore", cwd=root)
    for path in sorted({p.decode() for p in listed.split(b"\0") if p} - committed.keys()):
        if os.path.lexists(root / path):
            found.append(("new", path))
    return found


def cmd_clean(args) -> int:
    root = toplevel(args.repo)
    rev = resolve(args.rev, root)
    found = changes(root, rev)
    if not found:
        print(f"ci_guard: working tree unchanged after {args.step} (commit {rev[:12]})")
        return 0
    print(f"ci_guard: after {args.step}, {len(found)} path(s) differ from commit {rev[:12]}; code that ran in that "
          "step changed the checkout, so later steps could not be trusted:", file=sys.stderr)
    for what, path in found:
        print(f"  {what:<8} {path}", file=sys.stderr)
    return 1


def export(rev: str, root: Path, dest: Path, prefix: str = "benchmark") -> int:
    """Write the files of commit ``rev`` under ``prefix`` to ``dest``; returns how many."""
    entries = tree(rev, root, prefix)
    if not entries:
        raise GuardError(f"commit {rev[:12]} has no {prefix}/")
    contents = blobs(sorted({oid for _, oid in entries.values()}), root)
    for path, (mode, oid) in entries.items():
        target = dest / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if mode == "120000":
            raise GuardError(f"{path}: a symbolic link in the trusted tree; refusing to follow it")
        target.write_bytes(contents[oid])
        target.chmod(0o555 if mode == "100755" else 0o444)
    return len(entries)


def cmd_trusted(args) -> int:
    root = toplevel(args.repo)
    rev = resolve(args.rev, root)
    if args.args and args.args[0] == "--":
        args.args = args.args[1:]
    if not args.args:
        raise GuardError("trusted: give the lorakv-bench arguments after --")
    dest = Path(tempfile.mkdtemp(prefix="lorakv-trusted-"))
    try:
        n = export(rev, root, dest)
        # PYTHONSAFEPATH: `python -m` would otherwise put the working directory (the checkout, with its
        # own benchmark/) ahead of PYTHONPATH; it is inherited by the processes lorakv-bench starts.
        env = dict(os.environ, PYTHONPATH=str(dest), PYTHONSAFEPATH="1", PYTHONDONTWRITEBYTECODE="1")
        where = subprocess.run([args.python, "-c", "import benchmark; print(benchmark.__file__)"], cwd=root, env=env,
                               capture_output=True, text=True)
        imported = Path(where.stdout.strip() or "?").resolve()
        if where.returncode or dest.resolve() not in imported.parents:
            raise GuardError(f"trusted: benchmark is imported from {imported}, not from the copy of commit "
                             f"{rev[:12]} in {dest} ({where.stderr.strip().splitlines()[-1:] or 'no error'})")
        print(f"ci_guard: running lorakv-bench {' '.join(args.args)} with benchmark/ of commit {rev[:12]} ({n} files)",
              flush=True)
        return subprocess.run([args.python, "-m", "benchmark.cli", *args.args], cwd=root, env=env).returncode
    finally:
        for p in dest.rglob("*"):  # read-only files: make them removable
            if not p.is_symlink():
                p.chmod(0o755 if p.is_dir() else 0o644)
        shutil.rmtree(dest, ignore_errors=True)


def _prediction_key(p: dict) -> tuple:
    return p.get("doc_id"), p.get("question_id"), p.get("rho"), p.get("condition")


def first_difference(old: dict, new: dict) -> str | None:
    """How the predictions of ``new`` differ from those of ``old`` (the first difference), or None."""
    def by_key(data: dict) -> dict:
        grouped: dict[tuple, list] = {}
        for p in data.get("predictions") or []:
            grouped.setdefault(_prediction_key(p), []).append([p.get(f) for f in SCORED_FIELDS])
        return grouped

    before, after = by_key(old), by_key(new)

    def name(key: tuple) -> str:
        doc, question, rho, condition = key
        return f"prediction (doc {doc}, question {question}, rho {rho}, {condition})"

    for key, rows in before.items():
        if key not in after:
            return f"{name(key)} was removed"
        if len(rows) != len(after[key]):
            return f"{name(key)} appears {len(after[key])} times, was {len(rows)}"
        for was, now in zip(rows, after[key]):
            for field, a, b in zip(SCORED_FIELDS, was, now):
                if a != b:
                    return f"{name(key)}: {field} {a!r} -> {b!r}"
    added = [k for k in after if k not in before]
    return f"{name(added[0])} was added" if added else None


def result_problems(root: Path, base: str) -> list[str]:
    committed = {p: v for p, v in tree(base, root, RESULTS_DIR).items() if p.endswith(".json")}
    contents = blobs(sorted({oid for _, oid in committed.values()}), root)
    problems = []
    for path, (_, oid) in sorted(committed.items()):
        here = root / path
        if not here.is_file():
            problems.append(f"{path}: removed; a published result stays (publish a new evaluation next to it instead)")
            continue
        try:
            old, new = json.loads(contents[oid]), json.loads(here.read_bytes())
        except ValueError as exc:
            problems.append(f"{path}: not valid JSON here or in {base[:12]}: {exc}")
            continue
        if not (isinstance(old, dict) and isinstance(new, dict)):
            problems.append(f"{path}: not a JSON object")
            continue
        same_submission = (old.get("submission") or {}).get("hash") == (new.get("submission") or {}).get("hash")
        if not (same_submission and old.get("spec_hash") == new.get("spec_hash")):
            continue  # a new evaluation: its own checks (conformance, verify) judge it
        diff = first_difference(old, new)
        if diff:
            problems.append(f"{path}: {diff}, with the same submission hash and spec hash as in {base[:12]}; scores "
                            "change only with a new evaluation (a changed submission or spec)")
    return problems


def cmd_results_unchanged(args) -> int:
    root = toplevel(args.repo)
    base = resolve(args.base, root)
    problems = result_problems(root, base)
    for p in problems:
        print(f"FAIL {p}", file=sys.stderr)
    print(f"ci_guard: {len(problems)} result file(s) of commit {base[:12]} changed without a new evaluation"
          if problems else f"ci_guard: the result files of commit {base[:12]} are kept with their scores")
    return int(bool(problems))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", default=".", help="the checkout (default: the working directory)")
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("clean", help="fail if the working tree differs from a commit")
    c.add_argument("--rev", required=True, help="commit id recorded before untrusted code ran")
    c.add_argument("--step", default="the last step", help="the step just run, for the message")
    c.set_defaults(func=cmd_clean)
    t = sub.add_parser("trusted", help="run lorakv-bench with a commit's benchmark/, written afresh")
    t.add_argument("--rev", required=True)
    t.add_argument("--python", default=sys.executable, help="the interpreter with lorakv-bench's dependencies")
    t.add_argument("args", nargs=argparse.REMAINDER, help="-- then lorakv-bench's arguments")
    t.set_defaults(func=cmd_trusted)
    r = sub.add_parser("results-unchanged", help="fail if a committed result's scores changed under the same hashes")
    r.add_argument("--base", required=True)
    r.set_defaults(func=cmd_results_unchanged)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except GuardError as exc:
        print(f"ci_guard: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
