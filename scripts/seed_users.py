#!/usr/bin/env python3
"""Writes N users to stdout as Redis protocol, the way the seeds' Node.js service stores them
(`SET user:<id> <json>` + `SADD users:index <id>`), for `redis-cli --pipe`."""
import sys
import uuid

n = int(sys.argv[1])
tag = sys.argv[2] if len(sys.argv) > 2 else "seed"
out = sys.stdout.buffer
buf = []


def cmd(*parts: str) -> bytes:
    enc = [p.encode() for p in parts]
    return b"*%d\r\n" % len(enc) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in enc)


for i in range(n):
    uid = str(uuid.uuid4())
    at = "2025-%02d-%02dT%02d:%02d:%02d.%03dZ" % (
        1 + i // 2_419_200_000 % 12, 1 + i // 86_400_000 % 28, i // 3_600_000 % 24,
        i // 60_000 % 60, i // 1000 % 60, i % 1000)
    user = ('{"id":"%s","name":"Seed User %d","email":"%s%d@example.com",'
            '"created_at":"%s","updated_at":"%s"}') % (uid, i, tag, i, at, at)
    buf.append(cmd("SET", "user:" + uid, user))
    buf.append(cmd("SADD", "users:index", uid))
    if len(buf) >= 20000:
        out.write(b"".join(buf))
        buf.clear()
out.write(b"".join(buf))
