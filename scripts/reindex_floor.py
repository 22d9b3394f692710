#!/usr/bin/env python3
"""The floor under `platform users reindex`: the Redis CPU that the index writes alone cost,
with no safety check, in the cheapest order found, on the seed users of the Redis at PORT.

Part of `make bench-scale` (a benchmark, not a test). It sends only what any reindex must send
for a first migration of seed data: SCAN + MGET to find and read every user, one SADD to
`users:index`, one MSETNX of the email guards (MGET + MSET of the new ones where some exist),
then, sorted newest first
over all users (inserts at the head of the skiplists, the cheapest order measured: about 3x
cheaper than scan order, 10% cheaper than oldest first), one ZADD NX to `users:by_created` and
one ZADD to `users:by_created_lex` per 500 users. Nothing checks that a user is unchanged
between its read and its write (the reindex does, so that it is safe beside live traffic).

Redis runs commands on one thread, so Redis CPU per user bounds any client's rate:
1e6 / (µs per user) users/s at best, with Redis 100% busy. Prints one JSON object: Redis CPU
per user in µs, that bound in users/s, and the µs per user of each command.
It writes the indexes (the caller flushes the data afterwards). Standard library only.
"""
import datetime
import json
import socket
import sys

BATCH = 500


class Redis:
    """A minimal pipelining RESP2 client (bulk strings, integers, arrays, nil, errors)."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.buf = b""
        self.pos = 0

    @staticmethod
    def _encode(args) -> bytes:
        parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)

    def _line(self) -> bytes:
        while True:
            end = self.buf.find(b"\r\n", self.pos)
            if end >= 0:
                line = self.buf[self.pos:end]
                self.pos = end + 2
                return line
            self._fill()

    def _fill(self):
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("redis closed the connection")
        self.buf = self.buf[self.pos:] + chunk
        self.pos = 0

    def _reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind in (b"+", b":"):
            return int(rest) if kind == b":" else rest
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) - self.pos < n + 2:
                self._fill()
            value = self.buf[self.pos:self.pos + n]
            self.pos += n + 2
            return value
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise RuntimeError("unexpected reply %r" % line)

    def pipe(self, commands):
        self.sock.sendall(b"".join(self._encode(c) for c in commands))
        return [self._reply() for _ in commands]

    def __call__(self, *args):
        return self.pipe([args])[0]

    def cpu(self) -> float:
        info = self("INFO", "cpu").decode()
        return sum(float(line.split(":")[1]) for line in info.splitlines()
                   if line.startswith(("used_cpu_user:", "used_cpu_sys:")))

    def command_usec(self) -> dict:
        usec = {}
        for line in self("INFO", "commandstats").decode().splitlines():
            if line.startswith("cmdstat_"):
                name, rest = line[len("cmdstat_"):].split(":", 1)
                fields = dict(f.split("=") for f in rest.split(","))
                usec[name] = int(fields["usec"])
        return usec


def created_ms(raw: str) -> int:
    return int(datetime.datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp() * 1000)


def main():
    r = Redis(int(sys.argv[1]))
    r("CONFIG", "RESETSTAT")
    before = r.cpu()
    ordered = []
    cursor = b"0"
    while True:
        cursor, keys = r("SCAN", cursor, "MATCH", "user:*", "COUNT", 1000)
        for start in range(0, len(keys), BATCH):
            chunk = keys[start:start + BATCH]
            users = [json.loads(raw) for raw in r("MGET", *chunk) if raw is not None]
            if not users:
                continue
            ids = [u["id"] for u in users]
            guards = {}
            for u in users:
                guards.setdefault(b"users:email:" + u["email"].lower().encode(), u["id"])
            pairs = [x for item in guards.items() for x in item]
            # All the batch's guards new (a first migration): one MSETNX; else the new ones.
            if r.pipe([["SADD", "users:index", *ids], ["MSETNX", *pairs]])[1] == 0:
                owners = r("MGET", *guards)
                new = [x for (g, i), o in zip(guards.items(), owners) if o is None for x in (g, i)]
                if new:
                    r("MSET", *new)
            ordered.extend((created_ms(u["created_at"]), u["id"]) for u in users)
        if cursor == b"0":
            break
    ordered.sort(reverse=True)
    for start in range(0, len(ordered), BATCH):
        chunk = ordered[start:start + BATCH]
        by_created = [x for ms, i in chunk for x in (ms, i)]
        lex = [x for ms, i in chunk for x in (0, "%015d:%s" % (ms, i))]
        r.pipe([["ZADD", "users:by_created", "NX", *by_created],
                ["ZADD", "users:by_created_lex", *lex]])
    spent = r.cpu() - before
    n = len(ordered)
    usec = r.command_usec()
    per_user = {k: round(v / n, 2) for k, v in sorted(usec.items())
                if k in ("scan", "mget", "sadd", "msetnx", "mset", "zadd")}
    print(json.dumps({"users": n, "redis_us_per_user": round(spent * 1e6 / n, 2),
                      "bound_users_per_s": int(n / spent), "commands_us_per_user": per_user}))


if __name__ == "__main__":
    main()
