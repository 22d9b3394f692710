#!/usr/bin/env python3
"""Proves the rendered Kubernetes manifests agree with the binary and with each other.

For each overlay (`kubectl kustomize k8s/overlays/<name>`):

1. Static agreement (CronJobs of the binary too: env names against `platform <args> --help`,
   restricted security context, Forbid concurrency, claimed PVCs rendered): no `replicas`
   where an HPA owns the Deployment; grace period above
   preStop sleep + SHUTDOWN_TIMEOUT; the pods' runAsUser is the image's non-root USER; HPA
   ranges and behaviour as the contract says; every env name is one the role's `--help` lists;
   every Secret key a pod reads is produced (Secret or ExternalSecret).
2. Live: in a private network namespace (so the manifest's own ports and Service names can be
   used as they are), it starts each Redis (the store; the gateways' rate-limit cache) with its
   workload's command line and config, checks each has the eviction and persistence its use
   needs, then
   each Deployment's container `args` with exactly the env the manifest gives it (ConfigMaps,
   Secrets, values), probes the manifest's startup/readiness/liveness paths and ports and the
   Prometheus annotation's port/path, sends traffic through the gateway, and records which TCP
   connections the roles open; then runs each CronJob's container once to completion (its
   volumes as temp dirs) and records its connections too.
3. NetworkPolicies: evaluates every policy over the namespace's pods plus the outside peers
   (kube-dns, Prometheus in `monitoring`, the ingress controller, strangers) and asserts that
   the allowed flows are exactly: the connections seen in step 2, DNS for the roles that
   resolve a Service name, the Prometheus scrape of each annotated port, and the ingress
   controller to the gateway. Anything more or less fails.

Redis with Sentinel (k8s/components/redis-sentinel, prod): statically, the topology's shape (an
odd number >= 3 of pods, required anti-affinity per node, a PDB keeping all but one, a headless
governing Service that publishes not-ready pods and no ClusterIP Service over master and
replicas, a PVC per pod, maxmemory at most half the memory limit, restricted containers with all
three probes) and that every client of the store (users, auth, the backup CronJob) lists every
sentinel by its pod's name, with a sentinel password (users: REDIS_MIN_REPLICAS_ACK as the
overlay expects). Live, every pod's containers run from the manifest's own command lines and
scripts (ConfigMap volumes laid out, emptyDirs fresh at each pod start, the PVC kept), pod i on
127.0.0.(i+1) as its status.podIP with the manifest's ports, the pods' names resolving there
(the private /etc/hosts); one timing-only line is added to redis.conf (HARNESS_REDIS_CONF). With
the clients' own REDIS_PASSWORD, REDIS_SENTINEL_PASSWORD and REDIS_MASTER_NAME it checks: pod 0
starts as the master and the others replicate a write, both Redis and Sentinel refuse a client
without the password, the sentinels agree on the master and see every replica and sentinel;
after the roles' traffic, `SENTINEL FAILOVER` completes (every sentinel names a new master that
holds the write and takes a new one), and the old master's pod, restarted, comes back at once
as the new master's replica (its start script asked the sentinels) with the new write, while
every sentinel, its own included, sees the same complete topology; then the new master's pod is
stopped as the kubelet stops it (preStop hooks, then SIGTERM): by the time its hook returns the
other sentinels name another master, and the pod, restarted, comes back as that one's replica;
last, that master's redis-server is killed: the sentinels fail over by themselves
(down-after-milliseconds), and the container, restarted, comes back as a replica. The connections between the
pods (replication, sentinel → redis, sentinel gossip) are flows the policies must allow, in
both directions between two pods of the set; the clients' REDIS_SENTINELS are flows from the
manifest (the binary may not follow sentinels yet: it then reaches the first master through
REDIS_URL's host, the headless Service); pods that name their peers by host name need DNS.

Authentication (AUTH_MODE, JWT_*, JWKS_*: the gateway's flags of issue 13). Where an overlay turns
it on with an https JWKS_URL outside the cluster (an external provider; the overlays here trust the
auth role instead), the gateway's fetch of that host's port
is a flow the policies must allow: to "internet", a public address standing for the provider,
whose addresses are unknown in advance. The live run serves a stand-in for the provider: the
JWKS_URL host resolves to loopback like the Services, an HTTPS server on its port (a throwaway CA,
given to the gateway as JWKS_CA_FILE, the one env the manifest does not give) serves a fresh
key (ES256, or what JWT_ALGORITHMS allows), and the traffic carries a token signed with it for
the manifest's JWT_ISSUER and first JWT_AUDIENCES. So the gateway must become ready (`"jwks":"up"`), refuse an anonymous write
with 401, proxy the signed ones, and its JWKS connection is seen like any other.

The auth role (`platform auth`, issue 14) is the platform's own issuer. Its pod's Secret volumes
are laid out under the sandbox at their mountPaths (the env's paths rewritten to match, as
Redis' config path is), with a signing key made by `platform auth generate-key` added to the
keys directory and a clients file holding one client made here with `hash-secret`. The traffic
gets a token from POST /api/auth/token through the gateway with that client, and uses it for the
users requests: where the gateway's JWKS_URL is the auth Service, its key-set fetch is a flow
the policies must allow (gateway → auth), like the token request itself.

Usage: check_manifests.py PLATFORM_BINARY [OVERLAY...]   (needs root or user namespaces,
redis-server and kubectl; run by `make check-deploy`).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import yaml

ROOT = Path(__file__).resolve().parents[2]
FAILURES: list[str] = []


def check(cond: bool, msg: str) -> None:
    if not cond:
        FAILURES.append(msg)


def note(msg: str) -> None:
    print(f"note: {msg}")


def render(overlay: str) -> list[dict]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "k8s" / "overlays" / overlay)],
        check=True, capture_output=True, text=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(objs: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def duration_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text.strip())
    if not m:
        raise ValueError(f"unparsable duration {text!r}")
    return float(m.group(1)) * units[m.group(2)]


def image_user() -> int:
    users = re.findall(r"^USER\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    uid = users[-1].split(":")[0]
    if not uid.isdigit():
        raise SystemExit(f"Dockerfile USER {uid!r} is not numeric")
    return int(uid)


@cache
def role_help(binary: str, role: str) -> str:
    return subprocess.run([binary, role, "--help"], check=True, capture_output=True, text=True).stdout


def role_env_names(binary: str, role: str) -> set[str]:
    return set(re.findall(r"\[env:\s+([A-Z_][A-Z0-9_]*)", role_help(binary, role)))  # help wraps lines


def role_deployments(objs: list[dict]) -> dict[str, dict]:
    """The Deployments that run the platform binary (a role as args[0]), not a Redis."""
    return {n: d for n, d in by_kind(objs, "Deployment").items()
            if "command" not in d["spec"]["template"]["spec"]["containers"][0]}


def role_cronjobs(objs: list[dict]) -> dict[str, dict]:
    """The CronJobs that run the platform binary (a role and its task as args), by name: their
    pod template."""
    return {n: j["spec"]["jobTemplate"]["spec"]["template"] for n, j in by_kind(objs, "CronJob").items()
            if "command" not in j["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]}


def task_env_names(binary: str, args: list[str]) -> set[str]:
    """The env names `platform ARGS… --help` lists (a task's own flags and the role's)."""
    out = subprocess.run([binary, *args, "--help"], check=True, capture_output=True, text=True).stdout
    return set(re.findall(r"\[env:\s+([A-Z_][A-Z0-9_]*)", out))


def cronjob_static_checks(overlay: str, objs: list[dict], binary: str, uid: int, secrets: "Secrets") -> None:
    claims = by_kind(objs, "PersistentVolumeClaim")
    for name, tmpl in role_cronjobs(objs).items():
        where = f"{overlay}/CronJob/{name}"
        job = by_kind(objs, "CronJob")[name]["spec"]
        check(job.get("concurrencyPolicy") == "Forbid", f"{where}: concurrencyPolicy must be Forbid (one export at a time)")
        pod = tmpl["spec"]
        check(pod.get("securityContext", {}).get("runAsUser") == uid, f"{where}: runAsUser is not the image's uid {uid}")
        check(pod.get("securityContext", {}).get("runAsNonRoot") is True, f"{where}: runAsNonRoot missing")
        (c,) = pod["containers"]
        sc = c.get("securityContext", {})
        check(sc.get("allowPrivilegeEscalation") is False and sc.get("readOnlyRootFilesystem") is True and sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: container securityContext is not restricted")
        env = container_env(objs, c, secrets, where)
        accepted = task_env_names(binary, c["args"])
        unknown = sorted(set(env) - accepted)
        check(not unknown, f"{where}: env {unknown} is not read by `platform {' '.join(c['args'])}` (it lists {sorted(accepted)})")
        for v in pod.get("volumes", []):
            if "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"]["claimName"]
                check(claim in claims, f"{where}: volume {v['name']} claims {claim}, which is not rendered")


def run_cronjobs(overlay: str, objs: list[dict], binary: str, secrets: "Secrets", work: Path,
                 services: dict[str, dict]) -> set[tuple[str, str, int]]:
    """Runs each CronJob's container once to completion with its env, its volumes as temp dirs;
    returns the flows it made (its Redis URL's Service, once the run proved it read the store)."""
    seen = set()
    for name, tmpl in role_cronjobs(objs).items():
        where = f"{overlay}/CronJob/{name}"
        (c,) = tmpl["spec"]["containers"]
        env = container_env(objs, c, secrets, where)
        root = work / name / "root"
        mounts = c.get("volumeMounts", [])
        for m in mounts:
            (root / m["mountPath"].lstrip("/")).mkdir(parents=True, exist_ok=True)
        for k, val in list(env.items()):
            for m in mounts:
                mp = m["mountPath"].rstrip("/")
                if val == mp or val.startswith(mp + "/"):
                    env[k] = str(root) + val
        env["PATH"] = "/usr/bin:/bin"
        argv = [binary, *[expand(a, env) for a in c["args"]]]
        log = work / f"{name}.log"
        p = subprocess.Popen(argv, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
        observed: set[tuple[str, int]] = set()
        deadline = time.monotonic() + 60
        while p.poll() is None and time.monotonic() < deadline:
            observed |= established({p.pid: name})
            time.sleep(0.005)
        if p.poll() is None:
            p.kill()
        code = p.wait()
        check(code == 0, f"{where}: exit code {code} (log: {log})")
        dumps = sorted(root.rglob("users-*.jsonl"))
        check(len(dumps) == 1, f"{where}: expected one users-*.jsonl, found {[d.name for d in dumps]} (log: {log})")
        if code == 0 and dumps:
            footer = json.loads(dumps[0].read_text().splitlines()[-1])
            check(footer.get("users", 0) >= 1, f"{where}: the export holds no user (footer {footer})")
            url = urlsplit(env.get("REDIS_URL", ""))
            seen.add((name, url.hostname, url.port or 6379))
        port_to_service = service_by_port(services)
        for role, port in observed:
            check(port in port_to_service, f"{overlay}: {role} connected to port {port}, which is no Service")
            seen.add((role, port_to_service.get(port, "?"), port))
        print(f"{where}: ran `platform {' '.join(c['args'])}` once: exit {code}, {[d.name for d in dumps]}")
    return seen


def service_by_port(services: dict[str, dict]) -> dict[int, str]:
    """Service port → Service name, a ClusterIP Service's first; a headless Service's where no
    ClusterIP one has the port (with Sentinel, the store's pods have only their headless one)."""
    out: dict[int, str] = {}
    for headless in (False, True):
        for name, svc in services.items():
            if (svc["spec"].get("clusterIP") == "None") == headless:
                for p in svc["spec"]["ports"]:
                    out.setdefault(p["port"], name)
    return out


def redis_workloads(objs: list[dict]) -> dict[str, dict]:
    """Every workload (StatefulSet or Deployment) whose container runs redis-server."""
    return {n: w for kind in ("StatefulSet", "Deployment") for n, w in by_kind(objs, kind).items()
            if w["spec"]["template"]["spec"]["containers"][0].get("command", [""])[0] == "redis-server"}


def start_redis(overlay: str, name: str, workload: dict, objs: list[dict], secrets: "Secrets", work: Path,
                cache: bool) -> subprocess.Popen:
    """Starts one Redis as its manifest does; checks the password, and the policy it is for:
    the store never evicts and keeps an AOF; the rate-limit cache evicts by TTL and persists nothing."""
    where = f"{overlay}/{name}"
    pod = workload["spec"]["template"]["spec"]
    (rc,) = pod["containers"]
    renv = container_env(objs, rc, secrets, where)
    conf_cm = next(v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v)
    conf_mount = next(m["mountPath"] for m in rc["volumeMounts"] if m["name"] == "config")
    conf = by_kind(objs, "ConfigMap")[conf_cm]["data"]["redis.conf"]
    (work / name).mkdir(parents=True, exist_ok=True)
    conf = re.sub(r"^dir .*$", f"dir {work / name}", conf, flags=re.M)
    (work / name / "redis.conf").write_text(conf)
    args = [expand(a, renv).replace(f"{conf_mount}/redis.conf", str(work / name / "redis.conf")) for a in rc["args"]]
    proc = subprocess.Popen([shutil.which(rc["command"][0]) or rc["command"][0], *args],
                            stdout=open(work / f"{name}.log", "w"), stderr=subprocess.STDOUT)
    rport = named_port(rc, "redis")
    auth_env = {"REDISCLI_AUTH": renv.get("REDISCLI_AUTH", ""), "PATH": os.environ["PATH"]}

    def cli(*cmd: str, env: dict | None = auth_env) -> list[str]:
        return subprocess.run(["redis-cli", "-p", str(rport), *cmd], capture_output=True, text=True, env=env).stdout.split()

    for _ in range(100):
        if cli("ping") == ["PONG"]:
            break
        time.sleep(0.05)
    check(cli("ping") == ["PONG"], f"{where}: redis did not answer PING on its port {rport} with REDISCLI_AUTH (log: {work / (name + '.log')})")
    # The readiness probe as the kubelet runs it (redis-cli with REDISCLI_AUTH, the right port).
    probe = rc["readinessProbe"].get("exec", {}).get("command")
    if probe:
        ok = subprocess.run(probe, env=auth_env, capture_output=True).returncode == 0
        check(ok, f"{where}: its readiness probe {probe} fails against it")
    policy, aof = store_policy_checks(where, cli, cache)
    check("NOAUTH" in " ".join(cli("ping", env=None)), f"{where}: redis answers without the password")
    print(f"{where}: redis on :{rport} from the manifest's command line ({'rate-limit cache' if cache else 'store'}: "
          f"maxmemory-policy {policy[0] if policy else '?'}, appendonly {aof[0] if aof else '?'})")
    return proc


def store_policy_checks(where: str, cli, cache: bool) -> tuple[list[str], list[str]]:
    """The policy a Redis needs for its use (`cli(*cmd)` runs redis-cli against it, with the
    password): the store never evicts and keeps an AOF; the rate-limit cache evicts and
    persists nothing."""
    policy = cli("config", "get", "maxmemory-policy")[-1:]
    aof = cli("config", "get", "appendonly")[-1:]
    save = cli("config", "get", "save")[1:]
    if cache:
        check(policy in (["volatile-ttl"], ["volatile-lru"], ["allkeys-lru"], ["volatile-lfu"], ["allkeys-lfu"]),
              f"{where}: the rate-limit Redis has maxmemory-policy {policy}: it must evict, not refuse writes")
        check(aof == ["no"] and save in ([""], []), f"{where}: the rate-limit Redis persists (appendonly {aof}, save {save})")
    else:
        check(policy == ["noeviction"], f"{where}: the store's maxmemory-policy is {policy}")
        check(aof == ["yes"], f"{where}: the store's appendonly is {aof}")
    return policy, aof


# ---- the gateway's authentication -----------------------------------------------------------

# Dev keeps the seeds' clients working without a token; prod requires one on every /api request.
EXPECTED_AUTH_MODE = {"dev": "off", "prod": "all"}
# The policy model's stand-in for any address outside the cluster (TEST-NET-3).
INTERNET = "internet"


@dataclass(frozen=True)
class JwksTarget:
    url: str
    host: str
    port: int
    in_cluster: bool  # the host is one of the manifests' Services


def jwks_target(env: dict[str, str], services: dict[str, dict], namespace: str) -> JwksTarget | None:
    """Where a role with this env fetches its JWKS from: a JWKS_URL is fetched whatever AUTH_MODE
    (with `off`, a token that is sent is still verified)."""
    if not env.get("JWKS_URL"):
        return None
    u = urlsplit(env["JWKS_URL"])
    host = u.hostname or ""
    short = host.removesuffix(".svc.cluster.local").removesuffix(".svc").removesuffix(f".{namespace}")
    return JwksTarget(env["JWKS_URL"], host, u.port or (443 if u.scheme == "https" else 80), short in services)


# ---- environment of a container, resolved from the rendered objects ---------------------------

@dataclass
class Secrets:
    """Secret data the pods can read: real Secrets, and for an ExternalSecret a test value."""
    data: dict[tuple[str, str], str] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)  # every Secret that will exist

    @classmethod
    def from_objects(cls, objs: list[dict]) -> "Secrets":
        s = cls()
        for name, sec in by_kind(objs, "Secret").items():
            s.names.add(name)
            for k, v in (sec.get("data") or {}).items():
                s.data[(name, k)] = base64.b64decode(v).decode()
            for k, v in (sec.get("stringData") or {}).items():
                s.data[(name, k)] = v
        for es in by_kind(objs, "ExternalSecret").values():
            target = es["spec"]["target"]["name"]
            s.names.add(target)
            # `dataFrom` (extract): keys unknown until the store answers; nothing to model.
            for item in es["spec"].get("data", []):
                s.data[(target, item["secretKey"])] = f"test-{target}-{item['secretKey']}"
        return s


def container_env(objs: list[dict], container: dict, secrets: Secrets, where: str,
                  pod_fields: dict[str, str] | None = None) -> dict[str, str]:
    """The container's env as the kubelet gives it; `pod_fields` are the downward API's values
    (metadata.name, metadata.namespace, status.podIP) for the pod being modelled."""
    cms = by_kind(objs, "ConfigMap")
    env: dict[str, str] = {}
    for src in container.get("envFrom", []):
        ref = src.get("configMapRef")
        check(ref is not None, f"{where}: only configMapRef envFrom is modelled")
        if ref is None:
            continue
        cm = cms.get(ref["name"])
        check(cm is not None, f"{where}: envFrom ConfigMap {ref['name']} is not rendered")
        env.update((cm or {}).get("data", {}))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = expand(item["value"], env)
        elif "secretKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["secretKeyRef"]
            key = (ref["name"], ref["key"])
            check(key in secrets.data, f"{where}: env {item['name']} reads {key}, which no Secret/ExternalSecret provides")
            env[item["name"]] = secrets.data.get(key, "")
        elif "configMapKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["configMapKeyRef"]
            env[item["name"]] = cms[ref["name"]]["data"][ref["key"]]
        elif "fieldRef" in item.get("valueFrom", {}) and pod_fields is not None:
            path = item["valueFrom"]["fieldRef"]["fieldPath"]
            check(path in pod_fields, f"{where}: env {item['name']} reads the pod field {path}, which is not modelled")
            env[item["name"]] = pod_fields.get(path, "")
        else:
            check(False, f"{where}: env {item['name']} has an unsupported source")
    return env


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in args and env values."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), text)


def named_port(container: dict, port) -> int:
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    raise KeyError(f"container {container['name']} has no port named {port!r}")


# ---- 1. static agreement ----------------------------------------------------------------------

EXPECTED_HPA = {
    "prod": {"gateway": (2, 15), "users": (2, 12), "auth": (2, 6)},
    "dev": {"gateway": (1, 2), "users": (1, 2), "auth": (1, 2)},
}


def static_checks(overlay: str, objs: list[dict], binary: str) -> None:
    deployments = role_deployments(objs)
    hpas = by_kind(objs, "HorizontalPodAutoscaler")
    pdbs = by_kind(objs, "PodDisruptionBudget")
    uid = image_user()
    check(uid != 0, "the image runs as root")
    shared = by_kind(objs, "ConfigMap")
    secrets = Secrets.from_objects(objs)
    for name, dep in deployments.items():
        where = f"{overlay}/Deployment/{name}"
        spec = dep["spec"]
        pod = spec["template"]["spec"]
        owned = [h for h in hpas.values() if h["spec"]["scaleTargetRef"]["name"] == name]
        check(len(owned) == 1, f"{where}: expected exactly one HPA, found {len(owned)}")
        check("replicas" not in spec, f"{where}: spec.replicas set although an HPA owns the count")
        for h in owned:
            lo_hi = (h["spec"]["minReplicas"], h["spec"]["maxReplicas"])
            check(lo_hi == EXPECTED_HPA[overlay][name], f"{where}: HPA range {lo_hi}, expected {EXPECTED_HPA[overlay][name]}")
            targets = {m["resource"]["name"]: m["resource"]["target"]["averageUtilization"] for m in h["spec"]["metrics"]}
            check(targets == {"cpu": 70, "memory": 80}, f"{where}: HPA targets {targets}")
            b = h["spec"]["behavior"]
            check(b["scaleUp"]["stabilizationWindowSeconds"] == 60 and b["scaleUp"]["policies"] == [{"type": "Pods", "value": 2, "periodSeconds": 60}], f"{where}: HPA scale-up behaviour")
            check(b["scaleDown"]["stabilizationWindowSeconds"] == 300 and b["scaleDown"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 120}], f"{where}: HPA scale-down behaviour")
        labels = spec["selector"]["matchLabels"]
        check(any(p["spec"]["selector"]["matchLabels"] == labels and p["spec"].get("minAvailable") == 1 for p in pdbs.values()), f"{where}: no PDB minAvailable 1")
        ru = spec["strategy"]
        check(ru["type"] == "RollingUpdate" and ru["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}, f"{where}: rolling update is not 1/0")
        check(pod.get("securityContext", {}).get("runAsUser") == uid, f"{where}: runAsUser is not the image's uid {uid}")
        check(pod.get("securityContext", {}).get("runAsNonRoot") is True, f"{where}: runAsNonRoot missing")
        check(bool(pod.get("topologySpreadConstraints")), f"{where}: no topologySpreadConstraints")
        (c,) = pod["containers"]
        env = container_env(objs, c, secrets, where)
        role = c["args"][0]
        accepted = role_env_names(binary, role)
        unknown = sorted(set(env) - accepted)
        check(not unknown, f"{where}: env {unknown} is not read by `platform {role}` (it lists {sorted(accepted)})")
        if role == "gateway":
            auth_static_checks(overlay, where, env, by_kind(objs, "Service"), next(iter(by_kind(objs, "Namespace")), ""))
            issuer_checks(overlay, where, env, objs, secrets)
        for v in pod.get("volumes", []):
            if "secret" in v:
                secret_name = v["secret"]["secretName"]
                check(v["secret"].get("optional", False) or secret_name in secrets.names,
                      f"{where}: volume {v['name']} mounts Secret {secret_name}, which no Secret/ExternalSecret provides")
        pre_stop = c.get("lifecycle", {}).get("preStop", {})
        check("sleep" in pre_stop and "exec" not in pre_stop, f"{where}: preStop must be the native sleep (no shell in the image)")
        grace = pod.get("terminationGracePeriodSeconds", 30)
        budget = pre_stop.get("sleep", {}).get("seconds", 0) + duration_seconds(env.get("SHUTDOWN_TIMEOUT", "25s"))
        check(grace > budget, f"{where}: terminationGracePeriodSeconds {grace} <= preStop + SHUTDOWN_TIMEOUT = {budget}")
        sc = c.get("securityContext", {})
        check(sc.get("allowPrivilegeEscalation") is False and sc.get("readOnlyRootFilesystem") is True and sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: container securityContext is not restricted")
        live = c["livenessProbe"]["httpGet"]["path"]
        check(live == "/health/live", f"{where}: liveness must not check dependencies (path {live})")
    cronjob_static_checks(overlay, objs, binary, uid, secrets)
    sentinel_static_checks(overlay, objs, secrets)
    check(bool(shared), f"{overlay}: no ConfigMaps rendered")
    ns = by_kind(objs, "Namespace")
    check(len(ns) == 1, f"{overlay}: expected one Namespace")
    for n in ns.values():
        check(n["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce") == "restricted", f"{overlay}: namespace does not enforce restricted")


def auth_static_checks(overlay: str, where: str, env: dict[str, str], services: dict[str, dict], namespace: str) -> None:
    mode = env.get("AUTH_MODE", "off")
    check(mode in ("off", "writes", "all"), f"{where}: AUTH_MODE {mode!r} is not off/writes/all")
    if overlay in EXPECTED_AUTH_MODE:
        check(mode == EXPECTED_AUTH_MODE[overlay], f"{where}: AUTH_MODE is {mode}, expected {EXPECTED_AUTH_MODE[overlay]}")
    if mode == "off":
        return
    check(bool(env.get("JWT_ISSUER")), f"{where}: AUTH_MODE {mode} without JWT_ISSUER")
    check(bool(env.get("JWKS_URL")) != bool(env.get("JWKS_FILE")), f"{where}: AUTH_MODE {mode} needs exactly one of JWKS_URL / JWKS_FILE")
    target = jwks_target(env, services, namespace)
    if target and not target.in_cluster:
        # Fetched across networks we do not control: a swapped key set would accept forged tokens.
        check(target.url.startswith("https://"), f"{where}: JWKS_URL {target.url} outside the cluster must be https")


def issuer_checks(overlay: str, where: str, gw_env: dict[str, str], objs: list[dict], secrets: Secrets) -> None:
    """Where the gateway's JWKS is the auth role's, it trusts exactly that role's issuer and audience."""
    services = by_kind(objs, "Service")
    namespace = next(iter(by_kind(objs, "Namespace")), "")
    target = jwks_target(gw_env, services, namespace)
    if not target or not target.in_cluster or target.host.split(".")[0] != "auth" or "auth" not in by_kind(objs, "Deployment"):
        return
    auth_c = by_kind(objs, "Deployment")["auth"]["spec"]["template"]["spec"]["containers"][0]
    auth_env = container_env(objs, auth_c, secrets, f"{overlay}/Deployment/auth")
    check(gw_env.get("JWT_ISSUER") == auth_env.get("AUTH_ISSUER"),
          f"{where}: JWT_ISSUER {gw_env.get('JWT_ISSUER')!r} is not the auth role's AUTH_ISSUER {auth_env.get('AUTH_ISSUER')!r}")
    audiences = [a.strip() for a in gw_env.get("JWT_AUDIENCES", "").split(",") if a.strip()]
    check(auth_env.get("AUTH_AUDIENCE", "platform-api") in audiences,
          f"{where}: JWT_AUDIENCES {audiences} does not accept the auth role's audience {auth_env.get('AUTH_AUDIENCE')!r}")
    path = urlsplit(target.url).path
    check(path in ("/.well-known/jwks.json", "/auth/.well-known/jwks.json"), f"{where}: JWKS_URL path {path} is not the auth role's JWKS")
    check(target.port == services["auth"]["spec"]["ports"][0]["port"], f"{where}: JWKS_URL port {target.port} is not the auth Service's")
    issuer = urlsplit(gw_env.get("JWT_ISSUER", ""))
    if overlay == "prod":
        check(issuer.scheme == "https", f"{where}: the prod issuer {gw_env.get('JWT_ISSUER')} is not an https URL")
    check(issuer.path.rstrip("/").endswith("/api/auth"), f"{where}: the issuer {gw_env.get('JWT_ISSUER')} is not a gateway's /api/auth")


def lay_out_volumes(where: str, pod: dict, c: dict, env: dict[str, str], secrets: Secrets, root: Path) -> dict[str, str]:
    """Writes the container's Secret volumes under root at their mountPaths (nested ones inside
    their parents, as the kubelet does) and returns env with the mountPaths rewritten to root."""
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = sorted(c.get("volumeMounts", []), key=lambda m: len(m["mountPath"]))
    for m in mounts:
        v = vols[m["name"]]
        local = root / m["mountPath"].lstrip("/")
        local.mkdir(parents=True, exist_ok=True)
        check("secret" in v, f"{where}: only Secret volumes are modelled (volume {m['name']})")
        if "secret" in v:
            for (sname, key), value in secrets.data.items():
                if sname == v["secret"]["secretName"]:
                    (local / key).write_text(value)
    env = dict(env)
    for k, val in env.items():
        for m in reversed(mounts):
            mp = m["mountPath"].rstrip("/")
            if val == mp or val.startswith(mp + "/"):
                env[k] = str(root) + val
                break
    return env


@dataclass
class AuthFixture:
    """The auth role's key and client for the live run."""
    client_id: str
    client_secret: str
    keys: int  # *.pem files in the signing keys directory


def prepare_auth(where: str, binary: str, env: dict[str, str]) -> AuthFixture:
    keys_dir, clients_file = env.get("SIGNING_KEYS_DIR"), env.get("CLIENTS_FILE")
    check(bool(keys_dir) and bool(clients_file), f"{where}: SIGNING_KEYS_DIR and CLIENTS_FILE must both be set")
    keys_dir, clients_file = Path(keys_dir or "/nonexistent"), Path(clients_file or "/nonexistent")
    check(keys_dir.is_dir(), f"{where}: SIGNING_KEYS_DIR {keys_dir} is no mounted volume")
    check(clients_file.parent.is_dir(), f"{where}: CLIENTS_FILE {clients_file} is not in a mounted volume")
    keys_dir.mkdir(parents=True, exist_ok=True)
    clients_file.parent.mkdir(parents=True, exist_ok=True)
    # Whatever the Secret brought (dev: its committed key) stays and must load too.
    subprocess.run([binary, "auth", "generate-key", str(keys_dir)], check=True, capture_output=True)
    secret = b64url(os.urandom(24))
    phc = subprocess.run([binary, "auth", "hash-secret"], input=secret, check=True, capture_output=True, text=True).stdout.strip()
    if clients_file.exists():
        try:
            committed = json.loads(clients_file.read_text())
            ok = isinstance(committed, list) and all(c.get("secret_hash", "").startswith("$argon2") for c in committed)
        except (ValueError, AttributeError):
            ok = clients_file.read_text().startswith("test-")  # an ExternalSecret's stand-in value
        check(ok, f"{where}: the clients file from the Secret is not a list of clients with Argon2 hashes")
    clients_file.write_text(json.dumps([{"client_id": "check-manifests", "secret_hash": phc, "scopes": ["users:read", "users:write"]}]))
    return AuthFixture("check-manifests", secret, len(list(keys_dir.glob("*.pem"))))


# ---- Redis with Sentinel (k8s/components/redis-sentinel) -------------------------------------

# Overlays whose users store is a Sentinel topology (prod) rather than the base's single Redis.
EXPECTED_SENTINEL = {"dev": False, "prod": True}
# Acknowledged writes where the store fails over (REDIS_MIN_REPLICAS_ACK), per overlay and role.
EXPECTED_MIN_REPLICAS_ACK = {"prod": {"users": "1"}}
# Harness-only timing (PITFALLS "Sentinel test harness"): a replica's full sync starts at once
# instead of after the 5 s wait for more replicas. Nothing else of the manifests' config changes.
HARNESS_REDIS_CONF = "\n# check_manifests.py (timing only)\nrepl-diskless-sync-delay 0\n"


def sentinel_workloads(objs: list[dict]) -> dict[str, dict]:
    """StatefulSets whose pods run a sentinel (a container port named `sentinel`) next to Redis."""
    return {n: w for n, w in by_kind(objs, "StatefulSet").items()
            if any(p.get("name") == "sentinel" for c in w["spec"]["template"]["spec"]["containers"] for p in c.get("ports", []))}


def container_by_port(pod: dict, port_name: str) -> dict:
    return next(c for c in pod["containers"] if any(p.get("name") == port_name for p in c.get("ports", [])))


def store_clients(objs: list[dict], secrets: "Secrets", overlay: str) -> dict[str, dict[str, str]]:
    """Env of every role Deployment and CronJob that uses the users store (a REDIS_URL)."""
    envs = {name: container_env(objs, d["spec"]["template"]["spec"]["containers"][0], secrets, f"{overlay}/Deployment/{name}")
            for name, d in role_deployments(objs).items()}
    envs |= {name: container_env(objs, t["spec"]["containers"][0], secrets, f"{overlay}/CronJob/{name}")
             for name, t in role_cronjobs(objs).items()}
    return {n: e for n, e in envs.items() if e.get("REDIS_URL")}


def sentinel_addresses(env: dict[str, str]) -> set[tuple[str, int]]:
    return {(a.strip().rsplit(":", 1)[0], int(a.strip().rsplit(":", 1)[1]))
            for a in env.get("REDIS_SENTINELS", "").split(",") if a.strip()}


def memory_bytes(text: str) -> int:
    """A Kubernetes quantity (Mi, Gi, M…) or a Redis size (128mb, 1gb…) in bytes."""
    m = re.fullmatch(r"(\d+)\s*([a-zA-Z]*)", text.strip())
    if not m:
        raise ValueError(f"unparsable size {text!r}")
    units = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "ki": 1024, "mi": 1024**2, "gi": 1024**3,
             "kb": 1024, "mb": 1024**2, "gb": 1024**3}
    return int(m.group(1)) * units[m.group(2).lower()]


def sentinel_static_checks(overlay: str, objs: list[dict], secrets: "Secrets") -> None:
    sets = sentinel_workloads(objs)
    if overlay in EXPECTED_SENTINEL:
        check(bool(sets) == EXPECTED_SENTINEL[overlay],
              f"{overlay}: expected {'a' if EXPECTED_SENTINEL[overlay] else 'no'} Redis Sentinel topology, found {sorted(sets)}")
    clients = store_clients(objs, secrets, overlay)
    for role, want in EXPECTED_MIN_REPLICAS_ACK.get(overlay, {}).items():
        got = clients.get(role, {}).get("REDIS_MIN_REPLICAS_ACK", "0")
        check(got == want, f"{overlay}/{role}: REDIS_MIN_REPLICAS_ACK is {got}, expected {want}")
    if not sets:
        for role, env in clients.items():
            check(not env.get("REDIS_SENTINELS"), f"{overlay}/{role}: REDIS_SENTINELS set, but no Sentinel topology runs")
        return
    # Besides it, only the gateways' rate-limit cache runs a Redis (the base's single store is gone).
    services = by_kind(objs, "Service")
    limiters = {urlsplit(e["RATE_LIMIT_REDIS_URL"]).hostname
                for d in role_deployments(objs).values()
                if (e := container_env(objs, d["spec"]["template"]["spec"]["containers"][0], secrets, f"{overlay}/Deployment")).get("RATE_LIMIT_REDIS_URL")}
    singles = [n for n, w in redis_workloads(objs).items()
               if not any(h in services and selects({"matchLabels": services[h]["spec"]["selector"]}, w["spec"]["template"]["metadata"]["labels"])
                          for h in limiters)]
    check(not singles, f"{overlay}: a single store Redis still runs next to the Sentinel topology: {singles}")
    cms = by_kind(objs, "ConfigMap")
    for name, w in sets.items():
        where = f"{overlay}/StatefulSet/{name}"
        spec = w["spec"]
        pod = spec["template"]["spec"]
        labels = spec["template"]["metadata"]["labels"]
        replicas = spec.get("replicas", 1)
        check(replicas >= 3 and replicas % 2 == 1, f"{where}: {replicas} pods; a quorum that survives one pod needs an odd number >= 3")
        rc, sc = container_by_port(pod, "redis"), container_by_port(pod, "sentinel")
        rport, sport = named_port(rc, "redis"), named_port(sc, "sentinel")
        # Pods are named <pod>.<serviceName>: that Service must be headless, publish pods before
        # they are ready (a replica must reach its master to become ready), and carry both ports.
        svc = services.get(spec.get("serviceName", ""))
        check(svc is not None and svc["spec"].get("clusterIP") == "None", f"{where}: serviceName {spec.get('serviceName')} is no headless Service")
        if svc:
            check(svc["spec"].get("publishNotReadyAddresses") is True, f"{where}: {spec['serviceName']} does not publish not-ready pods (a replica could not find its master)")
            check({rport, sport} <= {p["port"] for p in svc["spec"]["ports"]}, f"{where}: {spec['serviceName']} lacks port {rport} or {sport}")
        for sname, other in services.items():
            if other["spec"].get("clusterIP") != "None" and selects({"matchLabels": other["spec"]["selector"]}, labels):
                check(False, f"{where}: ClusterIP Service {sname} spreads connections over master and replicas (a write could land on a replica)")
        check(any(selects(p["spec"]["selector"], labels) and (p["spec"].get("maxUnavailable") == 1 or p["spec"].get("minAvailable") == replicas - 1)
                  for p in by_kind(objs, "PodDisruptionBudget").values()),
              f"{where}: no PodDisruptionBudget keeping all but one pod (the sentinels' quorum)")
        anti = pod.get("affinity", {}).get("podAntiAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution", [])
        check(any(t.get("topologyKey") == "kubernetes.io/hostname" and selects(t.get("labelSelector"), labels) for t in anti),
              f"{where}: no required pod anti-affinity per node (one node lost would take two sentinels)")
        check(bool(pod.get("topologySpreadConstraints")), f"{where}: no topologySpreadConstraints")
        check(pod.get("securityContext", {}).get("runAsNonRoot") is True, f"{where}: runAsNonRoot missing")
        check(pod.get("automountServiceAccountToken") is False, f"{where}: the service account token is mounted")
        for c in pod["containers"]:
            csc = c.get("securityContext", {})
            check(csc.get("allowPrivilegeEscalation") is False and csc.get("readOnlyRootFilesystem") is True and csc.get("capabilities", {}).get("drop") == ["ALL"],
                  f"{where}/{c['name']}: container securityContext is not restricted")
            check(all(p in c for p in ("startupProbe", "livenessProbe", "readinessProbe")), f"{where}/{c['name']}: a probe is missing")
            check("tcpSocket" in c.get("livenessProbe", {}), f"{where}/{c['name']}: liveness must be the port only (never a peer)")
            check("limits" in c.get("resources", {}), f"{where}/{c['name']}: no resource limits")
        claims = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
        check(any(m["name"] in claims for m in rc.get("volumeMounts", [])), f"{where}: redis-server's data is on no per-pod volume (volumeClaimTemplates)")
        # maxmemory (the redis.conf the pod mounts) well inside the container's memory limit.
        confs = [cms[v["configMap"]["name"]]["data"]["redis.conf"] for v in pod.get("volumes", [])
                 if "configMap" in v and "redis.conf" in cms.get(v["configMap"]["name"], {}).get("data", {})]
        check(len(confs) == 1, f"{where}: expected one redis.conf among the pod's ConfigMaps, found {len(confs)}")
        limit = rc.get("resources", {}).get("limits", {}).get("memory")
        if confs and limit:
            mm = re.search(r"^maxmemory\s+(\S+)", confs[0], re.M)
            check(mm is not None and 0 < memory_bytes(mm.group(1)) <= memory_bytes(limit) // 2,
                  f"{where}: maxmemory {mm.group(1) if mm else 'unset'} must be set to at most half the limit {limit} (replication buffers and the fork's copy-on-write come on top)")
        # Every client of the store finds it through all of its sentinels, by the pods' names.
        pods = {(f"{name}-{i}.{spec.get('serviceName')}", sport) for i in range(replicas)}
        for role, env in clients.items():
            check(sentinel_addresses(env) == pods, f"{overlay}/{role}: REDIS_SENTINELS {sorted(sentinel_addresses(env))} is not every sentinel {sorted(pods)}")
            check(bool(env.get("REDIS_SENTINEL_PASSWORD")), f"{overlay}/{role}: no REDIS_SENTINEL_PASSWORD (the sentinels require one)")
            ack = int(env.get("REDIS_MIN_REPLICAS_ACK", "0"))
            check(ack <= replicas - 1, f"{overlay}/{role}: REDIS_MIN_REPLICAS_ACK {ack} exceeds the {replicas - 1} replicas")


def flows_between_pods(pids: dict[int, tuple[int, str]], ips: list[str]) -> set[tuple[str, int]]:
    """(container, port) of every established connection a pod's process opened to another pod."""
    listening = {int(m) for m in re.findall(r":(\d+)\s", subprocess.run(["ss", "-Hltn"], capture_output=True, text=True).stdout)}
    out = subprocess.run(["ss", "-Htnp", "state", "established"], check=True, capture_output=True, text=True).stdout
    flows = set()
    for line in out.splitlines():
        cols = line.split()
        local_port = int(cols[2].rsplit(":", 1)[1])
        peer_ip, peer_port = cols[3].rsplit(":", 1)
        for pid in map(int, re.findall(r"pid=(\d+)", line)):
            if pid in pids and local_port not in listening and peer_ip in ips and ips.index(peer_ip) != pids[pid][0]:
                flows.add((pids[pid][1], int(peer_port)))
    return flows


def wait_for(fn, seconds: float, step: float = 0.1):
    """fn() until it returns something true or `seconds` pass; its last value."""
    deadline = time.monotonic() + seconds
    value = fn()
    while not value and time.monotonic() < deadline:
        time.sleep(step)
        value = fn()
    return value


class SentinelTopology:
    """One Sentinel StatefulSet run from its manifest: each pod's containers with the pod's own
    command lines and scripts (ConfigMap volumes laid out in a temp dir, emptyDirs fresh per
    pod start, the PVC kept across restarts), pod i on 127.0.0.(i+1) (its status.podIP) with
    the manifest's ports, and the pods' names (<pod>.<serviceName>[.<ns>…]) resolving there.
    The clients' own settings are used to talk to it: REDIS_PASSWORD, REDIS_SENTINEL_PASSWORD,
    REDIS_MASTER_NAME, and the hosts of REDIS_SENTINELS."""

    KEY = "check-manifests:sentinel"

    def __init__(self, overlay: str, name: str, workload: dict, objs: list[dict], secrets: "Secrets",
                 work: Path, namespace: str, client: dict[str, str]):
        self.where = f"{overlay}/StatefulSet/{name}"
        self.name, self.objs, self.secrets, self.namespace = name, objs, secrets, namespace
        self.work = work / name
        spec = workload["spec"]
        self.pod = spec["template"]["spec"]
        self.replicas = spec.get("replicas", 1)
        self.service = spec["serviceName"]
        self.claims = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
        self.policy = spec.get("podManagementPolicy", "OrderedReady")
        self.rc, self.sc = container_by_port(self.pod, "redis"), container_by_port(self.pod, "sentinel")
        self.rport, self.sport = named_port(self.rc, "redis"), named_port(self.sc, "sentinel")
        self.ips = [f"127.0.0.{i + 1}" for i in range(self.replicas)]
        self.hosts = [f"{name}-{i}.{self.service}" for i in range(self.replicas)]
        self.password = client.get("REDIS_PASSWORD", "")
        self.sentinel_password = client.get("REDIS_SENTINEL_PASSWORD", "")
        self.master_name = client.get("REDIS_MASTER_NAME", "mymaster")
        self.procs: dict[tuple[int, str], subprocess.Popen] = {}
        self.starts = [0] * self.replicas
        self.flows: set[tuple[str, int]] = set()
        self.uses_names = False
        self.timings: dict[str, float] = {}

    def hosts_lines(self) -> list[str]:
        ns = self.namespace
        return [f"{ip} {h} {h}.{ns} {h}.{ns}.svc {h}.{ns}.svc.cluster.local" for ip, h in zip(self.ips, self.hosts)]

    # -- running the pods' containers as the manifest says --

    def _container(self, i: int, c: dict) -> tuple[list[str], dict[str, str]]:
        pod_name = f"{self.name}-{i}"
        fields = {"metadata.name": pod_name, "metadata.namespace": self.namespace, "status.podIP": self.ips[i]}
        env = container_env(self.objs, c, self.secrets, f"{self.where}/{c['name']}", fields)
        vols = {v["name"]: v for v in self.pod.get("volumes", [])}
        cms = by_kind(self.objs, "ConfigMap")
        local: dict[str, str] = {}
        for m in c.get("volumeMounts", []):
            if m["name"] in self.claims:  # this pod's PVC: survives restarts
                d = self.work / "pvc" / f"{m['name']}-{pod_name}"
            elif "configMap" in vols.get(m["name"], {}):
                d = self.work / pod_name / f"start-{self.starts[i]}" / c["name"] / m["name"]
                d.mkdir(parents=True, exist_ok=True)
                for key, text in cms[vols[m["name"]]["configMap"]["name"]]["data"].items():
                    (d / key).write_text(text + (HARNESS_REDIS_CONF if key == "redis.conf" else ""))
            elif "emptyDir" in vols.get(m["name"], {}):
                d = self.work / pod_name / f"start-{self.starts[i]}" / c["name"] / m["name"]
            else:
                check(False, f"{self.where}: volume {m['name']} is of a kind the check does not model")
                continue
            d.mkdir(parents=True, exist_ok=True)
            local[m["mountPath"].rstrip("/")] = str(d)

        def rewrite(text: str) -> str:
            for mp in sorted(local, key=len, reverse=True):
                if text == mp or text.startswith(mp + "/"):
                    return local[mp] + text[len(mp):]
            return text

        env = {k: rewrite(v) for k, v in env.items()}
        env["PATH"] = "/usr/bin:/bin"
        argv = [rewrite(expand(a, env)) for a in [*c.get("command", []), *c.get("args", [])]]
        return argv, env

    def start_container(self, i: int, c: dict) -> None:
        argv, env = self._container(i, c)
        log = self.work / f"{self.name}-{i}-{c['name']}.log"
        self.procs[(i, c["name"])] = subprocess.Popen(argv, env=env, stdout=open(log, "a"), stderr=subprocess.STDOUT, cwd=self.work)

    def probe(self, i: int, c: dict) -> bool:
        """The container's readiness probe (exec) as the kubelet runs it, in its env."""
        argv, env = self._container(i, {**c, "command": c["readinessProbe"]["exec"]["command"], "args": []})
        try:
            return subprocess.run(argv, env=env, capture_output=True, timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def stop_pod(self, i: int) -> None:
        for cname in (self.sc["name"], self.rc["name"]):
            p = self.procs.pop((i, cname), None)
            if p and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    def stop(self) -> None:
        for i in range(self.replicas):
            self.stop_pod(i)

    # -- talking to it with the clients' settings --

    def cli(self, i: int, *cmd: str, sentinel: bool = False, password: str | None = "") -> list[str]:
        """redis-cli against pod i's redis-server (or sentinel): the client's password by
        default, `password=None` for none. The reply's lines."""
        pw = (self.sentinel_password if sentinel else self.password) if password == "" else password
        env = {"PATH": os.environ["PATH"], **({"REDISCLI_AUTH": pw} if pw is not None else {})}
        try:
            out = subprocess.run(["redis-cli", "--raw", "-h", self.ips[i], "-p", str(self.sport if sentinel else self.rport), *cmd],
                                 capture_output=True, text=True, env=env, timeout=5).stdout
        except subprocess.TimeoutExpired:
            return []
        return out.splitlines()

    def info(self, i: int) -> dict[str, str]:
        return dict(line.strip().split(":", 1) for line in self.cli(i, "info", "replication") if ":" in line)

    def master_view(self, i: int) -> dict[str, str]:
        """What pod i's sentinel says of the master (SENTINEL MASTER: field/value lines)."""
        lines = self.cli(i, "sentinel", "master", self.master_name, sentinel=True)
        return dict(zip(lines[0::2], lines[1::2])) if len(lines) % 2 == 0 else {}

    def agreed_master(self, among: list[int] | None = None) -> str | None:
        """The master's host if every sentinel (of the pods `among`, default all) names the
        same one (get-master-addr-by-name)."""
        answers = {tuple(self.cli(i, "sentinel", "get-master-addr-by-name", self.master_name, sentinel=True))
                   for i in (range(self.replicas) if among is None else among)}
        if len(answers) == 1:
            (answer,) = answers
            if len(answer) == 2 and answer[1] == str(self.rport):
                return answer[0]
        return None

    def tilted(self) -> list[int]:
        """Pods whose sentinel is in TILT mode: it stopped acting for 30 s because its timer
        ran late (over 2 s: a loaded machine stalls processes). Not a fault of the manifests."""
        return [i for i in range(self.replicas) if (i, self.sc["name"]) in self.procs
                and "sentinel_tilt:1" in self.cli(i, "info", "sentinel", sentinel=True)]

    def calm(self) -> None:
        """Waits (at most 40 s) until no sentinel is in TILT mode, before a step that needs
        them to act; noted, since it only says how loaded this machine is."""
        if tilted := self.tilted():
            t0 = time.monotonic()
            wait_for(lambda: not self.tilted(), 40, 0.5)
            note(f"{self.where}: sentinels {tilted} were in TILT mode (machine load); waited {time.monotonic() - t0:.1f} s")

    def pids(self) -> dict[int, tuple[int, str]]:
        return {p.pid: (i, cname) for (i, cname), p in self.procs.items()}

    def in_sync(self, i: int, master: int) -> bool:
        info = self.info(i)
        return info.get("role") == "slave" and info.get("master_host") == self.hosts[master] and info.get("master_link_status") == "up"

    def sentinels_complete(self, i: int, master: int) -> bool:
        """Pod i's sentinel names this master and counts every replica and other sentinel once."""
        view = self.master_view(i)
        return (view.get("ip") == self.hosts[master] and view.get("num-slaves") == str(self.replicas - 1)
                and view.get("num-other-sentinels") == str(self.replicas - 1))

    # -- the checks --

    def start(self) -> None:
        """Every pod from its manifest, both containers at once as the kubelet starts them, in
        the StatefulSet's order (OrderedReady, the default: pod i+1 is created once pod i is
        ready); the first master, replicas in sync, sentinels agreeing."""
        t0 = time.monotonic()
        w = self.where
        ordered = self.policy == "OrderedReady"
        for i in range(self.replicas):
            self.start_container(i, self.rc)
            self.start_container(i, self.sc)
            if ordered:
                ready = wait_for(lambda: self.probe(i, self.rc) and self.probe(i, self.sc), 30, 0.2)
                check(bool(ready), f"{w}: pod {i} never became ready (OrderedReady: the StatefulSet would never create pod {i + 1})")
        for i in range(self.replicas):
            ok = wait_for(lambda: self.cli(i, "ping") == ["PONG"], 10)
            check(bool(ok), f"{w}: pod {i}'s redis-server did not answer PING with the clients' REDIS_PASSWORD on {self.ips[i]}:{self.rport}")
            check(any("NOAUTH" in line for line in self.cli(i, "ping", password=None)), f"{w}: pod {i}'s redis-server answers without the password")
            store_policy_checks(f"{w}/pod-{i}", lambda *cmd: self.cli(i, *cmd), cache=False)
        check(self.info(0).get("role") == "master", f"{w}: pod 0 did not start as the first master ({self.info(0).get('role')})")
        for i in range(1, self.replicas):
            check(bool(wait_for(lambda: self.in_sync(i, 0), 15)), f"{w}: pod {i} is not a replica of {self.hosts[0]} in sync: {self.info(i)}")
        # A write on the master reaches every replica (min-replicas-to-write is met by now).
        check(self.cli(0, "set", self.KEY, "before-failover") == ["OK"], f"{w}: SET on the master failed")
        for i in range(1, self.replicas):
            check(bool(wait_for(lambda: self.cli(i, "get", self.KEY) == ["before-failover"], 10)), f"{w}: pod {i} did not replicate the master's write")
            check(any("READONLY" in line for line in self.cli(i, "set", self.KEY, "x")), f"{w}: replica pod {i} accepts writes")
        for i in range(self.replicas):
            check(self.probe(i, self.rc), f"{w}: pod {i}'s redis readiness probe fails on a master/replica in sync")
        self.timings["pods up and replicas in sync"] = time.monotonic() - t0
        # A sentinel reads the master's replicas every 10 s: the first ones may need that long.
        t1 = time.monotonic()
        for i in range(self.replicas):
            ok = wait_for(lambda: self.sentinels_complete(i, 0), 30, 0.2)
            check(bool(ok), f"{w}: pod {i}'s sentinel does not see master {self.hosts[0]} with {self.replicas - 1} replicas and "
                            f"{self.replicas - 1} other sentinels: {self.master_view(i)}")
            check(any("NOAUTH" in line for line in self.cli(i, "ping", sentinel=True, password=None)), f"{w}: pod {i}'s sentinel answers without the password")
            if self.password != self.sentinel_password:
                check(self.cli(i, "ping", sentinel=True, password=self.password) != ["PONG"], f"{w}: pod {i}'s sentinel accepts Redis' password")
            check(self.probe(i, self.sc), f"{w}: pod {i}'s sentinel readiness probe fails")
        check(self.agreed_master() == self.hosts[0], f"{w}: the sentinels do not agree on {self.hosts[0]} as the master")
        # Hostnames, not IPs (pod IPs change with each restart): the pods need DNS.
        self.uses_names = not re.fullmatch(r"[\d.]+|[0-9a-f:]+", self.master_view(0).get("ip", "0"))
        self.timings["sentinels converged"] = time.monotonic() - t1
        self.flows |= flows_between_pods(self.pids(), self.ips)

    def failover(self) -> None:
        """SENTINEL FAILOVER completes; the old master's pod, restarted, rejoins as a replica;
        then the new master's pod is stopped as the kubelet stops it (preStop first: it hands
        over) and, restarted, rejoins as a replica too."""
        w = self.where
        self.calm()
        t0 = time.monotonic()
        check(self.cli(1 % self.replicas, "sentinel", "failover", self.master_name, sentinel=True) == ["OK"], f"{w}: SENTINEL FAILOVER refused")
        moved = wait_for(lambda: (m := self.agreed_master()) not in (None, self.hosts[0]) and m, 30, 0.1)
        check(bool(moved), f"{w}: the sentinels do not agree on a new master after SENTINEL FAILOVER "
                           f"({[self.cli(i, 'sentinel', 'get-master-addr-by-name', self.master_name, sentinel=True) for i in range(self.replicas)]})")
        if not moved:
            return
        new = self.hosts.index(moved)
        self.timings["SENTINEL FAILOVER until every sentinel names the new master"] = time.monotonic() - t0
        check(self.info(new).get("role") == "master", f"{w}: the new master {moved} is {self.info(new).get('role')}")
        check(self.cli(new, "get", self.KEY) == ["before-failover"], f"{w}: the new master lost the write made before the failover")
        # A write on the new master, once a replica follows it (min-replicas-to-write).
        check(bool(wait_for(lambda: self.cli(new, "set", self.KEY, "after-failover") == ["OK"], 20, 0.2)),
              f"{w}: the new master refuses writes: {self.cli(new, 'set', self.KEY, 'after-failover')}")
        t1 = time.monotonic()
        self.restart_pod(0, new, "after-failover")
        self.timings["old master's pod restarted until in sync and every sentinel complete"] = time.monotonic() - t1
        # The master's pod stopped as the kubelet does it (a drain, a rollout): preStop first.
        t2 = time.monotonic()
        handed = self.restart_pod(new, new, "after-failover")
        self.timings["master's pod restarted (preStop hand-over included) until in sync and every sentinel complete"] = time.monotonic() - t2
        # A crash: the sentinels' own detection (down-after-milliseconds) and failover.
        crashed = self.crash_master(handed, "after-crash") if handed is not None else None
        self.flows |= flows_between_pods(self.pids(), self.ips)
        kinds = {(self.rc["name"], self.rport): "replication", (self.sc["name"], self.rport): "sentinel → redis",
                 (self.sc["name"], self.sport): "sentinel gossip"}
        for kind, what in kinds.items():
            check(kind in self.flows, f"{w}: no {what} connection between pods was seen ({sorted(self.flows)})")
        print(f"{w}: {self.replicas} pods from the manifest's scripts; replicas synced, sentinels agreed on {self.hosts[0]}; "
              f"SENTINEL FAILOVER → {moved}; restarted {self.hosts[0]} rejoined as its replica; stopping {moved} handed over to "
              f"{self.hosts[handed] if handed is not None else '?'}, and it rejoined as a replica; killing that one's redis-server: "
              f"{self.hosts[crashed] if crashed is not None else '?'} took over, the restarted container rejoined as a replica; "
              + ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items())
              + "; pod-to-pod flows " + ", ".join(f"{c}→:{p}" for c, p in sorted(self.flows)))

    def stop_like_kubelet(self, i: int) -> None:
        """Each container's preStop (exec) in its env, then SIGTERM (stop_pod)."""
        for c in self.pod["containers"]:
            hook = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
            if hook:
                argv, env = self._container(i, {**c, "command": hook, "args": []})
                try:
                    subprocess.run(argv, env=env, capture_output=True, timeout=self.pod.get("terminationGracePeriodSeconds", 30))
                except subprocess.TimeoutExpired:
                    check(False, f"{self.where}: pod {i}'s {c['name']} preStop outlasts the grace period")
        self.stop_pod(i)

    def restart_pod(self, i: int, master: int, value: str) -> int | None:
        """Stops pod i as the kubelet does and starts it again (fresh emptyDirs, its PVC kept);
        checks it comes back at once as a replica of the master (its start script asked the
        sentinels), with the master's data, and that every sentinel, its own included, sees the
        same complete topology. If pod i was the master, its preStop must have handed over
        before it stopped. Returns the master's index afterwards."""
        w = self.where
        self.calm()
        if i == master:
            t0 = time.monotonic()
            self.stop_like_kubelet(i)
            self.timings["master's preStop hand-over and stop"] = time.monotonic() - t0
            # Asked right after the hook returned: without it, nothing would have moved the
            # master yet (the sentinels wait down-after-milliseconds for a stopped one).
            after = self.agreed_master([k for k in range(self.replicas) if k != i])
            check(after not in (None, self.hosts[i]), f"{w}: stopping master pod {i} did not hand over first (the sentinels name {after})")
            if after in (None, self.hosts[i]):
                return None
            master = self.hosts.index(after)
            # Within the failover's own replica reconfiguration (~1 s), not after the 10 s the
            # sentinels take to find a replica the failover left following the stopped master.
            check(bool(wait_for(lambda: self.cli(master, "set", self.KEY, value) == ["OK"], 8, 0.2)),
                  f"{w}: the master after the hand-over refuses writes (no replica follows it): {self.cli(master, 'set', self.KEY, value)}")
        else:
            self.stop_like_kubelet(i)
        self.starts[i] += 1
        self.start_container(i, self.rc)
        self.start_container(i, self.sc)
        self.rejoined(i, master, value)
        return master

    def crash_master(self, master: int, value: str) -> int | None:
        """Kills the master's redis-server (SIGKILL: no preStop, no shutdown); the sentinels
        fail over after down-after-milliseconds, and the container, restarted as the kubelet
        restarts a crashed one (same pod: its emptyDir stays), rejoins as a replica."""
        w = self.where
        self.calm()
        p = self.procs.pop((master, self.rc["name"]))
        t0 = time.monotonic()
        p.kill()
        p.wait()
        moved = wait_for(lambda: (m := self.agreed_master()) not in (None, self.hosts[master]) and m, 40, 0.1)
        check(bool(moved), f"{w}: no new master agreed on after {self.hosts[master]}'s redis-server was killed")
        if not moved:
            return None
        self.timings["master killed until every sentinel names a new master"] = time.monotonic() - t0
        new = self.hosts.index(moved)
        check(bool(wait_for(lambda: self.cli(new, "set", self.KEY, value) == ["OK"], 20, 0.2)),
              f"{w}: the master after the crash refuses writes: {self.cli(new, 'set', self.KEY, value)}")
        self.start_container(master, self.rc)
        self.rejoined(master, new, value)
        return new

    def rejoined(self, i: int, master: int, value: str) -> None:
        """Pod i, just (re)started, is at once a replica of the master, then in sync with its
        data; exactly one master; every sentinel sees the same complete topology."""
        w = self.where
        # Its first answer already says replica (a sentinel would convert a second master too,
        # but only after 8 s: Sentinel's wait before it reconfigures an instance).
        first = wait_for(lambda: self.info(i), 5, 0.05)
        check(first.get("role") == "slave" and first.get("master_host") == self.hosts[master],
              f"{w}: the restarted pod {i} came back as {first.get('role')} (master_host {first.get('master_host')}), "
              f"not as a replica of {self.hosts[master]}")
        check(bool(wait_for(lambda: self.in_sync(i, master), 20)), f"{w}: the restarted pod {i} is not a replica of {self.hosts[master]} in sync: {self.info(i)}")
        check(bool(wait_for(lambda: self.cli(i, "get", self.KEY) == [value], 10)), f"{w}: the restarted pod {i} lacks the master's write")
        roles = [self.info(k).get("role") for k in range(self.replicas)]
        check(roles.count("master") == 1, f"{w}: after pod {i}'s restart the roles are {roles} (exactly one master expected)")
        check(self.probe(i, self.rc), f"{w}: the restarted pod {i}'s redis readiness probe fails")
        # The restarted sentinel is the same peer as before and the restarted redis-server the
        # same replica (one entry per pod, no stale duplicate); the restarted sentinel knows every
        # replica at once (it starts once its pod's replica is in sync: it reads the master's
        # replica list at its start, then every 10 s only).
        for k in range(self.replicas):
            # Under Sentinel's 10 s INFO period for the restarted one: it must not need it.
            ok = wait_for(lambda: self.sentinels_complete(k, master), 8 if k == i else 30, 0.2)
            check(bool(ok), f"{w}: after pod {i}'s restart pod {k}'s sentinel does not see master {self.hosts[master]} with "
                            f"{self.replicas - 1} replicas and {self.replicas - 1} other sentinels: {self.master_view(k)}")
        check(self.probe(i, self.sc), f"{w}: the restarted pod {i}'s sentinel readiness probe fails")
        check(self.agreed_master() == self.hosts[master], f"{w}: after pod {i}'s restart the sentinels do not agree on {self.hosts[master]}")

    def seen(self) -> set[tuple[str, str, int]]:
        """Flows between the set's pods, as (workload, workload, port)."""
        return {(self.name, self.name, port) for _, port in self.flows}


# ---- 2. live run ------------------------------------------------------------------------------

def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def http(method: str, url: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, str]:
    return http_with_headers(method, url, body, headers)[:2]


def http_with_headers(method: str, url: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, str, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=3) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), dict(e.headers)


def post_form(url: str, form: dict[str, str], basic: tuple[str, str]) -> tuple[int, str]:
    """An OAuth token request: form-encoded, the client by HTTP Basic."""
    creds = base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()
    req = urllib.request.Request(url, data=urlencode(form).encode(), method="POST",
                                 headers={"Content-Type": "application/x-www-form-urlencoded", "Authorization": f"Basic {creds}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_status(url: str, want: int, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    status = 0
    while time.monotonic() < deadline:
        status, _ = http_get(url, timeout=1)
        if status == want:
            return status
        time.sleep(0.05)
    return status


def established(pids: dict[int, str]) -> set[tuple[str, int]]:
    """(role, remote port) of every established TCP connection a role's process opened."""
    out = subprocess.run(["ss", "-Htnp", "state", "established"], check=True, capture_output=True, text=True).stdout
    flows = set()
    listening = {int(m) for m in re.findall(r":(\d+)\s", subprocess.run(["ss", "-Hltn"], capture_output=True, text=True).stdout)}
    for line in out.splitlines():
        cols = line.split()
        local, peer = cols[2], cols[3]
        local_port = int(local.rsplit(":", 1)[1])
        peer_port = int(peer.rsplit(":", 1)[1])
        for pid in map(int, re.findall(r"pid=(\d+)", line)):
            # An outbound connection: the local side is not a listening port.
            if pid in pids and local_port not in listening:
                flows.add((pids[pid], peer_port))
    return flows


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def openssl(*args: str, stdin: bytes | None = None) -> bytes:
    return subprocess.run(["openssl", *args], input=stdin, check=True, capture_output=True).stdout


def socket_owner(local_port: int, peer_port: int) -> int | None:
    """Pid of the process whose established TCP socket goes from local_port to peer_port."""
    out = subprocess.run(["ss", "-Htnp", "state", "established"], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        cols = line.split()
        if int(cols[2].rsplit(":", 1)[1]) == local_port and int(cols[3].rsplit(":", 1)[1]) == peer_port:
            pid = re.search(r"pid=(\d+)", line)
            if pid:
                return int(pid.group(1))
    return None


class JwksStandIn:
    """The identity provider of JWKS_URL, inside the sandbox: HTTPS on the URL's port under a
    throwaway CA (for the gateway's JWKS_CA_FILE), serving one fresh key of the first allowed
    algorithm it can make (ES256, EdDSA, RS256) on the URL's path, and signing tokens with it.
    Records which process fetched the key set."""

    KID = "manifest-check"
    ALGORITHMS = ("ES256", "EdDSA", "RS256")

    def __init__(self, work: Path, target: JwksTarget, algorithms: str):
        self.target = target
        allowed = [a.strip() for a in algorithms.split(",")]
        self.alg = next((a for a in allowed if a in self.ALGORITHMS), "ES256")
        check(self.alg in allowed, f"the JWKS stand-in makes only {self.ALGORITHMS} keys; JWT_ALGORITHMS is {algorithms}")
        self.path = urlsplit(target.url).path or "/"
        d = work / "jwks"
        d.mkdir(parents=True)
        self.ca = d / "ca.pem"
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        openssl("req", "-x509", *ec, "-keyout", str(d / "ca.key"), "-out", str(self.ca), "-days", "2",
                "-subj", "/CN=check-manifests test CA",
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        openssl("req", "-new", *ec, "-keyout", str(d / "server.key"), "-out", str(d / "server.csr"), "-subj", f"/CN={target.host}")
        (d / "server.ext").write_text(f"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                                      f"extendedKeyUsage=serverAuth\nsubjectAltName=DNS:{target.host}\n")
        openssl("x509", "-req", "-in", str(d / "server.csr"), "-CA", str(self.ca), "-CAkey", str(d / "ca.key"),
                "-set_serial", "2", "-days", "2", "-extfile", str(d / "server.ext"), "-out", str(d / "server.pem"))
        self.signing_key = d / "signing.key"
        jwk = {"alg": self.alg, "use": "sig", "kid": self.KID}
        if self.alg == "ES256":
            openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(self.signing_key))
            point = openssl("pkey", "-in", str(self.signing_key), "-pubout", "-outform", "DER")[-64:]  # x || y
            jwk |= {"kty": "EC", "crv": "P-256", "x": b64url(point[:32]), "y": b64url(point[32:])}
        elif self.alg == "EdDSA":
            openssl("genpkey", "-algorithm", "ed25519", "-out", str(self.signing_key))
            jwk |= {"kty": "OKP", "crv": "Ed25519", "x": b64url(openssl("pkey", "-in", str(self.signing_key), "-pubout", "-outform", "DER")[-32:])}
        else:
            openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(self.signing_key))
            modulus = openssl("rsa", "-in", str(self.signing_key), "-noout", "-modulus").decode().strip().split("=", 1)[1]
            jwk |= {"kty": "RSA", "n": b64url(bytes.fromhex(modulus)), "e": "AQAB"}
        self.jwks = json.dumps({"keys": [jwk]}).encode()
        self.work = d
        self.fetched_by: list[int | None] = []

        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(d / "server.pem", d / "server.key")
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path.split("?", 1)[0] != stand_in.path:
                    self.send_error(404)
                    return
                stand_in.fetched_by.append(socket_owner(self.client_address[1], target.port))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "max-age=300")
                self.send_header("Content-Length", str(len(stand_in.jwks)))
                self.end_headers()
                self.wfile.write(stand_in.jwks)

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def finish_request(self, request, client_address):
                # The TLS handshake in the connection's own thread, not in the accept loop.
                try:
                    request = tls.wrap_socket(request, server_side=True)
                except (ssl.SSLError, OSError):
                    return
                super().finish_request(request, client_address)
                try:
                    request.unwrap()  # close_notify before the close
                except (ssl.SSLError, OSError):
                    pass

        self.server = Server(("127.0.0.1", target.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self, env: dict[str, str]) -> str:
        """A token the gateway configured by `env` accepts: its issuer, first audience, write scope."""
        now = int(time.time())
        claims = {"iss": env["JWT_ISSUER"], "sub": "check-manifests", "iat": now, "nbf": now, "exp": now + 300}
        audiences = [a for a in env.get("JWT_AUDIENCES", "").split(",") if a.strip()]
        if audiences:
            claims["aud"] = audiences[0].strip()
        if env.get("JWT_WRITE_SCOPE"):
            claims["scope"] = env["JWT_WRITE_SCOPE"]
        header = {"alg": self.alg, "typ": "JWT", "kid": self.KID}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        if self.alg == "EdDSA":
            (self.work / "signing-input").write_text(signing_input)
            sig = openssl("pkeyutl", "-sign", "-rawin", "-inkey", str(self.signing_key), "-in", str(self.work / "signing-input"))
        else:
            sig = openssl("dgst", "-sha256", "-sign", str(self.signing_key), stdin=signing_input.encode())
            if self.alg == "ES256":
                sig = ecdsa_der_to_raw(sig)
        return f"{signing_input}.{b64url(sig)}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def ecdsa_der_to_raw(der: bytes, size: int = 32) -> bytes:
    """DER SEQUENCE { INTEGER r, INTEGER s } (openssl's ECDSA signature) → r || s (JWS)."""
    i = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7F)
    out = b""
    for _ in range(2):
        assert der[i] == 0x02, "not an ECDSA signature"
        n = der[i + 1]
        out += der[i + 2:i + 2 + n].lstrip(b"\0").rjust(size, b"\0")
        i += 2 + n
    return out


def live_run(overlay: str, objs: list[dict], binary: str) -> tuple[set[tuple[str, str, int]], set[str]]:
    """Runs the manifests' containers; returns the outbound flows seen (src, dst service, port)
    and the workloads seen naming their peers by host name (they need DNS)."""
    secrets = Secrets.from_objects(objs)
    services = by_kind(objs, "Service")
    namespace = next(iter(by_kind(objs, "Namespace")))
    work = Path(tempfile.mkdtemp(prefix=f"k8s-{overlay}-"))
    procs: list[subprocess.Popen] = []
    pids: dict[int, str] = {}
    deployments = role_deployments(objs)
    envs = {name: container_env(objs, d["spec"]["template"]["spec"]["containers"][0], secrets, f"{overlay}/Deployment/{name}")
            for name, d in deployments.items()}
    # Roles that fetch a JWKS from outside the cluster: a stand-in provider serves it here.
    targets = {name: t for name, e in envs.items() if (t := jwks_target(e, services, namespace)) and not t.in_cluster}
    stand_ins: dict[str, JwksStandIn] = {}
    service_ports = {p["port"] for s in services.values() for p in s["spec"]["ports"]}
    # The users store as a Sentinel topology, talked to with its main client's settings.
    clients = store_clients(objs, secrets, overlay)
    client = clients.get("users") or next(iter(clients.values()), {})
    topologies = [SentinelTopology(overlay, name, w, objs, secrets, work, namespace, client)
                  for name, w in sentinel_workloads(objs).items()]
    try:
        # Service names (short and FQDN) resolve to loopback: every Service port is distinct.
        hosts = ["127.0.0.1 localhost"]
        for svc in services:
            hosts.append(f"127.0.0.1 {svc} {svc}.{namespace} {svc}.{namespace}.svc {svc}.{namespace}.svc.cluster.local")
        # So does the identity provider's host, its port served by the stand-in.
        hosts += sorted({f"127.0.0.1 {t.host}" for t in targets.values()})
        # And each Sentinel pod's name to its own loopback address (its status.podIP).
        for topology in topologies:
            hosts += topology.hosts_lines()
        (work / "hosts").write_text("\n".join(hosts) + "\n")
        subprocess.run(["mount", "--bind", str(work / "hosts"), "/etc/hosts"], check=True)
        for name, t in targets.items():
            check(t.port not in service_ports, f"{overlay}/{name}: JWKS_URL port {t.port} is also a Service port (the sandbox cannot tell them apart)")
            stand_ins[name] = JwksStandIn(work / name, t, envs[name].get("JWT_ALGORITHMS", "ES256,EdDSA,RS256"))

        # Each Redis (the store, and the gateways' rate-limit cache) with its workload's own
        # command line and config (dir moved to a temp dir).
        limiter_hosts = {urlsplit(e["RATE_LIMIT_REDIS_URL"]).hostname for e in envs.values() if e.get("RATE_LIMIT_REDIS_URL")}
        for rname, workload in redis_workloads(objs).items():
            cache = any(selects({"matchLabels": services[h]["spec"]["selector"]}, workload["spec"]["template"]["metadata"]["labels"])
                        for h in limiter_hosts if h in services)
            procs.append(start_redis(overlay, rname, workload, objs, secrets, work, cache))
        # Before the roles: they find the master through the sentinels.
        for topology in topologies:
            topology.start()

        # Users and auth first (the gateway's readiness depends on users, and with auth on on
        # the auth role's key set), then the gateway.
        order = sorted(deployments, key=lambda n: {"users": 0, "auth": 1}.get(n, 2))
        fixture: AuthFixture | None = None
        for name in order:
            pod = deployments[name]["spec"]["template"]["spec"]
            (c,) = pod["containers"]
            env = lay_out_volumes(f"{overlay}/{name}", pod, c, envs[name], secrets, work / name / "root")
            if c["args"][0] == "auth":
                fixture = prepare_auth(f"{overlay}/{name}", binary, env)
            env["PATH"] = "/usr/bin:/bin"
            stand_in = stand_ins.get(name)
            own_jwks = jwks_target(env, services, namespace)
            in_cluster_jwks = bool(own_jwks and own_jwks.in_cluster)
            if stand_in:
                env["JWKS_CA_FILE"] = str(stand_in.ca)
            argv = [binary, *[expand(a, env) for a in c["args"]]]
            p = subprocess.Popen(argv, env=env, stdout=open(work / f"{name}.log", "w"), stderr=subprocess.STDOUT)
            procs.append(p)
            pids[p.pid] = name
            # With auth on, ready means a key set is loaded: required when the stand-in serves it.
            auth_on = env.get("AUTH_MODE", "off") != "off"
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                get = c[probe]["httpGet"]
                url = f"http://127.0.0.1:{named_port(c, get['port'])}{get['path']}"
                if probe == "readinessProbe" and auth_on and not stand_in and not in_cluster_jwks:
                    note(f"{overlay}/{name}: auth on without a stand-in provider: readiness not required")
                    continue
                status = wait_status(url, 200, 10)
                check(status == 200, f"{overlay}/{name}: {probe} {url} answered {status} (log: {work / (name + '.log')})")
                if probe == "readinessProbe" and auth_on and (stand_in or in_cluster_jwks):
                    _, body = http_get(url)
                    deps = json.loads(body or "{}").get("dependencies", {})
                    check(deps.get("jwks") == "up", f"{overlay}/{name}: readiness dependencies {deps}, expected \"jwks\":\"up\"")
            ann = deployments[name]["spec"]["template"]["metadata"].get("annotations", {})
            check(ann.get("prometheus.io/scrape") == "true", f"{overlay}/{name}: no prometheus.io/scrape annotation")
            status, body = http_get(f"http://127.0.0.1:{ann.get('prometheus.io/port')}{ann.get('prometheus.io/path', '/metrics')}")
            check(status == 200 and "http_requests_total" in body, f"{overlay}/{name}: the annotated metrics endpoint answered {status}")
            if c["args"][0] == "auth" and fixture:
                # Every key file loaded (the Secret's own, dev's committed one, and ours).
                status, body = http_get(f"http://127.0.0.1:{named_port(c, 'http')}/.well-known/jwks.json")
                published = len(json.loads(body).get("keys", [])) if status == 200 else 0
                check(published == fixture.keys, f"{overlay}/{name}: JWKS has {published} keys, the keys directory {fixture.keys} (log: {work / (name + '.log')})")

        # Traffic through the gateway Service port: gateway → users → Redis, with the password;
        # with auth on, a write without a token is refused and the token of the stand-in passes.
        gw = services["gateway"]["spec"]["ports"][0]["port"]
        new_user = {"name": "Manifest Check", "email": f"check-{overlay}@example.com"}
        auth = {}
        token = None
        if fixture:
            # A service's token from the platform's own issuer, through the gateway's /api/auth.
            status, body = post_form(f"http://gateway:{gw}/api/auth/token", {"grant_type": "client_credentials"},
                                     (fixture.client_id, fixture.client_secret))
            check(status == 200, f"{overlay}: POST /api/auth/token through the gateway answered {status} {body}")
            if status == 200:
                answer = json.loads(body)
                check(answer.get("token_type") == "Bearer", f"{overlay}: token response {answer.keys()}")
                token = answer.get("access_token")
        if envs["gateway"].get("AUTH_MODE", "off") != "off":
            status, body, headers = http_with_headers("POST", f"http://gateway:{gw}/api/users", new_user)
            challenge = {k.lower(): v for k, v in headers.items()}.get("www-authenticate", "")
            check(status == 401 and "authentication_required" in body and challenge.startswith("Bearer "),
                  f"{overlay}: POST without a token answered {status} {body} (WWW-Authenticate: {challenge!r}), expected 401")
        gw_jwks = jwks_target(envs["gateway"], services, namespace)
        if stand_in := stand_ins.get("gateway"):
            auth = {"Authorization": f"Bearer {stand_in.token(envs['gateway'])}"}
        elif token and gw_jwks and gw_jwks.in_cluster:
            # Verified by the gateway against the auth role's JWKS (AUTH_MODE off too).
            auth = {"Authorization": f"Bearer {token}"}
        status, body = http("POST", f"http://gateway:{gw}/api/users", new_user, auth)
        check(status == 201, f"{overlay}: POST through the gateway answered {status} {body}")
        if status == 201:
            uid = json.loads(body)["id"]
            status, _, headers = http_with_headers("GET", f"http://gateway:{gw}/api/users/{uid}", headers=auth)
            check(status == 200, f"{overlay}: GET through the gateway answered {status}")
            if envs["gateway"].get("RATE_LIMIT", "off") != "off":
                policy = {k.lower(): v for k, v in headers.items()}.get("ratelimit-policy", "")
                check('"ip"' in policy and '"client"' in policy,
                      f"{overlay}: RATE_LIMIT={envs['gateway']['RATE_LIMIT']}, but the answer's RateLimit-Policy is {policy!r}")
        flows = established(pids)
        jobs_seen = run_cronjobs(overlay, objs, binary, secrets, work, services)

        # Map the remote ports back to Services (or to the provider outside).
        port_to_service = service_by_port(services)
        port_to_service.update({s.target.port: INTERNET for s in stand_ins.values()})
        seen = set()
        for role, port in flows:
            check(port in port_to_service, f"{overlay}: {role} connected to port {port}, which is no Service")
            seen.add((role, port_to_service.get(port, "?"), port))
        # JWKS connections are short: the stand-in noted who opened each while it was open.
        for name, stand_in in stand_ins.items():
            check(bool(stand_in.fetched_by), f"{overlay}/{name}: never fetched {stand_in.target.url} (log: {work / (name + '.log')})")
            for pid in stand_in.fetched_by:
                check(pid in pids, f"{overlay}: {stand_in.target.url} fetched by pid {pid}, which is no role")
                seen.add((pids.get(pid, "?"), INTERNET, stand_in.target.port))
            print(f"{overlay}/{name}: JWKS fetched {len(stand_in.fetched_by)}x from the stand-in for {stand_in.target.url} "
                  f"({stand_in.alg}); tokens signed with it were used for the traffic")
        # After the roles' traffic: a role that does not follow the sentinels yet reached the
        # first master through REDIS_URL's host.
        for topology in topologies:
            topology.failover()
            seen |= topology.seen()
        return seen | jobs_seen, {t.name for t in topologies if t.uses_names}
    finally:
        for stand_in in stand_ins.values():
            stand_in.close()
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                code = p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                code = p.wait()
            if p.pid in pids:
                check(code == 0, f"{overlay}/{pids[p.pid]}: exit code {code} after SIGTERM (log: {work / (pids[p.pid] + '.log')})")
        for topology in topologies:
            topology.stop()
        subprocess.run(["umount", "/etc/hosts"], check=False)


# ---- 3. NetworkPolicies -----------------------------------------------------------------------

@dataclass(frozen=True)
class Peer:
    name: str
    namespace: str  # "" outside the cluster: only an ipBlock can name it
    labels: tuple
    ns_labels: tuple
    ports: tuple = ()  # (name, port, protocol) of its containers
    ip: str = ""

    def lab(self) -> dict:
        return dict(self.labels)

    def ns_lab(self) -> dict:
        return dict(self.ns_labels)


def selects(selector: dict | None, labels: dict) -> bool:
    if selector is None:
        return True
    for k, v in selector.get("matchLabels", {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions", []):
        op, key, values = e["operator"], e["key"], e.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def in_ip_block(ip: str, block: dict) -> bool:
    """An ipBlock matches by address, pods' too: the conservative reading (CNIs differ on
    whether pod traffic is matched by ipBlock), so `except` must keep the cluster out."""
    if not ip:
        return False
    addr = ipaddress.ip_address(ip)
    net = ipaddress.ip_network(block["cidr"])
    return addr.version == net.version and addr in net and not any(
        addr.version == ipaddress.ip_network(e).version and addr in ipaddress.ip_network(e) for e in block.get("except", []))


def peer_matches(entry: dict, policy_ns: str, other: Peer) -> bool:
    if "ipBlock" in entry:
        return in_ip_block(other.ip, entry["ipBlock"])
    if not other.namespace:
        return False
    if "namespaceSelector" in entry:
        if not selects(entry["namespaceSelector"], other.ns_lab()):
            return False
    elif other.namespace != policy_ns:
        return False
    return selects(entry.get("podSelector"), other.lab())


def port_matches(rule_ports: list | None, target: Peer, port: int, proto: str) -> bool:
    if not rule_ports:
        return True
    for rp in rule_ports:
        if rp.get("protocol", "TCP") != proto:
            continue
        p = rp.get("port")
        if p is None:
            return True
        if isinstance(p, str):
            p = next((num for (n, num, pr) in target.ports if n == p), None)
        if p == port or (rp.get("endPort") and p <= port <= rp["endPort"]):
            return True
    return False


def direction_allows(policies: list[dict], ns: str, subject: Peer, other: Peer, target: Peer,
                     port: int, proto: str, direction: str) -> bool:
    """True if `subject`'s policies allow this flow in `direction` (Ingress/Egress)."""
    if subject.namespace != ns:
        return True  # our policies do not govern pods of other namespaces
    applying = [p for p in policies if selects(p["spec"]["podSelector"], subject.lab())
                and direction in p["spec"].get("policyTypes", ["Ingress"])]
    if not applying:
        return True
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for p in applying:
        for rule in p["spec"].get(key, []):
            peers = rule.get(peers_key)
            if (not peers or any(peer_matches(e, ns, other) for e in peers)) and port_matches(rule.get("ports"), target, port, proto):
                return True
    return False


# The second pod of a StatefulSet with several (flows between its pods are flows too).
OTHER_POD = "/other-pod"


def policy_checks(overlay: str, objs: list[dict], seen: set[tuple[str, str, int]], resolvers: set[str] = frozenset()) -> None:
    (ns_obj,) = by_kind(objs, "Namespace").values()
    ns = ns_obj["metadata"]["name"]
    ns_labels = {**ns_obj["metadata"].get("labels", {}), "kubernetes.io/metadata.name": ns}
    policies = list(by_kind(objs, "NetworkPolicy").values())
    services = by_kind(objs, "Service")

    # Pods get addresses from a typical pod range, so ipBlock rules are evaluated too.
    pod_ips = (f"10.244.{i // 250}.{i % 250 + 2}" for i in range(1000))
    ours: dict[str, Peer] = {}
    for kind in ("Deployment", "StatefulSet"):
        for name, w in by_kind(objs, kind).items():
            tmpl = w["spec"]["template"]
            ports = tuple((p.get("name"), p["containerPort"], p.get("protocol", "TCP")) for c in tmpl["spec"]["containers"] for p in c.get("ports", []))
            ours[name] = Peer(name, ns, tuple(sorted(tmpl["metadata"]["labels"].items())), tuple(sorted(ns_labels.items())), ports, next(pod_ips))
            if kind == "StatefulSet" and w["spec"].get("replicas", 1) > 1:
                ours[name + OTHER_POD] = Peer(name + OTHER_POD, ns, ours[name].labels, ours[name].ns_labels, ports, next(pod_ips))
    for name, tmpl in role_cronjobs(objs).items():
        ours[name] = Peer(name, ns, tuple(sorted(tmpl["metadata"]["labels"].items())), tuple(sorted(ns_labels.items())), (), next(pod_ips))

    def outside(name, namespace, labels, ports=(), ip=None):
        return Peer(name, namespace, tuple(sorted(labels.items())), (("kubernetes.io/metadata.name", namespace),), ports, ip or next(pod_ips))

    peers = [
        *ours.values(),
        outside("kube-dns", "kube-system", {"k8s-app": "kube-dns"}, (("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"))),
        outside("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"}),
        outside("ingress-controller", "ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"}),
        outside("stranger-elsewhere", "default", {"app": "stranger"}),
        outside("other-monitoring-pod", "monitoring", {"app.kubernetes.io/name": "grafana"}),
        Peer("stranger-here", ns, (("app", "stranger"),), tuple(sorted(ns_labels.items())), (), next(pod_ips)),
        # Addresses an egress to "anywhere outside" must not include: the API server and a
        # node (kind's node network), the cloud metadata endpoint.
        outside("kube-apiserver", "kube-system", {"component": "kube-apiserver"}, (("https", 6443, "TCP"), ("https-svc", 443, "TCP")), "172.18.0.2"),
        outside("node-kubelet", "kube-system", {"node": "worker"}, (("kubelet", 10250, "TCP"),), "192.168.10.2"),
        Peer("cloud-metadata", "", (), (), (("http", 80, "TCP"),), "169.254.169.254"),
        # Any public address: an identity provider's, whose addresses are unknown in advance.
        Peer(INTERNET, "", (), (), (), "203.0.113.10"),
    ]
    secrets = Secrets.from_objects(objs)
    envs = {name: container_env(objs, w["spec"]["template"]["spec"]["containers"][0], secrets, f"{overlay}/{name}")
            for name, w in by_kind(objs, "Deployment").items()}
    envs |= {name: container_env(objs, t["spec"]["containers"][0], secrets, f"{overlay}/CronJob/{name}")
             for name, t in role_cronjobs(objs).items()}
    jwks = {name: t for name, e in envs.items() if (t := jwks_target(e, services, ns))}
    candidate_ports = sorted({(p, pr) for peer in peers for (_, p, pr) in peer.ports}
                             | {(53, "UDP"), (53, "TCP"), (80, "TCP"), (443, "TCP")}
                             | {(t.port, "TCP") for t in jwks.values()})

    allowed = set()
    for src in peers:
        for dst in peers:
            if src is dst:
                continue
            for port, proto in candidate_ports:
                if dst.namespace == ns and not any(p == port and pr == proto for (_, p, pr) in dst.ports):
                    continue  # nothing listens there
                if src.namespace != ns and dst.namespace != ns:
                    continue  # not our business
                if direction_allows(policies, ns, src, dst, dst, port, proto, "Egress") and \
                        direction_allows(policies, ns, dst, src, dst, port, proto, "Ingress"):
                    allowed.add((src.name, dst.name, port, proto))

    # What must be allowed, each for a reason the roles' real behaviour gives.
    service_to_workload = {}
    for sname, s in services.items():
        for wname, w in ours.items():
            if selects({"matchLabels": s["spec"]["selector"]}, w.lab()) and not wname.endswith(OTHER_POD):
                service_to_workload[sname] = wname
    expected = {(src, service_to_workload.get(svc, svc), port, "TCP") for (src, svc, port) in seen}
    # The clients of a Sentinel topology ask its sentinels (seen live when the binary follows
    # them; from the manifest always): to the workload of the host's Service (<pod>.<service>).
    for name, env in envs.items():
        for host, port in sentinel_addresses(env):
            svc = host.split(".")[1] if "." in host else host
            expected.add((name, service_to_workload.get(svc, svc), port, "TCP"))
    # A workload that names its peers by host name resolves them.
    for name in resolvers:
        expected |= {(name, "kube-dns", 53, "UDP"), (name, "kube-dns", 53, "TCP")}
    # Several pods of one workload: a flow between two of them goes both ways (any pod may be
    # the master), and a flow to or from the workload concerns each of its pods.
    def pods_of(name: str) -> list[str]:
        return [name, name + OTHER_POD] if name + OTHER_POD in ours else [name]
    expected = {(a, b, port, proto) for (src, dst, port, proto) in expected
                for a in pods_of(src) for b in pods_of(dst) if a != b}
    # Names the roles resolve: the hosts of their URLs, when not IP literals.
    for name, env in envs.items():
        hosts = [re.sub(r"^[a-z]+://(?:[^@/]*@)?([^:/]+).*$", r"\1", v) for k, v in env.items() if k.endswith("_URL")]
        if any(not re.fullmatch(r"[\d.]+", h) for h in hosts):
            expected |= {(name, "kube-dns", 53, "UDP"), (name, "kube-dns", 53, "TCP")}
    # The JWKS fetch with auth on (seen live when the binary has the flags; from the manifest
    # always): to its Service's workload, or to the internet.
    for name, t in jwks.items():
        short = t.host.split(".")[0]
        expected.add((name, service_to_workload[short] if t.in_cluster else INTERNET, t.port, "TCP"))
    # Prometheus scrapes each annotated port; the ingress controller reaches the entry point.
    for kind in ("Deployment", "StatefulSet"):
        for name, w in by_kind(objs, kind).items():
            ann = w["spec"]["template"]["metadata"].get("annotations", {})
            if ann.get("prometheus.io/scrape") == "true":
                expected.add(("prometheus", name, int(ann["prometheus.io/port"]), "TCP"))
    gw_port = services["gateway"]["spec"]["ports"][0]["port"]
    expected.add(("ingress-controller", "gateway", gw_port, "TCP"))

    for flow in sorted(expected - allowed):
        check(False, f"{overlay}: NetworkPolicies block a flow the platform needs: {flow}")
    for flow in sorted(allowed - expected):
        check(False, f"{overlay}: NetworkPolicies allow a flow nothing needs: {flow}")
    check(("gateway", "users", 3001) in {(a, b, p) for (a, b, p, _) in expected}, f"{overlay}: the gateway never connected to users")
    check(("users", "redis", 6379) in {(a, b, p) for (a, b, p, _) in expected}, f"{overlay}: users never connected to redis")
    if envs.get("gateway", {}).get("RATE_LIMIT") == "redis":
        limiter = urlsplit(envs["gateway"].get("RATE_LIMIT_REDIS_URL", "")).hostname
        check(("gateway", service_to_workload.get(limiter, "?")) in {(a, b) for (a, b, _) in seen_by_workload(seen, service_to_workload)},
              f"{overlay}: RATE_LIMIT=redis, but the gateway never connected to {limiter}")
    if "auth" in ours:
        check(("gateway", "auth", 3002) in {(a, b, p) for (a, b, p) in seen_by_workload(seen, service_to_workload)},
              f"{overlay}: the gateway never connected to auth")
        check(("auth", "redis", 6379) in {(a, b, p) for (a, b, p) in seen_by_workload(seen, service_to_workload)},
              f"{overlay}: auth never connected to redis")
    print(f"{overlay}: {len(allowed)} flows allowed, all needed: " + ", ".join(f"{a}->{b}:{p}/{pr}" for a, b, p, pr in sorted(allowed)))
    for name, t in sorted(jwks.items()):
        if not t.in_cluster:
            print(f"{overlay}: {INTERNET}:{t.port} is {name}'s JWKS_URL {t.url} (its addresses are unknown in advance)")


def seen_by_workload(seen: set[tuple[str, str, int]], service_to_workload: dict[str, str]) -> set[tuple[str, str, int]]:
    return {(src, service_to_workload.get(svc, svc), port) for (src, svc, port) in seen}


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    binary = os.path.abspath(sys.argv[1])
    overlays = sys.argv[2:] or ["dev", "prod"]
    if os.environ.get("CHECK_MANIFESTS_INSIDE") != "1":
        # Re-run inside fresh network and mount namespaces: loopback ports and /etc/hosts
        # become ours, whatever runs on this machine.
        unshare = ["unshare", "--net", "--mount", "--fork"]
        if os.geteuid() != 0:
            unshare.insert(1, "--map-root-user")
        env = {**os.environ, "CHECK_MANIFESTS_INSIDE": "1"}
        return subprocess.run([*unshare, sys.executable, __file__, binary, *overlays], env=env).returncode
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for overlay in overlays:
        objs = render(overlay)
        static_checks(overlay, objs, binary)
        seen, resolvers = live_run(overlay, objs, binary)
        policy_checks(overlay, objs, seen, resolvers)
    for f in FAILURES:
        print(f"FAIL {f}", file=sys.stderr)
    print(f"check_manifests: {len(FAILURES)} failure(s) in {', '.join(overlays)}")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
