// The declarations are hand-written, so two checks keep them honest: every
// export and public method of the code is declared (and nothing more), and
// a program using the module type-checks with tsc --strict.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { need, which } from '../testkit/harness.js';

const dir = fileURLToPath(new URL('..', import.meta.url));

/** Value exports of a .d.ts (classes, functions, and re-exports of them), and each class's members. */
function declared(dts) {
  const names = new Set();
  const members = {};
  for (const m of dts.matchAll(/^export (?:class|function) (\w+)/gm)) names.add(m[1]);
  for (const m of dts.matchAll(/^export \{([^}]*)\} from/gm)) {
    for (const n of m[1].split(',')) names.add(n.trim());
  }
  for (const m of dts.matchAll(/^export class (\w+)[^{]*\{\n([\s\S]*?)^\}/gm)) {
    members[m[1]] = new Set([...m[2].matchAll(/^  (?:readonly )?(\w+)[<(?:]/gm)].map((x) => x[1]));
  }
  return { names, members };
}

/** The public methods and getters a class defines itself. */
function ownMembers(cls) {
  return Object.getOwnPropertyNames(cls.prototype).filter((n) => n !== 'constructor');
}

for (const file of ['berth', 'socket']) {
  test(`${file}.d.ts declares what ${file}.js exports`, async () => {
    const mod = await import(join(dir, file + '.js'));
    const { names, members } = declared(await readFile(join(dir, file + '.d.ts'), 'utf8'));
    const values = [...names].filter((n) => !/Options$/.test(n)); // interfaces re-exported for types only
    assert.deepEqual(values.sort(), Object.keys(mod).sort());
    const classes = Object.keys(members);
    assert.ok(classes.length > 0, 'the declarations have classes');
    for (const name of classes) {
      for (const m of ownMembers(mod[name])) assert.ok(members[name].has(m), `${name}.${m} is declared`);
    }
  });
}

test('a program using the module type-checks against the declarations', { timeout: 120000 }, async (t) => {
  const tsc = which('tsc');
  if (!tsc) return need(t, 'tsc', 'apt-get install -y node-typescript');
  try {
    await promisify(execFile)(tsc, ['-p', join(dir, 'testkit', 'tsconfig.json')]);
  } catch (err) {
    assert.fail(`tsc found errors:\n${err.stdout}${err.stderr}`);
  }
});
