"""Benchmark: masking a step's log for a PEM key and two tokens, next to a literal-only floor.

The secrets are a 2048-bit RSA key in PEM (1.7 KB; every form of the key and of each of its
lines, and the thousands of full lines of its wrapped base64 and hex) and two API tokens. The
log is `--mb` megabytes of build output: words, paths, sha256 digests, one line in ten a
76-column base64 line of other data, and the key itself, wrapped, at the end.

Measured in the same run, best of `--repeat`:
  floor   one regular expression of the three values' literal text alone, over the same log;
  ours    building the `Masker` (what each step pays before its agent starts), masking the
          whole log (`Masker.mask`, as for output files), and streaming it in 64 KiB chunks
          (`Masker.feed`, as the executors do).
Prints MB/s and the ratio to the floor. Exits 1 if a line of the wrapped key is left.
Usage: python bench/mask.py [--mb N] [--repeat R]
"""

from __future__ import annotations

import argparse
import base64
import random
import re
import sys
import time
from collections.abc import Callable

from runner.secrets.mask import Masker

# A 2048-bit RSA key in PKCS#8 is 1,218 bytes of DER: its size and line structure are what
# matters, so random bytes in PEM's shape stand in for one.
KEY_BYTES = 1218


def pem() -> str:
    body = base64.encodebytes(random.Random(2048).randbytes(KEY_BYTES)).decode().replace("\n", "")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN PRIVATE KEY-----\n" + "\n".join(lines) + "\n-----END PRIVATE KEY-----\n"


SECRETS = {
    "KEY": pem(),
    "GITHUB": "ghp_9f8e7d6c5b4a39281726354433221100aabb",
    "SLACK": "xoxb-1234-5678-abcdefghijkl",
}


def log(megabytes: float) -> bytes:
    rng = random.Random(1)
    words = [b"INFO", b"step", b"compiling", b"src/main.py:42", b"ok", b"0x1f3a", b"deadbeef"]
    words += [b"MIIE", b"error:", b"42", b"sha256:" + rng.randbytes(32).hex().encode()]
    lines, size = [], 0
    while size < megabytes * 1e6:
        if len(lines) % 10 == 0:
            line = base64.b64encode(rng.randbytes(57))
        else:
            line = b" ".join(rng.choice(words) for _ in range(8))
        lines.append(line)
        size += len(line) + 1
    return b"\n".join(lines) + b"\n" + base64.encodebytes(SECRETS["KEY"].encode())


def best(repeat: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    data = log(args.mb)
    size = len(data) / 1e6

    literal = re.compile(b"|".join(re.escape(value.encode()) for value in SECRETS.values()))
    floor = best(args.repeat, lambda: literal.sub(b"***", data))

    def build() -> Masker:
        re.purge()  # as a new process would: no compiled pattern cached
        return Masker(SECRETS)

    building = best(args.repeat, build)
    masker = Masker(SECRETS)
    whole = best(args.repeat, lambda: masker.mask(data))

    def stream() -> bytes:
        out = [masker.feed(data[at : at + 65536]) for at in range(0, len(data), 65536)]
        return b"".join(out) + masker.flush()

    streaming = best(args.repeat, stream)
    wrapped = base64.encodebytes(SECRETS["KEY"].encode()).splitlines()[:-1]
    masked = stream()
    left = [line for line in wrapped if line in masked]

    print(f"log: {size:.1f} MB; the key has {len(SECRETS['KEY'])} characters")
    print(f"floor  literal values only      {size / floor:8.1f} MB/s")
    print(f"ours   Masker() built in        {building * 1000:8.0f} ms")
    for name, seconds in (("mask (whole)", whole), ("feed (64 KiB chunks)", streaming)):
        print(f"ours   {name:24} {size / seconds:8.1f} MB/s  {seconds / floor:5.1f}x the floor")
    if left or masked != masker.mask(data):
        print(f"FAIL: {len(left)} lines of the wrapped key left, or streaming differs")
        sys.exit(1)


if __name__ == "__main__":
    main()
