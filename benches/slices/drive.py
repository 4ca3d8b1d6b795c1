#!/usr/bin/env python3
"""The clients of the slices benchmark (benches/slices/run.sh).

  drive.py make WWW SEED...              the origin's files and their manifest
  drive.py aligned PORT WWW SEED         200 clients, each one aligned 1 MiB range of the seed's
                                         ten cold 40 MiB videos at once, then a bytes=0-1 probe
                                         of each
  drive.py mix PORT WWW SEED             a Mastodon-like mix of image and video requests
  drive.py firstbyte PORT WWW PREFIX     time to the first body byte of cold requests: a
                                         bytes=0-1 and a whole video (under PREFIX), in turn

Every answer is checked against the file it claims to be a part of: the status (206 for a
range, 200 without), the Content-Range, and every byte. A JSON line goes to stdout with the
bytes clients received, the distinct bytes they asked for, the ceilings of whole-object and
1 MiB-slice caching on that workload, and the violations found.
"""
import concurrent.futures as cf
import http.client
import json
import os
import random
import statistics
import sys
import threading
import time

MIB = 1024 * 1024


def make(www, seeds):
    """Random bytes, so a byte served from the wrong place never passes the check. Each
    seed of the aligned workload gets ten videos of its own, cold for every proxy."""
    rnd = random.Random(18)
    manifest = {}

    def write(name, size):
        path = os.path.join(www, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not (os.path.exists(path) and os.path.getsize(path) == size):
            with open(path, "wb") as f:
                left = size
                while left:
                    n = min(left, 8 * MIB)
                    f.write(os.urandom(n))
                    left -= n
        manifest[name] = size

    for seed in seeds:
        for i in range(10):
            write(f"aligned/s{seed}/v{i}.mp4", 40 * MIB)
    for i in range(12):
        write(f"first/v{i}.mp4", 40 * MIB)
    for i in range(600):
        # Attachments and avatars: mostly small, a few large photos.
        write(f"mix/img/i{i}.jpg", int(min(2 * MIB, max(8 * 1024, rnd.lognormvariate(11.6, 0.9)))))
    for i in range(40):
        write(f"mix/video/v{i}.mp4", rnd.randrange(5 * MIB, 40 * MIB))
    with open(os.path.join(www, "manifest.json"), "w") as f:
        json.dump(manifest, f)


class Checker:
    def __init__(self, www):
        self.www = www
        self.lock = threading.Lock()
        self.violations = []
        self.wrong_range = 0
        self.client_bytes = 0
        # name -> list of (first, end) byte spans clients received
        self.spans = {}

    def bad(self, what):
        with self.lock:
            if len(self.violations) < 20:
                self.violations.append(what)
            else:
                self.violations.append("...")
                del self.violations[20:-1]

    def check(self, name, asked, status, content_range, body, size):
        """`asked` is (first, last or None) for a range request, None for a whole one."""
        first = 0
        if asked is not None:
            if status != 206:
                with self.lock:
                    self.wrong_range += 1
                self.bad(f"{name} {asked}: status {status}, not 206")
                return
            try:
                unit, rest = content_range.split(" ", 1)
                span, total = rest.split("/")
                first, last = (int(x) for x in span.split("-"))
                assert unit == "bytes" and int(total) == size
            except Exception:
                with self.lock:
                    self.wrong_range += 1
                self.bad(f"{name} {asked}: Content-Range {content_range!r}")
                return
            want_first = asked[0] if asked[0] is not None else size - asked[1]
            if first != want_first:
                with self.lock:
                    self.wrong_range += 1
                self.bad(f"{name} {asked}: Content-Range {content_range!r}")
                return
        elif status != 200:
            self.bad(f"{name}: status {status}")
            return
        with open(os.path.join(self.www, name), "rb") as f:
            f.seek(first)
            if f.read(len(body)) != body:
                self.bad(f"{name} {asked}: wrong bytes")
                return
        with self.lock:
            self.client_bytes += len(body)
            self.spans.setdefault(name, []).append((first, first + len(body)))

    def summary(self, manifest, extra):
        distinct = 0
        slices = 0
        whole = 0
        for name, spans in self.spans.items():
            spans.sort()
            end = -1
            for a, b in spans:
                if b <= a:
                    continue
                if a > end:
                    distinct += b - a
                    end = b
                elif b > end:
                    distinct += b - end
                    end = b
            size = manifest[name]
            touched = set()
            for a, b in spans:
                if b > a:
                    touched.update(range(a // MIB, (b - 1) // MIB + 1))
            slices += sum(min(MIB, size - s * MIB) for s in touched)
            whole += size
        cb = max(self.client_bytes, 1)
        out = {
            "client_bytes": self.client_bytes,
            "distinct_bytes": distinct,
            "ceiling_whole_objects": round(1 - whole / cb, 4),
            "ceiling_1mib_slices": round(1 - slices / cb, 4),
            "ceiling_bytes_asked": round(1 - distinct / cb, 4),
            "violations": len(self.violations),
            "wrong_range": self.wrong_range,
            "first_violations": self.violations[:5],
        }
        out.update(extra)
        return out


def fetch(port, path, rng=None, read_limit=None):
    """(status, content_range, body, seconds to the first body byte)."""
    headers = {"Host": "bench.example"}
    if rng is not None:
        a, b = rng
        headers["Range"] = f"bytes={'' if a is None else a}-{'' if b is None else b}"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    start = time.perf_counter()
    conn.request("GET", "/" + path, headers=headers)
    resp = conn.getresponse()
    body = bytearray()
    first_byte = None
    while True:
        want = 256 * 1024
        if read_limit is not None:
            want = min(want, read_limit - len(body))
            if want <= 0:
                break
        piece = resp.read1(want)
        if not piece:
            break
        if first_byte is None:
            first_byte = time.perf_counter() - start
        body += piece
    status, content_range = resp.status, resp.getheader("Content-Range", "")
    conn.close()
    return status, content_range, bytes(body), first_byte


def aligned(port, www, seed):
    manifest = json.load(open(os.path.join(www, "manifest.json")))
    checker = Checker(www)
    rnd = random.Random(seed)
    asks = [(rnd.randrange(10), rnd.randrange(40)) for _ in range(200)]
    barrier = threading.Barrier(len(asks))

    def one(ask):
        v, s = ask
        name = f"aligned/s{seed}/v{v}.mp4"
        barrier.wait()
        rng = (s * MIB, (s + 1) * MIB - 1)
        status, cr, body, _ = fetch(port, "v/" + name, rng)
        checker.check(name, rng, status, cr, body, manifest[name])

    with cf.ThreadPoolExecutor(len(asks)) as pool:
        list(pool.map(one, asks))
    for v in range(10):
        name = f"aligned/s{seed}/v{v}.mp4"
        status, cr, body, _ = fetch(port, "v/" + name, (0, 1))
        checker.check(name, (0, 1), status, cr, body, manifest[name])
    return checker.summary(manifest, {"requests": len(asks) + 10})


def sessions(rnd, manifest, count):
    """Each session is what one client does after its timeline shows one attachment."""
    images = sorted(n for n in manifest if n.startswith("mix/img/"))
    videos = sorted(n for n in manifest if n.startswith("mix/video/"))
    # Popularity: a few attachments are everywhere, most are seen a few times.
    img_w = [1 / (i + 1) for i in range(len(images))]
    vid_w = [1 / (i + 1) ** 0.8 for i in range(len(videos))]
    out = []
    for _ in range(count):
        if rnd.random() < 0.95:
            out.append([(rnd.choices(images, img_w)[0], None, None)])
            continue
        name = rnd.choices(videos, vid_w)[0]
        size = manifest[name]
        r = rnd.random()
        if r < 0.30:
            # Downloaded whole (a browser without range support, a remote server).
            out.append([(name, None, None)])
        elif r < 0.58:
            # iOS: a two-byte probe, then the first second and a seek, as closed ranges.
            seek = rnd.randrange(size // MIB) * MIB
            out.append([
                (name, (0, 1), None),
                (name, (0, min(size, MIB + rnd.randrange(MIB)) - 1), None),
                (name, (seek, min(size, seek + MIB) - 1), None),
            ])
        elif r < 0.79:
            # Android: open-ended from a seek point, read until its buffer is full.
            start = rnd.choice([0, rnd.randrange(size)])
            out.append([(name, (start, None), 2 * MIB)])
        else:
            # Browsers: open-ended from 0, a few seconds watched, then the end (moov).
            out.append([
                (name, (0, None), MIB + rnd.randrange(2 * MIB)),
                (name, (None, 64 * 1024), None),
            ])
    return out


def mix(port, www, seed):
    manifest = json.load(open(os.path.join(www, "manifest.json")))
    checker = Checker(www)
    plan = sessions(random.Random(seed), manifest, 3000)

    def run(session):
        for name, rng, limit in session:
            status, cr, body, _ = fetch(port, "v/" + name, rng, limit)
            checker.check(name, rng, status, cr, body, manifest[name])

    started = time.perf_counter()
    with cf.ThreadPoolExecutor(16) as pool:
        list(pool.map(run, plan))
    return checker.summary(
        manifest,
        {"sessions": len(plan), "seconds": round(time.perf_counter() - started, 1)},
    )


def firstbyte(port, www, whole_prefix):
    """Cold requests, one at a time with a pause between them, alternating: `bytes=0-1` of a
    video (under v/), and another video whole (under `whole_prefix`)."""
    manifest = json.load(open(os.path.join(www, "manifest.json")))
    checker = Checker(www)
    times = {"range": [], "whole": []}
    names = sorted(n for n in manifest if n.startswith("first/"))
    # A proxy's first request after it started pays for setting itself up (connections,
    # the disk tier's first files): one untimed request of each kind goes first.
    for prefix in ("v/", whole_prefix):
        fetch(port, prefix + "mix/img/i0.jpg", (0, 1))
        fetch(port, prefix + "mix/img/i1.jpg")
    for ranged, whole in zip(names[0::2], names[1::2]):
        for kind, name, prefix, rng in [("range", ranged, "v/", (0, 1)), ("whole", whole, whole_prefix, None)]:
            status, cr, body, t = fetch(port, prefix + name, rng)
            checker.check(name, rng, status, cr, body, manifest[name])
            times[kind].append(t)
            time.sleep(0.3)
    out = {"violations": len(checker.violations)}
    for kind, values in times.items():
        out[f"{kind}_ms_median"] = round(statistics.median(values) * 1000, 2)
        out[f"{kind}_ms"] = [round(t * 1000, 2) for t in values]
    return out


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "make":
        make(sys.argv[2], [int(seed) for seed in sys.argv[3:]])
    elif what == "aligned":
        print(json.dumps(aligned(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))))
    elif what == "mix":
        print(json.dumps(mix(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))))
    elif what == "firstbyte":
        print(json.dumps(firstbyte(int(sys.argv[2]), sys.argv[3], sys.argv[4])))
