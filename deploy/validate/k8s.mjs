// Validates rendered Kubernetes manifests offline (`kubectl kustomize deploy/k8s > all.yaml`):
//   1. every object against its API schema: npm kubernetes-models (the Kubernetes OpenAPI schemas)
//      and @kubernetes-models/prometheus-operator for the ServiceMonitor CRD. They check types,
//      required fields and enums, not unknown fields.
//   2. the objects agree with each other: the StatefulSet's serviceName is a headless Service
//      selecting its pods, every selector matches the pod labels, every Secret a pod mounts is
//      rendered, the probes run grpc.health.v1 on the gRPC port, memory requests equal limits, one
//      PersistentVolumeClaim template per shard is mounted at --checkpoint_dir, the scrape
//      annotations and the ServiceMonitor point at the metrics port.
// Usage: node deploy/validate/k8s.mjs all.yaml     Exit 0 valid, 1 with every problem listed.
import fs from 'node:fs';
import yaml from 'js-yaml';

const MODELS = {
  'v1': 'kubernetes-models/v1',
  'apps/v1': 'kubernetes-models/apps/v1',
  'policy/v1': 'kubernetes-models/policy/v1',
  'monitoring.coreos.com/v1': '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1',
};

const problems = [];
const problem = (what) => problems.push(what);

const docs = yaml.loadAll(fs.readFileSync(process.argv[2], 'utf8')).filter((d) => d);
if (docs.length === 0) problem('no objects');
for (const doc of docs) {
  const name = `${doc.kind}/${doc.metadata && doc.metadata.name}`;
  const base = MODELS[doc.apiVersion];
  if (!base) {
    problem(`${name}: no schema known for apiVersion ${doc.apiVersion}`);
    continue;
  }
  if (doc.kind === 'Secret' && doc.data) {
    // kustomize folds long base64 values over lines; the API server's decoder skips newlines.
    for (const k of Object.keys(doc.data)) doc.data[k] = String(doc.data[k]).replace(/\s+/g, '');
  }
  let Model;
  try {
    Model = (await import(`${base}/${doc.kind}`))[doc.kind];
  } catch (error) {
    problem(`${name}: no schema for kind ${doc.kind} in ${doc.apiVersion}`);
    continue;
  }
  try {
    new Model(doc).validate();
  } catch (error) {
    problem(`${name}: ${error.message}`);
  }
}

const of = (kind) => docs.filter((d) => d.kind === kind);
const matches = (selector, labels) =>
  Object.entries(selector || {}).every(([k, v]) => labels && labels[k] === v);
const one = (kind) => {
  const found = of(kind);
  if (found.length !== 1) problem(`expected one ${kind}, found ${found.length}`);
  return found[0];
};

const sts = one('StatefulSet');
if (sts && sts.spec && sts.spec.template) {
  const spec = sts.spec;
  const pod = spec.template.spec || {};
  const podLabels = spec.template.metadata && spec.template.metadata.labels;
  if (!matches(spec.selector && spec.selector.matchLabels, podLabels)) {
    problem('StatefulSet selector does not match its pod labels');
  }
  const svc = of('Service').find((s) => s.metadata.name === spec.serviceName);
  if (!svc) problem(`StatefulSet serviceName ${spec.serviceName} names no Service`);
  else {
    if (svc.spec.clusterIP !== 'None') problem(`Service ${svc.metadata.name} is not headless`);
    if (!matches(svc.spec.selector, podLabels)) problem('the headless Service does not select the shards');
  }
  for (const pdb of of('PodDisruptionBudget')) {
    if (!matches(pdb.spec.selector && pdb.spec.selector.matchLabels, podLabels)) {
      problem('the PodDisruptionBudget does not select the shards');
    }
  }
  const secrets = new Set(of('Secret').map((s) => s.metadata.name));
  for (const v of pod.volumes || []) {
    if (v.secret && !secrets.has(v.secret.secretName)) {
      problem(`volume ${v.name} mounts Secret ${v.secret.secretName}, which is not rendered`);
    }
  }
  const optd = (pod.containers || []).find((c) => c.name === 'optd');
  if (!optd) problem('no container named optd');
  else {
    const args = optd.args || [];
    const flag = (n) => (args.find((a) => a.startsWith(`--${n}=`)) || '').split('=').slice(1).join('=');
    const ports = Object.fromEntries((optd.ports || []).map((p) => [p.name, p.containerPort]));
    if (!ports.grpc || !ports.metrics) problem('optd must name its ports grpc and metrics');
    for (const kind of ['startupProbe', 'readinessProbe', 'livenessProbe']) {
      const probe = optd[kind];
      const cmd = probe && probe.exec ? probe.exec.command.join(' ') : '';
      const native = probe && probe.grpc && probe.grpc.port === ports.grpc;
      const exec = /optctl .*--server=127\.0\.0\.1:(\d+).* health$/.exec(cmd);
      if (!native && !(exec && Number(exec[1]) === ports.grpc)) {
        problem(`${kind}: neither a grpc probe nor optctl health on the gRPC port ${ports.grpc}`);
      }
      if (exec && flag('tls_cert') && !/--tls_ca=/.test(cmd)) problem(`${kind}: TLS on, no --tls_ca`);
    }
    const res = optd.resources || {};
    if (!res.limits || !res.requests || !res.limits.memory ||
        res.limits.memory !== res.requests.memory) {
      problem('memory requests must equal limits (optd budgets 75% of the limit)');
    }
    const dir = flag('checkpoint_dir');
    const claims = (spec.volumeClaimTemplates || []).map((t) => t.metadata.name);
    const mount = (optd.volumeMounts || []).find((m) => m.mountPath === dir);
    if (!dir || !mount || !claims.includes(mount.name)) {
      problem('--checkpoint_dir must be a volumeClaimTemplates volume');
    }
    for (const f of ['tls_cert', 'tls_key', 'auth_tokens_file']) {
      const path = flag(f);
      if (!path || !(optd.volumeMounts || []).some((m) => path.startsWith(`${m.mountPath}/`))) {
        problem(`--${f} is not on a mounted volume`);
      }
    }
    const ann = spec.template.metadata.annotations || {};
    if (ann['prometheus.io/scrape'] !== 'true' || Number(ann['prometheus.io/port']) !== ports.metrics) {
      problem('pod scrape annotations must point at the metrics port');
    }
  }
  const sm = one('ServiceMonitor');
  if (sm && svc) {
    if (!matches(sm.spec.selector && sm.spec.selector.matchLabels, svc.metadata.labels)) {
      problem('the ServiceMonitor does not select the headless Service');
    }
    const names = (svc.spec.ports || []).map((p) => p.name);
    for (const e of sm.spec.endpoints || []) {
      if (!names.includes(e.port)) problem(`ServiceMonitor endpoint port ${e.port} not in the Service`);
    }
  }
}

if (problems.length) {
  for (const p of problems) console.error(`k8s: ${p}`);
  console.error(`k8s: INVALID (${problems.length} problems in ${docs.length} objects)`);
  process.exit(1);
}
console.log(`k8s: ${docs.length} objects valid (${docs.map((d) => d.kind).join(', ')})`);
