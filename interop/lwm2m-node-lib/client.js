#!/usr/bin/env node
// Thin launcher for the lwm2m-node-lib client, as a vendor would write one to plug the
// library into the conformance suite: flags in, "READY"/"EVENT" lines out, control on stdin.
//   node client.js --endpoint EP --host 127.0.0.1 --port 5683 [--lifetime 300]
// stdin: "set /3/0/9 55" | "update" | "quit"
// The Server Object behaviour the library leaves to the application is below ("registration
// lifecycle").
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
      if (--left === 0 && --pending === 0) { start(); }
    }));
  });
});

// -- registration lifecycle --------------------------------------------------------------------
// lwm2m-node-lib offers register/update/unregister and per-operation handlers but leaves the
// Server Object semantics to the application (Core 1.0 §5.3 / Core 1.1.1 §6.2 and Appendix E.2),
// so this launcher, as the device application, provides them:
//   * an Update before the registration lifetime expires (§6.2.2), rescheduled after each one;
//   * Execute /1/0/8 Registration Update Trigger -> Update; Execute /1/0/4 Disable -> De-register,
//     stay off for Disable Timeout /1/0/5 (default 86400 s), register again; Execute /3/0/4 Reboot
//     -> start over with a new Register (§E.4);
//   * Write /1/0/1 Lifetime -> Update carrying the new lt (§6.2.2);
//   * an Update answered 4.04 -> a new Register (§6.2.2: "the LwM2M Client MUST re-register");
//   * Execute on a resource the application does not define as executable -> 4.05 (§6.3.5).
const EXECUTABLE = { '/1/0/4': disable, '/1/0/8': triggerUpdate, '/3/0/4': reboot };
let updateTimer = null;
let disabled = false;
let stopping = false;

function updateDueMs() {
  const lt = Number(config.client.lifetime) || 60;
  // the reference client's margin: the sooner of 90 % and lifetime - 10 s, at least half of it
  return 1000 * Math.max(Math.min(lt * 0.9, lt - 10), lt * 0.5);
}

function schedule() {
  if (updateTimer) { clearTimeout(updateTimer); }
  updateTimer = (disabled || stopping) ? null : setTimeout(() => sendUpdate('lifetime'), updateDueMs());
}

function attachHandlers(info) {
  client.setHandler(info.serverInfo, 'execute', (objectType, objectId, resourceId, args, cb) => {
    const action = EXECUTABLE['/' + objectType + '/' + objectId + '/' + resourceId];
    if (!action) { return cb({ code: '4.05' }); }
    cb();
    setImmediate(action);
  });
  client.setHandler(info.serverInfo, 'write', (objectType, objectId, resourceId, value, cb) => {
    cb();
    if (String(objectType) === '1' && String(resourceId) === '1') {
      config.client.lifetime = String(value);
      setImmediate(() => sendUpdate('lifetime changed'));
    }
  });
}

function register(then) {
  client.register(host, port, '', endpoint, (err, info) => {
    if (err) {
      fail('register', err);
      if (!device) { process.exit(1); }
      // registered before (Disable, Reboot, 4.04 on Update): try again later, bounded by quit
      if (!stopping) { setTimeout(() => register(then), 5000); }
      return;
    }
    const first = device === null;
    device = info;
    attachHandlers(info);
    if (first) { emit('lwm2m-node-client READY endpoint=' + endpoint + ' local=127.0.0.1:' + info.localPort); }
    emit('lwm2m-node-client EVENT registered location=' + info.location);
    schedule();
    if (then) { then(); }
  });
}

function sendUpdate(why, reply) {
  if (!device || disabled || stopping) { if (reply) { reply(new Error('not registered')); } return; }
  client.update(device, (err, info) => {
    if (err) {
      fail('update (' + why + ')', err);
      if (reply) { reply(err); }
      if (String(err.code) === '4.04') {
        device.location = '';
        return register();  // the server forgot the registration (Core 1.1.1 §6.2.2)
      }
      return schedule();
    }
    device = info || device;
    attachHandlers(device);
    emit('lwm2m-node-client EVENT updated (' + why + ')');
    schedule();
    if (reply) { reply(null); }
  });
}

function triggerUpdate() { sendUpdate('update trigger'); }

function resourceValue(uri, rid, dflt, cb) {
  client.registry.get(uri, (err, obj) => cb(err || !obj || obj.attributes[rid] === undefined ? dflt : obj.attributes[rid]));
}

function disable() {
  if (!device || disabled) { return; }
  resourceValue('/1/0', '5', '86400', (timeout) => {
    disabled = true;
    schedule();
    client.unregister(device, () => {
      emit('lwm2m-node-client EVENT disabled for ' + timeout + ' s');
      device.location = '';
      setTimeout(() => { disabled = false; register(); }, 1000 * (Number(timeout) || 0));
    });
  });
}

function reboot() {
  emit('lwm2m-node-client EVENT rebooting');
  if (updateTimer) { clearTimeout(updateTimer); updateTimer = null; }
  client.cancellAllObservers(() => {
    const done = () => { device.location = ''; register(); };
    if (device && device.serverInfo && device.serverInfo.server) {
      try { device.serverInfo.server.close(done); } catch (e) { done(); }
    } else { done(); }
  });
}

function start() { register(); }

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const [cmd, p, value] = line.trim().split(/\s+/);
  if (cmd === 'set' && p) {
    const parts = p.split('/').filter(Boolean);
    client.registry.setResource('/' + parts[0] + '/' + parts[1], parts[2], value, (err) => {
      if (err) { fail('set', err); } else { emit('lwm2m-node-client EVENT set ' + p + '=' + value); }
    });
  } else if (cmd === 'update' && device) {
    sendUpdate('local request');
  } else if (cmd === 'quit') {
    stopping = true;
    schedule();
    if (!device || disabled) { process.exit(0); }
    client.unregister(device, () => { emit('lwm2m-node-client EVENT deregistered'); process.exit(0); });
    setTimeout(() => process.exit(0), 3000);
  }
});
process.on('SIGTERM', () => {
  stopping = true;
  schedule();
  if (!device || disabled) { process.exit(0); }
  client.unregister(device, () => process.exit(0));
  setTimeout(() => process.exit(0), 2000);
});
