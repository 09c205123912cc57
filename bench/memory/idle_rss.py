"""bench/memory: what an idle agent holds, per ingest, optionally for several checkouts.

Usage (root)::

    python bench/memory/idle_rss.py [--tree DIR ...] [--rounds 3] [--smaps]

Starts the agent with its defaults apart from the ingest (``[[ingest.ebpf]]`` on one end of a
veth pair in a fresh namespace, ingress; or ``[[ingest.nflog]]`` reading a group) and a
NetFlow v9 export to a closed local port, waits until the ingest is ready and 2 s more, then
reads ``/proc/PID/status`` (``VmRSS``, ``VmHWM``, ``RssAnon``, ``RssFile``, threads) and
stops it. ``--tree`` runs each checkout's own ``.venv/bin/python`` (its agent), rounds
interleaved, so a before/after comparison is back to back; prints medians in MB.
``--smaps`` adds the largest mappings of the last run per tree (``/proc/PID/smaps``).
``--evict`` drops the page cache of each tree's venv shared objects before every round
(``posix_fadvise(DONTNEED)``, our own files only): file-backed RSS depends on how the cache
holds them (pages cached in large folios are mapped a whole folio per fault), so checkouts
compare from the same state. Pages a process maps cannot be dropped: run this bench with an
interpreter that is none of the compared venvs' (e.g. the system ``python3`` with pytest,
as root), or that venv's NumPy stays cached and its agent maps 3-4 MB more (measured).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.netns import Netns, end_process, veth_pair  # noqa: E402

INGESTS = {
    "ebpf": ('[[ingest.ebpf]]\ninterfaces = ["{ifname}"]\ndirection = "ingress"\n', "attached"),
    "nflog": ("[[ingest.nflog]]\ngroup = 4077\n", "reading NFLOG group"),
}
FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads")


def status(pid: int) -> dict[str, int]:
    """The :data:`FIELDS` of ``/proc/PID/status`` (kB; Threads as a count)."""
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: int(re.search(rf"^{k}:\s+(\d+)", text, re.M)[1]) for k in FIELDS}


def smaps_top(pid: int, n: int = 12) -> list[tuple[int, str]]:
    """The ``n`` mappings (by file name, anonymous ones together) with the most RSS, kB."""
    rss: collections.Counter[str] = collections.Counter()
    name = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            parts = line.split()
            name = parts[5].rsplit("/", 1)[-1] if len(parts) > 5 else "[anon]"
        elif line.startswith("Rss:"):
            rss[name] += int(line.split()[1])
    return [(kb, name) for name, kb in rss.most_common(n)]


def evict(tree: Path) -> int:
    """Drop the page cache of ``tree``'s venv shared objects; how many files."""
    n = 0
    for path in (tree / ".venv/lib").glob("python3*/site-packages/**/*.so*"):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            n += 1
        finally:
            os.close(fd)
    return n


def wait_ready(log: Path, text: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    """Until ``log`` shows ``text`` (the agent is ready); RuntimeError if it exits first.

    (Not ``bench.compare.run.wait_log``: importing that module loads NumPy into this
    process, and the running venv's NumPy libraries would then stay mapped here and cached,
    never evicted, while the other checkout's are: see ``--evict``.)"""
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{log.stem} did not start: {log.read_text()[-2000:]}")
        time.sleep(0.05)


@contextlib.contextmanager
def idle_agent(tree: Path, ingest: str, tmp: Path) -> Iterator[subprocess.Popen]:
    """``tree``'s agent with ``ingest`` on a fresh veth in its own namespace, once ready
    (NetFlow v9 to a discard port); stopped by PID, namespaces deleted, on the way out."""
    with Netns() as ns, Netns() as peer:
        pair = veth_pair(ns, peer)
        text, ready = INGESTS[ingest]
        conf = tmp / f"{ingest}.toml"
        conf.write_text('[agent]\ncontrol_socket = ""\n' + text.format(ifname=pair.a.ifname)
                        + '[[export.netflow]]\ndestination = ["127.0.0.1:9"]\nprotocol = 9\n')
        log = tmp / f"{ingest}.log"
        with open(log, "w") as out:
            proc = ns.popen([str(tree / ".venv/bin/python"), "-m", "netflow_agent.cli", "-c",
                             str(conf), "--log-level", "info"], stdout=out,
                            stderr=subprocess.STDOUT, cwd=tree)
        try:
            wait_ready(log, ready, proc)
            yield proc
        finally:
            end_process(proc, timeout=30)


def one_run(tree: Path, ingest: str, tmp: Path, want_smaps: bool) -> tuple[dict, list]:
    """Start ``tree``'s agent with ``ingest``, measure it idle, stop it."""
    with idle_agent(tree, ingest, tmp) as proc:
        time.sleep(2)
        return status(proc.pid), smaps_top(proc.pid) if want_smaps else []


def checkout_parser(description: str) -> argparse.ArgumentParser:
    """The options of a bench that compares idle agents of several checkouts."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--tree", nargs="*", type=Path, default=[ROOT],
                    help="checkouts with a .venv (default: this one)")
    ap.add_argument("--ingest", nargs="*", choices=INGESTS, default=list(INGESTS))
    ap.add_argument("--rounds", type=int, default=3)
    return ap


def not_root(bench: str) -> bool:
    """Say so and return True unless root (namespaces, BPF and NFLOG need it)."""
    if os.geteuid() == 0:
        return False
    print(f"{bench} needs root (namespaces, BPF, NFLOG)", file=sys.stderr)
    return True


def main() -> int:
    ap = checkout_parser(__doc__.splitlines()[0])
    ap.add_argument("--smaps", action="store_true")
    ap.add_argument("--evict", action="store_true",
                    help="drop the venvs' shared objects from the page cache every round")
    args = ap.parse_args()
    if not_root("bench/memory"):
        return 2
    runs: dict[tuple[Path, str], list[dict]] = collections.defaultdict(list)
    maps: dict[tuple[Path, str], list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            if args.evict:
                for tree in args.tree:
                    evict(tree.resolve())
            for ingest in args.ingest:
                for tree in args.tree:
                    st, top = one_run(tree.resolve(), ingest, Path(tmp), args.smaps)
                    runs[tree, ingest].append(st)
                    maps[tree, ingest] = top
    print(f"| checkout | ingest | {' | '.join(FIELDS)} |  (medians of {args.rounds}, MB)")
    for (tree, ingest), sts in runs.items():
        cells = [statistics.median(s[k] for s in sts) for k in FIELDS]
        text = [f"{c:.0f}" if k == "Threads" else f"{c / 1024:.1f}"
                for k, c in zip(FIELDS, cells, strict=True)]
        print(f"| {tree} | {ingest} | {' | '.join(text)} |")
        for kb, name in maps[tree, ingest]:
            print(f"    {kb / 1024:6.1f} MB  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
