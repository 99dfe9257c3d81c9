// Validates Grafana dashboard JSON offline against Grafana's published dashboard schema: the
// TypeScript types that npm @grafana/schema generates from Grafana's CUE schema (the classic
// dashboard JSON model, raw/dashboard/x), checked by the TypeScript compiler in strict mode. Each
// file becomes `const dashboard: Dashboard = <the JSON>;` in a temporary directory, so wrong types,
// missing required fields, values outside an enum and unknown properties are all errors.
// Usage: node deploy/validate/dashboard.mjs a.json [b.json ...]   Exit 0 valid, 1 with the errors.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const ts = require('typescript');
const here = path.dirname(new URL(import.meta.url).pathname);
const schema = path.join(here, 'node_modules/@grafana/schema/dist/types/raw/dashboard/x/types.gen');

let failed = false;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'optd-dashboard-'));
try {
  for (const file of process.argv.slice(2)) {
    const json = fs.readFileSync(file, 'utf8');
    JSON.parse(json);  // a syntax error is reported as such
    const source = path.join(tmp, `${path.basename(file, '.json')}.ts`);
    fs.writeFileSync(source, `import type { Dashboard } from ${JSON.stringify(schema)};\n` +
                             `export const dashboard: Dashboard =\n${json};\n`);
    const program = ts.createProgram([source], {
      strict: true, noEmit: true, skipLibCheck: true, target: ts.ScriptTarget.ES2020,
      moduleResolution: ts.ModuleResolutionKind.Node10, types: [],
    });
    const diagnostics = ts.getPreEmitDiagnostics(program);
    for (const d of diagnostics) {
      // Line numbers of the JSON file: the generated source has two lines before it.
      const line = d.file ? d.file.getLineAndCharacterOfPosition(d.start).line - 1 : 0;
      console.error(`${file}:${line}: ${ts.flattenDiagnosticMessageText(d.messageText, '\n  ')}`);
    }
    if (diagnostics.length) failed = true;
    else console.log(`dashboard: ${file} matches @grafana/schema's Dashboard`);
  }
} finally {
  fs.rmSync(tmp, { recursive: true, force: true });
}
if (failed) {
  console.error('dashboard: INVALID');
  process.exit(1);
}
