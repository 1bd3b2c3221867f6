#!/usr/bin/env node
// Thin launcher for the lwm2m-node-lib client, as a vendor would write one to plug the
// library into the conformance suite: flags in, "READY"/"EVENT" lines out, control on stdin.
//   node client.js --endpoint EP --host 127.0.0.1 --port 5683 [--lifetime 300]
// stdin: "set /3/0/9 55" | "update" | "quit"
'use strict';
const path = require('path');
const readline = require('readline');
const lib = require(path.join(__dirname, '..', 'node_modules', 'lwm2m-node-lib'));
const config = require(path.join(__dirname, '..', 'node_modules', 'lwm2m-node-lib', 'config'));

function arg(name, dflt) {
  const i = process.argv.indexOf('--' + name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : dflt;
}
const endpoint = arg('endpoint');
const host = arg('host', '127.0.0.1');
const port = parseInt(arg('port', '5683'), 10);
if (!endpoint) { console.error('client.js: --endpoint is required'); process.exit(2); }

config.client.lifetime = arg('lifetime', '300');
config.client.logLevel = 'FATAL';
const client = lib.client;
client.init(config);
let device = null;

function emit(line) { process.stdout.write(line + '\n'); }
function fail(what, err) { emit('lwm2m-node-client ERROR ' + what + ' ' + (err && (err.message || err.name || err))); }

const objects = [
  ['/3/0', [[0, 'Telefonica I+D'], [1, 'lwm2m-node-lib'], [2, 'SN-0001'], [3, '1.4.0'], [9, '100'], [16, 'U']]],
  ['/1/0', [[0, '1'], [1, config.client.lifetime], [7, 'U']]],
];
let pending = objects.length;
objects.forEach(([uri, res]) => {
  client.registry.create(uri, (err) => {
    if (err) { fail('create ' + uri, err); }
    let left = res.length;
    res.forEach(([rid, val]) => client.registry.setResource(uri, rid, val, () => {
      if (--left === 0 && --pending === 0) { register(); }
    }));
  });
});

function register() {
  client.register(host, port, '', endpoint, (err, info) => {
    if (err) { fail('register', err); process.exit(1); }
    device = info;
    emit('lwm2m-node-client READY endpoint=' + endpoint + ' local=127.0.0.1:' + info.localPort);
    emit('lwm2m-node-client EVENT registered location=' + info.location);
  });
}

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const [cmd, p, value] = line.trim().split(/\s+/);
  if (cmd === 'set' && p) {
    const parts = p.split('/').filter(Boolean);
    client.registry.setResource('/' + parts[0] + '/' + parts[1], parts[2], value, (err) => {
      if (err) { fail('set', err); } else { emit('lwm2m-node-client EVENT set ' + p + '=' + value); }
    });
  } else if (cmd === 'update' && device) {
    client.update(device, (err) => err ? fail('update', err) : emit('lwm2m-node-client EVENT updated'));
  } else if (cmd === 'quit') {
    if (!device) { process.exit(0); }
    client.unregister(device, () => { emit('lwm2m-node-client EVENT deregistered'); process.exit(0); });
    setTimeout(() => process.exit(0), 3000);
  }
});
process.on('SIGTERM', () => {
  if (!device) { process.exit(0); }
  client.unregister(device, () => process.exit(0));
  setTimeout(() => process.exit(0), 2000);
});
