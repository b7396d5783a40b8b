#!/usr/bin/env python3
"""Checks rendered manifests against the seed's names and the binary's configuration.

Usage: check_manifests.py RENDERED.yaml GAMEMETRICS_BINARY
Fails (exit 1) listing every problem: a name that drifted from the seed, a workload without a
setting its subcommand needs, a key in the ConfigMap the binary doesn't know, or a workload
without probes, limits or the restricted security context.
"""
import re
import subprocess
import sys

import yaml

rendered, binary = sys.argv[1], sys.argv[2]
docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
problems = []


def need(cond, what):
    if not cond:
        problems.append(what)


# Every variable the binary reads, from its own --help: the one list that can't drift.
help_text = subprocess.run([binary, "--help"], capture_output=True, text=True, check=True).stdout
known_env = set(re.findall(r"\[env: ([A-Z_]+)=", help_text))
need("KAFKA_BROKERS" in known_env and "DATABASE_URL" in known_env, "could not read env names from --help")

# The seed's names (sections 5 and 6).
need(("Namespace", "gamemetrics") in by, "namespace gamemetrics")
need(("Namespace", "kafka") in by, "namespace kafka")
for name in ("kafka-credentials", "db-credentials", "redis-credentials"):
    need(("Secret", name) in by, f"secret {name}")
cm = by.get(("ConfigMap", "event-consumer-config"))
need(cm is not None, "configmap event-consumer-config")
if cm:
    # The seed's 6-node ElastiCache is a cluster; and a failover must not lose counted events.
    need(cm["data"].get("REDIS_CLUSTER") == "true", "REDIS_CLUSTER true (6-node ElastiCache)")
    need(int(cm["data"].get("REDIS_WAIT_REPLICAS", "0")) >= 1, "REDIS_WAIT_REPLICAS at least 1")
svc = by.get(("Service", "event-ingestion"))
need(svc is not None and any(p["port"] == 8080 for p in svc["spec"]["ports"]), "service event-ingestion on 8080")
kafka = by.get(("Kafka", "gamemetrics-kafka"))
need(kafka is not None and kafka["metadata"]["namespace"] == "kafka", "Kafka gamemetrics-kafka in namespace kafka")
if kafka:
    ann = kafka["metadata"].get("annotations", {})
    need(ann.get("strimzi.io/kraft") == "enabled" and ann.get("strimzi.io/node-pools") == "enabled", "Kafka in KRaft with node pools")
    need(kafka["spec"]["kafka"]["config"].get("min.insync.replicas") == 2, "min.insync.replicas 2")
pools = [d for d in docs if d["kind"] == "KafkaNodePool"]
need(sum(p["spec"]["replicas"] for p in pools) == 3, "3 Kafka nodes")
topic = next((d for d in docs if d["kind"] == "KafkaTopic"), None)
need(topic is not None and topic["spec"].get("topicName") == "player.events.raw", "KafkaTopic player.events.raw")
if topic:
    s = topic["spec"]
    need(s["partitions"] == 3 and s["replicas"] == 3, "topic 3 partitions, 3 replicas")
    need(s["config"].get("retention.ms") == 7 * 24 * 3600 * 1000, "topic retention 7 days")
    need(s["config"].get("min.insync.replicas") == 2, "topic min.insync.replicas 2")
# Consumer groups a user may Read (join): exactly the seed's three, one per consumer user.
groups = {
    acl["resource"]["name"]
    for u in docs if u["kind"] == "KafkaUser"
    for acl in u["spec"]["authorization"]["acls"]
    if acl["resource"]["type"] == "group" and "Read" in acl["operations"]
}
need(groups == {"event-logger-group", "stats-aggregator-group", "leaderboard-manager-group"}, f"consumer groups in ACLs: {groups}")

# Workloads: the seed's deployments, each running the matching subcommand with what it needs.
expected = {
    # serve checks API keys in PostgreSQL and answers reads from both stores.
    "event-ingestion": (["serve"], {"KAFKA_BROKERS", "KAFKA_TOPIC", "DATABASE_URL", "REDIS_URL"}),
    "event-consumer-logger": (["consume", "--role", "logger"], {"KAFKA_BROKERS", "KAFKA_TOPIC", "DATABASE_URL"}),
    "event-consumer-stats": (["consume", "--role", "stats"], {"KAFKA_BROKERS", "KAFKA_TOPIC", "DATABASE_URL", "REDIS_URL"}),
    "event-consumer-leaderboard": (["consume", "--role", "leaderboard"], {"KAFKA_BROKERS", "KAFKA_TOPIC", "DATABASE_URL", "REDIS_URL"}),
}
secret_keys = {n: set(d.get("stringData", {}) | d.get("data", {})) for (k, n), d in by.items() if k == "Secret"}
cm_keys = set((cm or {}).get("data", {}))
need(cm_keys <= known_env, f"ConfigMap keys the binary doesn't read: {sorted(cm_keys - known_env)}")

def provided(pod_spec, container):
    keys = set()
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            keys |= cm_keys
        if "secretRef" in src:
            keys |= secret_keys.get(src["secretRef"]["name"], set())
    for e in container.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            need(ref["key"] in secret_keys.get(ref["name"], set()), f"secret key {ref['name']}/{ref['key']}")
        keys.add(e["name"])
    return keys

workloads = [d for d in docs if d["kind"] in ("Deployment", "Job") and d["metadata"]["namespace"] == "gamemetrics"]
for name, (args, required) in expected.items():
    dep = by.get(("Deployment", name))
    need(dep is not None, f"deployment {name}")
    if not dep:
        continue
    c = dep["spec"]["template"]["spec"]["containers"][0]
    need(c.get("args") == args, f"{name} runs {args}, not {c.get('args')}")
    missing = required - provided(dep["spec"]["template"]["spec"], c)
    need(not missing, f"{name} lacks {sorted(missing)}")
for w in workloads:
    name, spec = w["metadata"]["name"], w["spec"]["template"]["spec"]
    psc = spec.get("securityContext", {})
    need(psc.get("runAsNonRoot") is True, f"{name}: runAsNonRoot")
    for c in spec["containers"]:
        sc = c.get("securityContext", {})
        need(sc.get("readOnlyRootFilesystem") is True, f"{name}: readOnlyRootFilesystem")
        need(sc.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation false")
        need(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}: drop ALL capabilities")
        need("limits" in c.get("resources", {}) and "requests" in c["resources"], f"{name}: requests and limits")
        if w["kind"] == "Deployment":
            need("livenessProbe" in c and "readinessProbe" in c, f"{name}: probes")
# A CA file the ConfigMap names must be where every workload mounts the store-ca ConfigMap.
ca_file = (cm or {}).get("data", {}).get("DATABASE_CA_FILE")
for w in workloads:
    spec = w["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    for c in spec["containers"]:
        mounts = [m for m in c.get("volumeMounts", []) if ca_file and ca_file.startswith(m["mountPath"].rstrip("/") + "/")]
        if ca_file:
            need(any(vols.get(m["name"], {}).get("configMap", {}).get("name") == "store-ca" for m in mounts),
                 f"{w['metadata']['name']}: DATABASE_CA_FILE {ca_file} is not on a store-ca mount")
for name in expected:
    need(("PodDisruptionBudget", name) in by, f"PodDisruptionBudget {name}")
need(("HorizontalPodAutoscaler", "event-ingestion") in by, "HPA event-ingestion")

if problems:
    print(f"{rendered}: {len(problems)} problem(s):")
    for p in problems:
        print(f"  - {p}")
    sys.exit(1)
print(f"{rendered}: seed names, settings and pod policies check out ({len(docs)} objects)")
