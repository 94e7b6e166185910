"""How many of another tenant's ids a hostile tenant learns by probing with inserts.

A server with keys holds bob's 100 ids, chosen by bob at random in 0..1 000 000 (or, in the second
scenario, drawn by the server: an insert without ids). Alice's key (her own
tenant only) tries to insert ranges of candidate ids: a range that goes in holds none of bob's
(she revokes it again, which deletes it); one refused ALREADY_EXISTS holds at least one, and is
halved until single ids are left. Where a refusal names ids ("e.g. [...]", as the landed code's
did), she takes them at once and tries the rest of the range again. She stops when every range is
settled, after `--calls` calls, or after 50 refusals in a row of another kind (a spent budget).

    python -m benchmarks.id_probe [--compare /tmp/landed] [--calls 3000]

Reports, per checkout: bob's ids found (each checked), calls made, refusals, seconds.
"""

import argparse
import re
import tempfile
import time
from pathlib import Path

import numpy as np

import curator
from curator_loadtest.server import ManagedServer
from curator_server.auth import digest_of

from .checkout import Checkout, title
from .measure import markdown_table, write_results

RESULTS = Path(__file__).resolve().parent / "results"
SPACE, SECRET, FIRST_RANGES = 1_000_000, 100, 64
KEYS = {"alice": "probe-alice-0123456789", "bob": "probe-bob-0123456789", "admin": "probe-admin-0123456789"}
NAMED = re.compile(r"e\.g\. \[([0-9, ]*)\]")


def keys_file(directory: str) -> str:
    path = Path(directory) / "keys.toml"
    path.write_text("".join(
        f'[[keys]]\nname = "{name}"\nsha256 = "{digest_of(key)}"\n'
        + ("admin = true\n" if name == "admin" else f'tenants = ["{name}"]\n') for name, key in KEYS.items()))
    path.chmod(0o600)
    return str(path)


def probe(address: str, calls: int, drawn: bool) -> dict:
    admin = curator.connect(address, api_key=KEYS["admin"], retries=0)
    col = admin.create_collection("shared", dim=2)
    if drawn:  # the server draws bob's ids
        secret = np.asarray(col.insert(None, np.ones((SECRET, 2)), tenant="bob"), np.int64)
    else:
        secret = np.random.default_rng(20).choice(SPACE, SECRET, replace=False)
        col.insert(secret, np.ones((SECRET, 2)), tenant="bob")
    col.insert([SPACE + 1], np.ones((1, 2)), tenant="alice")
    alice = curator.connect(address, api_key=KEYS["alice"], retries=0).collection("shared")
    bounds = np.linspace(0, SPACE, FIRST_RANGES + 1).astype(np.int64)
    ranges = [np.arange(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
    found: set[int] = set()
    made = refused = other_in_a_row = 0
    start = time.perf_counter()
    while ranges and made < calls and other_in_a_row < 50:
        ids = ranges.pop()
        made += 1
        try:
            alice.insert(ids, np.ones((ids.size, 2)), tenant="alice")
            alice.revoke(ids, tenant="alice")  # her last grant: the vectors go
            other_in_a_row = 0
        except curator.AlreadyExistsError as error:
            other_in_a_row = 0
            named = NAMED.search(str(error))
            if named and named.group(1).strip():
                hits = {int(x) for x in named.group(1).split(",")}
                found |= hits
                rest = ids[~np.isin(ids, list(hits))]
                if rest.size:
                    ranges.append(rest)
            elif ids.size == 1:
                found.add(int(ids[0]))
            else:
                ranges += [ids[: ids.size // 2], ids[ids.size // 2 :]]
        except curator.CuratorError:
            refused += 1
            other_in_a_row += 1
            ranges.append(ids)  # not settled: try again later
    seconds = time.perf_counter() - start
    admin.close()
    right = len(found & set(secret.tolist()))
    return {"bob's ids": "drawn by the server" if drawn else "chosen in 0..1e6", "found": right,
            "wrong": len(found) - right, "calls": made, "refused": refused,
            "seconds": round(seconds, 2), "settled": not ranges}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", help="another checkout, probed the same way")
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    checkouts = [Checkout.this()] + ([Checkout.other(args.compare)] if args.compare else [])
    rows = []
    for checkout, drawn in [(c, False) for c in checkouts] + [(checkouts[0], True)]:
        with tempfile.TemporaryDirectory() as directory:
            server = ManagedServer(durability="none", checkout=None if checkout.shim is None else checkout,
                                   extra_args=("--keys", keys_file(directory)), api_key=KEYS["admin"])
            with server:
                rows.append({"checkout": title(checkout.describe()), **probe(server.address, args.calls, drawn)})
    text = ("Bob's 100 ids in 0..1e6 that alice's key found by probing with inserts\n\n"
            + markdown_table(rows, [("checkout", "checkout", "s"), ("bob's ids", "bob's ids", "s"),
                                    ("found", "found (of 100)", "d"),
                                    ("wrong", "wrong", "d"), ("calls", "calls", "d"), ("refused", "refused", "d"),
                                    ("seconds", "seconds", ".2f"), ("settled", "every range settled", "")]))
    write_results(RESULTS, "id_probe", {"rows": rows, "calls_limit": args.calls}, text)


if __name__ == "__main__":
    main()
