// A backend for the state tests (spawned with state mode blob): at start it
// loads the key's saved state and saves $SAVE_TEXT in its place, then serves
// what it loaded at GET / on $PORT.

import { createServer } from 'node:http';

const url = process.env.BERTH_STATE_URL;
const auth = { Authorization: 'Bearer ' + process.env.BERTH_SECRET };

const got = await fetch(url, { headers: auth });
const loaded = got.status === 404 ? '' : await got.text();
const put = await fetch(url, { method: 'PUT', headers: auth, body: process.env.SAVE_TEXT ?? '' });
console.log(`loaded ${JSON.stringify(loaded)}, saved: ${put.status}`);

const server = createServer((req, res) => res.end(loaded));
server.listen(Number(process.env.PORT), '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));
