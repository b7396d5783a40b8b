#!/usr/bin/env python3
"""Runs the built image as the Kubernetes manifests run it (scripts/image test).

Every workload of k8s/base (the migrate Job, event-ingestion, the three consumer Deployments)
runs from the image with buildah (chroot isolation, the host's network): as the uid and gid of
its securityContext, its ENTRYPOINT plus the workload's args (no shell), and the environment its
manifest gives it: every ConfigMap key, every key of the Secrets it reads (with this machine's
values for where the stores and the broker are), its own env entries. Then: migrate succeeds,
serve answers /healthz and /readyz and accepts events, each consumer role is ready and applies
them (PostgreSQL and Redis are read to see it), and the image is small and holds no build tools,
no sources, no secrets.

Usage: image-test.py IMAGE
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import yaml

IMAGE = sys.argv[1]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, BUILDAH_ISOLATION="chroot")
MAX_SIZE_MB = 150
problems = []


def say(msg):
    print(f"image test: {msg}", file=sys.stderr, flush=True)


def need(cond, what):
    if not cond:
        problems.append(what)
        say(f"FAIL: {what}")
    return cond


def buildah(*args, check=True):
    return subprocess.run(["buildah", *args], env=ENV, check=check, capture_output=True, text=True).stdout.strip()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, headers=None, timeout=5):
    req = urllib.request.Request(url, method=method, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return None, str(e)


def eventually(what, check, seconds=90):
    deadline = time.time() + seconds
    while time.time() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.5)
    need(False, f"timed out waiting for {what}")
    return None


# The manifests: workloads, the ConfigMap, which Secret keys each reads.
docs = []
for name in sorted(os.listdir(f"{ROOT}/k8s/base")):
    if name.endswith(".yaml"):
        docs += [d for d in yaml.safe_load_all(open(f"{ROOT}/k8s/base/{name}")) if d]
by = {(d["kind"], d["metadata"]["name"]): d for d in docs if "metadata" in d}
configmap = by[("ConfigMap", "event-consumer-config")]["data"]

run_id = uuid.uuid4().hex[:12]
db_name = f"gamemetrics_image_{run_id}"
topic = f"image-test-{run_id}"
# Where this machine's stores and broker are: the values a cluster's Secrets and ConfigMap hold.
local = {
    "DATABASE_URL": f"postgres://gamemetrics:gamemetrics@127.0.0.1:5432/{db_name}?sslmode=disable",
    "REDIS_URL": "redis://127.0.0.1:6379",
    "KAFKA_BROKERS": os.environ.get("KAFKA_BROKERS", "127.0.0.1:9092"),
    # The local broker is PLAINTEXT; tests/kafka_sasl.rs covers the Secret's SASL_SSL settings.
    "KAFKA_EXTRA_CONFIG": "",
    # One Redis, not the seed's cluster; nothing to WAIT for.
    "REDIS_CLUSTER": "false",
    "REDIS_WAIT_REPLICAS": "0",
    # This run's own topic, keys and groups, beside whatever else uses the machine's services.
    "KAFKA_TOPIC": topic,
    "REDIS_KEY_PREFIX": f"image:{run_id}:",
    "CONSUMER_GROUP_PREFIX": f"image-{run_id}-",
}


def workload_env(pod_spec):
    """The environment a pod of this spec gets, with `local` values where a cluster's differ."""
    c = pod_spec["containers"][0]
    env = dict(configmap)
    for src in c.get("envFrom", []):
        if "secretRef" in src:
            secret = by[("Secret", src["secretRef"]["name"])]
            env.update({k: "CHANGE_ME" for k in secret["stringData"]})
        elif "configMapRef" in src:
            env.update(by[("ConfigMap", src["configMapRef"]["name"])]["data"])
    for e in c.get("env", []):
        env[e["name"]] = e.get("value", "CHANGE_ME")
    for k in list(env):
        if k in local:
            env[k] = local[k]
    for k in ("KAFKA_TOPIC", "REDIS_KEY_PREFIX", "CONSUMER_GROUP_PREFIX"):
        env[k] = local[k]
    leftover = [k for k, v in env.items() if v == "CHANGE_ME"]
    need(not leftover, f"no local value for the Secret keys {leftover}")
    return env


def pod(kind, name):
    spec = by[(kind, name)]["spec"]["template"]["spec"]
    c = spec["containers"][0]
    sc = spec.get("securityContext", {})
    return c.get("args", []), workload_env(spec), f"{sc.get('runAsUser')}:{sc.get('runAsGroup')}"


# The manifests deploy what is built: the same name and version in every kustomization.
version = IMAGE.rsplit(":", 1)[1]
for kz in ("base", "overlays/dev", "overlays/prod"):
    for img in yaml.safe_load(open(f"{ROOT}/k8s/{kz}/kustomization.yaml")).get("images", []):
        need(img["newName"].rsplit("/", 1)[-1] == "gamemetrics" and str(img["newTag"]) == version,
             f"k8s/{kz} deploys {img['newName']}:{img['newTag']}, the build makes gamemetrics:{version}")
need(f"gamemetrics:{version}" in open(f"{ROOT}/docs/deploy.md").read(),
     f"docs/deploy.md names the image gamemetrics:{version}")

config = json.loads(buildah("inspect", "--type", "image", IMAGE))
entrypoint = config["OCIv1"]["config"].get("Entrypoint") or []
need(entrypoint == ["/usr/local/bin/gamemetrics"], f"ENTRYPOINT is the binary, no shell: {entrypoint}")
need(config["OCIv1"]["config"].get("User") == "10001:10001", "the image runs as 10001:10001 by default")


def run(args, env, user, wait=True, port=None):
    """`buildah run` of the image's ENTRYPOINT with the workload's args, as its user."""
    ctr = buildah("from", "--pull=never", IMAGE)
    if port:
        env = dict(env, HTTP_ADDR=f"127.0.0.1:{port}")
    cmd = ["buildah", "run", "--isolation", "chroot", "--user", user]
    for k, v in env.items():
        cmd += ["--env", f"{k}={v}"]
    cmd += [ctr, "--", *entrypoint, *args]
    if wait:
        out = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
        buildah("rm", ctr, check=False)
        return out
    log = open(f"/tmp/image-test-{args[-1]}-{run_id}.log", "w")
    proc = subprocess.Popen(cmd, env=ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, ctr


def psql(sql, db=db_name):
    return subprocess.run(["psql", "-h", "127.0.0.1", "-U", "gamemetrics", "-d", db, "-tAc", sql],
                          env=dict(os.environ, PGPASSWORD="gamemetrics"), capture_output=True, text=True).stdout.strip()


def redis(db, *args):
    return subprocess.run(["redis-cli", "-n", str(db), *args], capture_output=True, text=True).stdout.strip()


psql(f"CREATE DATABASE {db_name}", db="gamemetrics")
running = []
try:
    # The migrate Job.
    args, env, user = pod("Job", "gamemetrics-migrate")
    out = run(args, env, user)
    need(out.returncode == 0, f"migrate exits 0 (got {out.returncode}): {out.stdout[-2000:]}{out.stderr[-2000:]}")
    need(psql("SELECT count(*) FROM information_schema.tables WHERE table_name = 'events'") == "1",
         "migrate created the events table")

    # An API key, as an operator makes one (serve requires keys by default).
    out = run(["keys", "create", "--game", "game-image"], env, user)
    key = out.stdout.strip().splitlines()[-1] if out.returncode == 0 and out.stdout.strip() else ""
    need(key, f"keys create works from the image: {out.stderr[-1000:]}")

    # event-ingestion and the three consumers, each on a port of its own (one host network).
    ports = {}
    for name in ["event-ingestion", "event-consumer-logger", "event-consumer-stats", "event-consumer-leaderboard"]:
        args, env, user = pod("Deployment", name)
        need(user == "10001:10001", f"{name} runs as 10001:10001")
        ports[name] = free_port()
        running.append(run(args, env, user, wait=False, port=ports[name]))
    base = f"http://127.0.0.1:{ports['event-ingestion']}"
    eventually("serve's /healthz", lambda: http("GET", f"{base}/healthz")[0] == 200)
    eventually("serve's /readyz", lambda: http("GET", f"{base}/readyz")[0] == 200)
    for name in ["event-consumer-logger", "event-consumer-stats", "event-consumer-leaderboard"]:
        eventually(f"{name}'s /readyz", lambda p=ports[name]: http("GET", f"http://127.0.0.1:{p}/readyz")[0] == 200)

    # 100 events: enough for the ConfigMap's flush thresholds (stats 100, leaderboard 50).
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    events = [{"event_type": "player_score", "player_id": f"p{i % 10}", "game_id": "game-image",
               "timestamp": now, "data": {"score": 10}} for i in range(100)]
    status, body = http("POST", f"{base}/api/v1/events/batch", json.dumps(events).encode(),
                        {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}, timeout=30)
    need(status == 200, f"the batch is accepted: {status} {body[:500]}")
    eventually("100 rows in events (logger)", lambda: psql("SELECT count(*) FROM events") == "100")
    prefix = local["REDIS_KEY_PREFIX"]
    eventually("p0's stats in Redis (stats)", lambda: redis(0, "HGET", f"{prefix}player_stats:p0", "total_events") == "10")
    eventually("p0's score on the board (leaderboard)",
               lambda: redis(1, "ZSCORE", f"{prefix}leaderboard:game-image:alltime", "p0") == "100")
finally:
    for proc, ctr in running:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
        buildah("rm", ctr, check=False)
    for proc, _ in running:
        if problems:
            name = proc.args[-1]
            say(f"log of {name}: " + open(f"/tmp/image-test-{name}-{run_id}.log").read()[-1500:])
        os.remove(f"/tmp/image-test-{proc.args[-1]}-{run_id}.log")
    psql(f"DROP DATABASE IF EXISTS {db_name} WITH (FORCE)", db="gamemetrics")

# What is in the image, and what is not.
size_mb = None
ctr = buildah("from", "--pull=never", IMAGE)
try:
    root = buildah("mount", ctr)
    total = int(subprocess.run(["du", "-sb", root], capture_output=True, text=True).stdout.split()[0])
    size_mb = total // 1_000_000
    need(size_mb <= MAX_SIZE_MB, f"the image is {size_mb} MB (at most {MAX_SIZE_MB})")
    tools = [t for t in ("cargo", "rustc", "gcc", "cc", "g++", "make", "ld", "as", "git")
             if any(os.path.exists(f"{root}{d}/{t}") for d in ("/usr/bin", "/usr/local/bin", "/bin", "/usr/local/cargo/bin"))]
    need(not tools, f"no build tools in the image: found {tools}")
    sources = subprocess.run(["find", root, "-path", f"{root}/proc", "-prune", "-o", "(", "-name", "*.rs", "-o",
                              "-name", "Cargo.toml", "-o", "-name", "Cargo.lock", "-o", "-path", f"{root}/src", ")", "-print"],
                             capture_output=True, text=True).stdout.split()
    need(not sources, f"no sources in the image: {sources[:5]}")
    secrets = subprocess.run(["grep", "-rlI", "--exclude-dir=proc", "-e", "PRIVATE KEY-----", "-e", "CHANGE_ME", root],
                             capture_output=True, text=True).stdout.split()
    need(not secrets, f"no keys or secrets in the image: {secrets[:5]}")
    binary = os.stat(f"{root}/usr/local/bin/gamemetrics")
    need(binary.st_uid == 0 and not binary.st_mode & 0o022, "the binary is root's and not writable by uid 10001")
finally:
    buildah("umount", ctr, check=False)
    buildah("rm", ctr, check=False)

if problems:
    say(f"{len(problems)} problem(s)")
    sys.exit(1)
say(f"{IMAGE}: {size_mb} MB; migrate, serve and the three consumer roles work as the manifests run them")
