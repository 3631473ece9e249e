// node-redis v5 (`redis@5` on npm) with RESP3 and its client-side cache, on a client
// that also subscribes: the same steps against any target, printed as JSON, so
// that Redis and the proxy can be compared.
//
//   mkdir /tmp/nr5 && cd /tmp/nr5 && npm install redis@5
//   node /path/to/scripts/node-redis-csc-subscribe.cjs 6379    # Redis
//   node /path/to/scripts/node-redis-csc-subscribe.cjs 6380    # the proxy
//
// Redis prints ["v1",null,"v2","x1","hello","x2"]. Until session 35 the proxy gave
// ["v1",null,"v2",null,"hello",null]: the client's tracking connection was not
// the one it subscribed on, so what it read while subscribed was never
// invalidated and its cache kept serving the stale value (docs/compatibility.md).
// Flushes the target's current database.
const { createClient } = require(require.resolve('redis', { paths: [process.cwd()] }));

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function main() {
  const url = `redis://127.0.0.1:${Number(process.argv[2] || 6380)}`;
  const c = createClient({ url, RESP: 3, clientSideCache: { ttl: 0, maxEntries: 0 } });
  const w = createClient({ url });
  await c.connect();
  await w.connect();
  await w.flushDb();
  const out = [];
  await w.set('k', 'v1');
  out.push(await c.get('k')); // cached from here
  const msgs = [];
  await c.subscribe('ch', (m) => msgs.push(m));
  out.push(await c.get('k2')); // read while subscribed: cached too (a null)
  await w.set('k2', 'x1');
  await w.set('k', 'v2');
  await sleep(200);
  out.push(await c.get('k')); // invalidated: v2
  out.push(await c.get('k2')); // invalidated: x1
  await w.publish('ch', 'hello');
  await sleep(200);
  out.push(msgs.join(','));
  await c.unsubscribe('ch');
  await w.set('k2', 'x2');
  await sleep(200);
  out.push(await c.get('k2')); // x2
  console.log(JSON.stringify(out));
  await c.quit();
  await w.quit();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
