#!/usr/bin/env node
// Thin launcher for the lwm2m-node-lib server, as a vendor would write one to plug the
// library into the conformance suite: a CoAP port, plus a small HTTP JSON API to drive it.
//   node server.js --coap-port N --http-port M
// HTTP: GET /clients -> [{endpoint, location, lifetime, address, port}]
//       GET /clients/:ep/:o/:i/:r -> {code, value}        (Read)
//       PUT /clients/:ep/:o/:i/:r body=value -> {code}     (Write)
//       POST /clients/:ep/:o/:i/:r body=args -> {code}     (Execute)
//       POST /observe/:ep/:o/:i/:r -> {code, value}        (Observe; notifications in GET /events)
//       GET /events -> [{type, endpoint, ...}]
'use strict';
const path = require('path');
const http = require('http');
const lib = require(path.join(__dirname, '..', 'node_modules', 'lwm2m-node-lib'));
const config = require(path.join(__dirname, '..', 'node_modules', 'lwm2m-node-lib', 'config'));

function arg(name, dflt) {
  const i = process.argv.indexOf('--' + name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : dflt;
}
config.server.port = parseInt(arg('coap-port', '5683'), 10);
config.server.logLevel = 'FATAL';
const httpPort = parseInt(arg('http-port', '0'), 10);
const server = lib.server;
const events = [];

function deviceByName(ep, cb) {
  server.getDevice(ep, (err, dev) => cb(err, dev));
}

server.start(config.server, (err, info) => {
  if (err) { console.error('start failed', err); process.exit(1); }
  server.setHandler(info, 'registration', (ep, lifetime, version, binding, payload, cb) => {
    events.push({ type: 'registered', endpoint: ep, lifetime: lifetime, payload: String(payload) });
    cb();
  });
  server.setHandler(info, 'unregistration', (dev, cb) => {
    events.push({ type: 'deregistered', endpoint: dev && dev.name });
    cb();
  });
  server.setHandler(info, 'updateRegistration', (obj, payload, cb) => {
    events.push({ type: 'updated', endpoint: obj && obj.name });
    cb();
  });
  const api = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => route(req, body, (code, obj) => {
      res.writeHead(code, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify(obj));
    }));
  });
  api.listen(httpPort, '127.0.0.1', () => {
    process.stdout.write('lwm2m-node-server READY coap=127.0.0.1:' + config.server.port +
      ' http=127.0.0.1:' + api.address().port + '\n');
  });
});

function result(reply) {
  return (err, value) => err
    ? reply(200, { ok: false, error: err.name || String(err), code: (err.message || '').match(/\d\.\d\d/) ? err.message.match(/\d\.\d\d/)[0] : null })
    : reply(200, { ok: true, value: value });
}

function route(req, body, reply) {
  const parts = req.url.split('?')[0].split('/').filter(Boolean);
  if (req.method === 'GET' && parts[0] === 'clients' && parts.length === 1) {
    return server.listDevices((err, list) => reply(200, (list || []).map((d) => ({
      endpoint: d.name, location: '/rd/' + d.id, lifetime: d.lifetime, address: d.address, port: d.port,
    }))));
  }
  if (req.method === 'GET' && parts[0] === 'events') { return reply(200, events); }
  if ((parts[0] === 'clients' || parts[0] === 'observe') && parts.length === 5) {
    const [kind, ep, o, i, r] = parts;
    return deviceByName(ep, (err, dev) => {
      if (err || !dev) { return reply(404, { ok: false, error: 'unknown endpoint' }); }
      if (kind === 'observe') {
        return server.observe(dev.id, o, i, r, (value) => {
          events.push({ type: 'notification', endpoint: ep, path: '/' + [o, i, r].join('/'), value: value });
        }, result(reply));
      }
      if (req.method === 'GET') { return server.read(dev.id, o, i, r, result(reply)); }
      if (req.method === 'PUT') { return server.write(dev.id, o, i, r, body, result(reply)); }
      if (req.method === 'POST') { return server.execute(dev.id, o, i, r, body, result(reply)); }
      return reply(405, { ok: false });
    });
  }
  reply(404, { ok: false, error: 'no route' });
}
process.on('SIGTERM', () => process.exit(0));
