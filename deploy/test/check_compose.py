"""Checks that deploy/compose.yaml wires its services consistently: every bind-mounted file exists, Prometheus's
config and rule files land where its command line and config look for them, it scrapes the server service's
metrics port, Grafana's data source points at the Prometheus service, and the dashboard provider's folder is
where compose mounts dashboards that use that data source.

    python3 deploy/test/check_compose.py deploy/compose.yaml      (exit 1 and one line per problem)
"""
import json
import os
import posixpath
import sys
from urllib.parse import urlparse

import yaml

PROMETHEUS_PORT = 9090  # prometheus's default --web.listen-address
SERVER_METRICS_PORT = 9464  # the image's Kestrel__Endpoints__Metrics__Url


def main(compose_path):
    root = os.path.dirname(os.path.abspath(compose_path))
    compose = yaml.safe_load(open(compose_path))
    services = compose["services"]
    problems = []

    def mounts(service):
        """Container path -> host path of the service's bind mounts."""
        result = {}
        for volume in services[service].get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                host = os.path.normpath(os.path.join(root, source))
                if not os.path.exists(host):
                    problems.append(f"{service}: mounted {source} does not exist")
                result[target] = host
        return result

    def host_file(table, container_path):
        """The host file compose mounts at container_path (a file mount or a file inside a mounted folder)."""
        for target, source in table.items():
            if container_path == target:
                return source
            if container_path.startswith(target.rstrip("/") + "/"):
                return os.path.join(source, os.path.relpath(container_path, target))
        return None

    # Prometheus: its config, the rule files it names, the scrape target.
    prometheus_mounts = mounts("prometheus")
    flags = dict(arg.split("=", 1) for arg in services["prometheus"].get("command", []) if "=" in arg)
    config_path = flags.get("--config.file", "/etc/prometheus/prometheus.yml")
    config_file = host_file(prometheus_mounts, config_path)
    if config_file is None:
        problems.append(f"prometheus: nothing mounted at its --config.file {config_path}")
    else:
        config = yaml.safe_load(open(config_file))
        for rule in config.get("rule_files", []):
            rule_path = posixpath.join(posixpath.dirname(config_path), rule)
            if host_file(prometheus_mounts, rule_path) is None:
                problems.append(f"prometheus: rule file {rule_path} is not mounted")
        targets = [t for job in config["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]]
        if f"server:{SERVER_METRICS_PORT}" not in targets:
            problems.append(f"prometheus: scrapes {targets}, not the server service's metrics port server:{SERVER_METRICS_PORT}")
        if not any(job["job_name"] == "xray-serving" for job in config["scrape_configs"]):
            problems.append("prometheus: no job xray-serving (the dashboard and alerts select it)")

    # Grafana: the data source and dashboards it is provisioned with.
    grafana_mounts = mounts("grafana")
    datasource_dir = host_file(grafana_mounts, "/etc/grafana/provisioning/datasources")
    dashboard_dir = host_file(grafana_mounts, "/etc/grafana/provisioning/dashboards")
    if datasource_dir is None or dashboard_dir is None:
        problems.append("grafana: provisioning folders are not mounted under /etc/grafana/provisioning")
        return problems
    uids = set()
    for name in sorted(os.listdir(datasource_dir)):
        for source in yaml.safe_load(open(os.path.join(datasource_dir, name)))["datasources"]:
            uids.add(source.get("uid"))
            url = urlparse(source["url"])
            if url.hostname not in services or url.port != PROMETHEUS_PORT:
                problems.append(f"grafana: data source {source['url']} is not a compose service on port {PROMETHEUS_PORT}")
    for name in sorted(os.listdir(dashboard_dir)):
        for provider in yaml.safe_load(open(os.path.join(dashboard_dir, name)))["providers"]:
            folder = host_file(grafana_mounts, provider["options"]["path"])
            if folder is None:
                problems.append(f"grafana: dashboard path {provider['options']['path']} is not mounted")
                continue
            dashboards = [f for f in os.listdir(folder) if f.endswith(".json")]
            if not dashboards:
                problems.append(f"grafana: no dashboards in {folder}")
            for dashboard in dashboards:
                used = set(datasource_uids(json.load(open(os.path.join(folder, dashboard)))))
                if not used <= uids | {"${datasource}", "-- Grafana --", "grafana"}:
                    problems.append(f"grafana: {dashboard} uses data sources {sorted(used - uids)} that are not provisioned")
    home = services["grafana"].get("environment", {}).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home and (host_file(grafana_mounts, home) is None or not os.path.isfile(host_file(grafana_mounts, home))):
        problems.append(f"grafana: home dashboard {home} is not a mounted file")
    return problems


def datasource_uids(node):
    if isinstance(node, dict):
        source = node.get("datasource")
        if isinstance(source, dict) and "uid" in source:
            yield source["uid"]
        for value in node.values():
            yield from datasource_uids(value)
    elif isinstance(node, list):
        for value in node:
            yield from datasource_uids(value)


if __name__ == "__main__":
    found = main(sys.argv[1])
    for problem in found:
        print(problem)
    print("compose wiring consistent" if not found else f"{len(found)} problem(s)")
    sys.exit(1 if found else 0)
