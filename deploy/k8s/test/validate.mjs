// Checks every object of rendered Kubernetes manifests (multi-document YAML files given as arguments) against the
// OpenAPI schemas of the pinned kubernetes-models packages: the Kubernetes API itself, and the CRDs used here
// (Prometheus Operator's ServiceMonitor, KEDA's ScaledObject). Offline: the schemas ship in the packages.
// The schemas check types, enums and required fields; like the API server's own OpenAPI they do not reject
// unknown fields. Deployments are also held to this product's serving rules (deploymentProblems).
// Exit 1, with one line per problem, when an object is invalid or of a kind no pinned schema covers.
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";

// apiVersion "group/version" -> the package that models it (core "v1" and built-in groups: kubernetes-models).
const crdPackages = {
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
  "keda.sh": "@kubernetes-models/keda",
};

async function modelFor(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  const pkg = crdPackages[group] ?? "kubernetes-models";
  const path = group === "" ? `${pkg}/${version}/${kind}` : `${pkg}/${group}/${version}/${kind}`;
  try {
    return (await import(path))[kind];
  } catch {
    return undefined;
  }
}

let problems = 0;
let checked = 0;
for (const file of process.argv.slice(2)) {
  for (const document of parseAllDocuments(readFileSync(file, "utf8"))) {
    if (document.errors.length > 0) {
      console.log(`${file}: YAML error: ${document.errors[0].message}`);
      problems++;
      continue;
    }
    const object = document.toJS();
    if (object === null) continue;
    const name = `${file}: ${object.kind} ${object.metadata?.name}`;
    const Model = await modelFor(object.apiVersion, object.kind);
    if (Model === undefined) {
      console.log(`${name}: no schema for ${object.apiVersion} ${object.kind}`);
      problems++;
      continue;
    }
    try {
      new Model(object).validate();
      checked++;
    } catch (error) {
      console.log(`${name}: ${error.message}`);
      problems++;
    }
    if (object.kind === "Deployment") {
      for (const problem of deploymentProblems(object.spec.template.spec)) {
        console.log(`${name}: ${problem}`);
        problems++;
      }
    }
  }
}
console.log(`${checked} objects valid, ${problems} problem(s)`);
process.exit(problems === 0 && checked > 0 ? 0 : 1);

// Graceful, unprivileged serving: probes, a grace period longer than pre-stop + drain, a read-only root with a
// writable /tmp, and TLS files read from a mounted Secret.
function deploymentProblems(pod) {
  const problems = [];
  for (const container of pod.containers) {
    for (const probe of ["startupProbe", "readinessProbe", "livenessProbe"]) {
      if (!container[probe]) problems.push(`container ${container.name}: no ${probe}`);
    }
    const env = Object.fromEntries((container.env ?? []).map((e) => [e.name, e.value]));
    const drain = Number(env.DOTNET_shutdownTimeoutSeconds ?? 30);
    const preStop = container.lifecycle?.preStop?.sleep?.seconds ?? 0;
    const grace = pod.terminationGracePeriodSeconds ?? 30;
    if (grace <= preStop + drain) {
      problems.push(`terminationGracePeriodSeconds ${grace} is not longer than preStop ${preStop} s + drain ${drain} s`);
    }
    if (preStop === 0) problems.push(`container ${container.name}: no preStop delay before the drain`);
    const security = { ...pod.securityContext, ...container.securityContext };
    if (security.runAsNonRoot !== true) problems.push(`container ${container.name}: runAsNonRoot is not true`);
    if (security.readOnlyRootFilesystem !== true) problems.push(`container ${container.name}: root file system is writable`);
    const mounts = container.volumeMounts ?? [];
    if (!mounts.some((m) => m.mountPath === "/tmp")) problems.push(`container ${container.name}: no writable /tmp`);
    for (const key of ["Kestrel__Endpoints__Grpc__Certificate__Path", "Kestrel__Endpoints__Grpc__Certificate__KeyPath"]) {
      if (env[key] === undefined) continue;
      const mount = mounts.find((m) => env[key].startsWith(m.mountPath + "/"));
      const volume = pod.volumes?.find((v) => v.name === mount?.name);
      if (!volume?.secret) problems.push(`${key} ${env[key]} is not in a mounted Secret`);
    }
  }
  return problems;
}
