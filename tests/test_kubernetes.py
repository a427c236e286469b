"""The Kubernetes manifests (deploy/kubernetes, a kustomization), with no cluster: objects, selectors,
ports and probes agree; the ConfigMap's config passes `slotswitch check-config` and reads mounted secrets
and writable volumes; it runs in two replicas sharing a redis-server started with the manifest's
arguments; and, when installed, kubectl kustomize and kubernetes-validate check the rendered manifests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import yaml

from proxy.settings.model import Settings, parse_settings
from tests.procutil import ProxyProcess, track, write_config
from tests.shipping_util import ROOT, free_port, need, run, yaml_file

K8S_DIR = ROOT / "deploy" / "kubernetes"


def kustomization() -> dict[str, Any]:
    data = yaml_file(K8S_DIR / "kustomization.yaml")
    assert isinstance(data, dict)
    return data


def k8s_objects() -> list[dict[str, Any]]:
    """The kustomization's resources, and its generated ConfigMaps (without the hash suffix)."""
    kust = kustomization()
    objects = []
    for resource in kust["resources"]:
        for doc in yaml.safe_load_all((K8S_DIR / resource).read_text(encoding="utf-8")):
            if doc:
                objects.append(doc)
    for gen_cm in kust.get("configMapGenerator", []):
        data = {}
        for entry in gen_cm.get("files", []):
            key, _, path = entry.rpartition("=")
            data[key or Path(path).name] = (K8S_DIR / path).read_text(encoding="utf-8")
        objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen_cm["name"]}, "data": data})
    return objects


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [o for o in k8s_objects() if o["kind"] == kind]


def by_name(kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in of_kind(kind) if o["metadata"]["name"] == name]
    return found


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def container_ports(pod: dict[str, Any]) -> dict[str | int, int]:
    ports: dict[str | int, int] = {}
    for container in pod["containers"]:
        for port in container.get("ports", []):
            ports[port["containerPort"]] = port["containerPort"]
            if "name" in port:
                ports[port["name"]] = port["containerPort"]
    return ports


def slotswitch_pod() -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod spec, slotswitch container) of the slotswitch Deployment."""
    pod = by_name("Deployment", "slotswitch")["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "slotswitch"]
    return pod, container


def mounted_file(pod: dict[str, Any], container: dict[str, Any], path: str) -> tuple[dict[str, Any], str] | None:
    """(volume, key) for a file path under a ConfigMap or Secret volume mount."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        if path.startswith(mount["mountPath"].rstrip("/") + "/"):
            return volumes[mount["name"]], path[len(mount["mountPath"].rstrip("/")) + 1 :]
    return None


def k8s_settings() -> Settings:
    pod, container = slotswitch_pod()
    args = container["args"]
    found = mounted_file(pod, container, args[args.index("--config") + 1])
    assert found is not None, "the config path in args is under a mounted volume"
    volume, key = found
    configmap = by_name("ConfigMap", volume["configMap"]["name"])
    return parse_settings(yaml.safe_load(configmap["data"][key]))


def test_kubernetes_objects_are_well_formed() -> None:
    seen = set()
    for obj in k8s_objects():
        assert obj.get("apiVersion") and obj.get("kind") and obj.get("metadata", {}).get("name"), obj
        key = (obj["kind"], obj["metadata"]["name"])
        assert key not in seen, key
        seen.add(key)
    assert {"Deployment", "Service", "ConfigMap", "Secret"} <= {k for k, _ in seen}


def test_kubernetes_selectors_ports_and_probes_agree() -> None:
    deployments = of_kind("Deployment")
    for dep in deployments:
        template = dep["spec"]["template"]
        assert selects(dep["spec"]["selector"]["matchLabels"], template["metadata"]["labels"]), dep["metadata"]
        ports = container_ports(template["spec"])
        for container in template["spec"]["containers"]:
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                action = container.get(probe, {})
                target = (action.get("httpGet") or action.get("tcpSocket") or {}).get("port")
                if target is not None:
                    assert target in ports, f"{dep['metadata']['name']} {probe} port {target}"
    for svc in of_kind("Service"):
        pods = [d for d in deployments if selects(svc["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])]
        assert len(pods) == 1, f"Service {svc['metadata']['name']} selects {len(pods)} Deployments"
        ports = container_ports(pods[0]["spec"]["template"]["spec"])
        for port in svc["spec"]["ports"]:
            assert port.get("targetPort", port["port"]) in ports, f"{svc['metadata']['name']}: {port}"
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for obj in of_kind(kind):
            selector = (obj["spec"].get("selector") or obj["spec"].get("podSelector"))["matchLabels"]
            assert any(selects(selector, d["spec"]["template"]["metadata"]["labels"]) for d in deployments), obj


def test_kubernetes_config_passes_check_config_and_names_what_exists(tmp_path: Path) -> None:
    pod, container = slotswitch_pod()
    settings = k8s_settings()
    config = tmp_path / "config.yaml"
    args = container["args"]
    volume, key = mounted_file(pod, container, args[args.index("--config") + 1]) or ({}, "")
    config.write_text(by_name("ConfigMap", volume["configMap"]["name"])["data"][key], encoding="utf-8")
    done = run(sys.executable, "-m", "proxy", "check-config", str(config))
    assert done.returncode == 0, done.stderr
    ports = container_ports(pod)
    assert ports["http"] == settings.listen_addr[1]
    assert ports["admin"] == int(settings.admin.listen.rsplit(":", 1)[1])
    probe = container["readinessProbe"]["httpGet"]
    assert (probe["path"], ports[probe["port"]]) == ("/v1/health", ports["admin"])
    # Every secret file the config reads is a key of the mounted Secret.
    for path in [t.token_file for t in settings.admin.tokens] + [settings.preview.secret_file]:
        assert path is not None
        found = mounted_file(pod, container, path)
        assert found is not None and "secret" in found[0], path
        secret_obj = by_name("Secret", found[0]["secret"]["secretName"])
        assert found[1] in {**secret_obj.get("data", {}), **secret_obj.get("stringData", {})}, path
    # State file and audit log on a writable volume; the root file system is read-only.
    for path in (settings.state.file, settings.admin.audit_log):
        found = mounted_file(pod, container, path)
        assert found is not None and "emptyDir" in found[0], path
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    # os.cpu_count() sees the node's CPUs, so `workers` is set to the container's limit.
    assert settings.workers == int(container["resources"]["limits"]["cpu"])
    image = container["image"]
    assert any(i["name"] == image for i in kustomization()["images"])


def test_kubernetes_replicas_share_their_state_through_redis() -> None:
    settings = k8s_settings()
    deployment = by_name("Deployment", "slotswitch")
    assert deployment["spec"]["replicas"] > 1
    assert settings.state.backend == "redis", "several replicas need the shared store"
    url = urlsplit(settings.state.url)
    redis = by_name("Service", str(url.hostname))
    assert any(p["port"] == (url.port or 6379) for p in redis["spec"]["ports"])


def test_kubernetes_pods_drain_before_they_are_killed() -> None:
    pod, container = slotswitch_pod()
    settings = k8s_settings()
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep", "preStop waits while the endpoints controller removes the pod"
    pre_stop = float(command[1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + settings.drain_timeout
    strategy = by_name("Deployment", "slotswitch")["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0


async def redis_server(args: list[str], workdir: Path) -> tuple[asyncio.subprocess.Process, int]:
    """redis-server with the manifest's arguments, on a free loopback port; returns once it answers PING."""
    server = need("redis-server", "apt-get install redis-server")
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        server,
        *args,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(workdir),
        stdout=asyncio.subprocess.DEVNULL,
    )
    track(proc)
    for _ in range(500):
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"PING\r\n")
            pong = await reader.readline()
            writer.close()
            await writer.wait_closed()
            if pong == b"+PONG\r\n":
                return proc, port
        await asyncio.sleep(0.01)
    proc.kill()
    raise AssertionError("redis-server did not answer PING")


async def test_kubernetes_config_runs_two_replicas_sharing_state_through_redis(tmp_path: Path) -> None:
    """The ConfigMap's config, as shipped but for addresses and paths, in two replicas with Redis started
    with redis.yaml's arguments: a switch on one replica reaches the other."""
    pod, container = slotswitch_pod()
    (redis_container,) = by_name("Deployment", "slotswitch-redis")["spec"]["template"]["spec"]["containers"]
    redis, redis_port = await redis_server(redis_container["args"], tmp_path)
    replicas: list[ProxyProcess] = []
    try:
        args = container["args"]
        volume, key = mounted_file(pod, container, args[args.index("--config") + 1]) or ({}, "")
        base = yaml.safe_load(by_name("ConfigMap", volume["configMap"]["name"])["data"][key])
        secrets: dict[str, str] = {}
        for index in range(2):
            data = json.loads(json.dumps(base))
            data["listen"] = data["admin"]["listen"] = "127.0.0.1:0"
            for slot in data["slots"].values():
                slot["upstreams"] = [f"http://127.0.0.1:{free_port()}"]  # nothing there: the switch is forced
            for item in [*data["admin"]["tokens"], data["preview"]]:
                field = "token_file" if "token_file" in item else "secret_file"
                _, secret_key = mounted_file(pod, container, item[field]) or ({}, "")
                secrets.setdefault(secret_key, os.urandom(16).hex())
                (tmp_path / secret_key).write_text(secrets[secret_key] + "\n", encoding="ascii")
                item[field] = str(tmp_path / secret_key)
            data["state"]["url"] = f"redis://127.0.0.1:{redis_port}/0"
            data["state"]["file"] = str(tmp_path / f"state-{index}.json")
            data["admin"]["audit_log"] = str(tmp_path / f"audit-{index}.jsonl")
            replica = await ProxyProcess.spawn(write_config(tmp_path / f"slotswitch-{index}.yaml", data))
            replicas.append(replica)
            await replica.started()
        auth = {"Authorization": f"Bearer {secrets['operator']}"}
        one, two = (f"http://127.0.0.1:{r.admin_port}" for r in replicas)
        async with aiohttp.ClientSession(headers=auth) as http:
            body = {"slot": "green", "force": True, "reason": "kubernetes config test"}
            async with http.post(f"{one}/v1/switch", json=body) as resp:
                assert resp.status == 200, await resp.text()
            for _ in range(100):
                async with http.get(f"{two}/v1/status") as resp:
                    status = await resp.json()
                if status["active"] == "green":
                    break
                await asyncio.sleep(0.05)
            assert status["active"] == "green", status
            assert status["state_store"]["backend"] == "redis" and status["state_store"]["up"] is True
        for replica in replicas:
            replica.signal(signal.SIGTERM)
            assert await replica.wait_exit() == 0, replica.output
    finally:
        for replica in replicas:
            await replica.close()
        redis.kill()
        await redis.wait()


def rendered_manifests() -> str:
    kubectl = need("kubectl", "kubectl kustomize renders the kustomization")
    done = run(kubectl, "kustomize", str(K8S_DIR))
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_kustomize_renders_and_rewires_the_generated_configmap() -> None:
    docs = [d for d in yaml.safe_load_all(rendered_manifests()) if d]
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert configmap["metadata"]["name"].startswith("slotswitch-config-"), "a hash suffix: config changes roll pods"
    (deployment,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "slotswitch"]
    names = [v["configMap"]["name"] for v in deployment["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
    assert names == [configmap["metadata"]["name"]]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].startswith("slotswitch:")


def test_kubernetes_validate_accepts_the_manifests(tmp_path: Path) -> None:
    validate = need("kubernetes-validate", "pip install kubernetes-validate, in the dev extras")
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(rendered_manifests(), encoding="utf-8")
    done = run(validate, "--strict", "--quiet", str(rendered))
    assert done.returncode == 0, done.stdout + done.stderr
