"""The endpoint under load: a burst of scrapes, then slow-header and large-header clients.

Starts ``fluxmon demo`` (default limits, logs discarded) on a free 127.0.0.1 port, lets
it simulate jobs for a while so that ``/metrics`` is a loaded exposition, then:

1. opens N connections at once, each sending one scrape, and reports how many were
   answered 200, refused 503, or closed, and the age of the oldest when it ended;
2. keeps S slow-header clients (a header line a second, reconnecting when closed) and L
   clients sending 5 MB headers connected for T seconds, scraping ``/metrics`` every
   0.25 s meanwhile, and reports the daemon's RSS growth and the scrapes' latencies.

Usage: python benchmarks/http_load.py [--scrapes 1000] [--slow 200] [--large 20] [--seconds 20]
"""

from __future__ import annotations

import argparse
import collections
import time

from tests.loadgen import Attack, burst, free_port, rss_bytes, scrape, start_demo


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=1000)
    parser.add_argument("--slow", type=int, default=200)
    parser.add_argument("--large", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=10.0)
    args = parser.parse_args()
    port = free_port()
    demo = start_demo(port, rate=200.0)
    try:
        time.sleep(args.warmup)
        status, seconds, size = scrape(port)
        print(f"demo: /metrics {status}, {size} bytes in {seconds * 1000:.1f} ms")

        start = time.monotonic()
        outcomes = burst(port, args.scrapes)
        took = time.monotonic() - start
        by_status = collections.Counter(o.status for o in outcomes)
        oldest = max(o.seconds for o in outcomes)
        print(
            f"burst of {args.scrapes}: {dict(sorted(by_status.items()))}"
            " (0: closed without a reply, -1: still waiting)"
            f", oldest {oldest:.2f} s, all done in {took:.2f} s"
        )

        before = rss_bytes(demo.pid)
        attack = Attack(port, slow=args.slow, large=args.large)
        attacker = attack.spawn(args.seconds)
        peak, latencies, statuses = before, [], collections.Counter[int]()
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            try:
                status, seconds, _ = scrape(port, timeout=5.0)
            except OSError as exc:
                status, seconds = 0, 5.0
                print("  scrape failed:", exc)
            statuses[status] += 1
            latencies.append(seconds)
            peak = max(peak, rss_bytes(demo.pid))
            time.sleep(0.25)
        attacker.join(args.seconds + 10)
        latencies.sort()
        print(
            f"attack: {args.slow} slow-header + {args.large} large-header clients for"
            f" {args.seconds:.0f} s, from another process"
        )
        print(
            f"  RSS {before / 2**20:.1f} MB before, peak {peak / 2**20:.1f} MB"
            f" (+{(peak - before) / 2**20:.1f} MB)"
        )
        print(
            f"  {len(latencies)} scrapes meanwhile: {dict(statuses)}, median"
            f" {latencies[len(latencies) // 2] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
        )
        text = (
            __import__("urllib.request")
            .request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
            .read()
            .decode()
        )
        for line in text.splitlines():
            if line.startswith("fluxmon_http_refused_total"):
                print(" ", line)
    finally:
        demo.terminate()
        demo.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
