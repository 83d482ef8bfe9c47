// The Node `ws` and uWebSockets.js peers from ../shared/peers, served over TLS (wss://) so that
// chatd's wss:// connection rate can be compared like for like. Same relay as the plain peers:
// every message goes to every other client. Modules come from the peers' install caches (run the
// plain peer once first; scripts/bench-compare.py does). Loopback only.
// Usage: NODE_PATH=<cache>/node_modules node bench/peer-tls.js node-ws|uws-js PORT CERT KEY
'use strict';
const fs = require('fs');
const path = require('path');
const [kind, portArg, cert, key] = process.argv.slice(2);
const port = Number(portArg);
const ready = (what) => console.log(`${what} listening on wss://127.0.0.1:${port}`);
if (kind === 'node-ws') {
  const https = require('https');
  const { WebSocketServer, WebSocket } = require('ws');
  const server = https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) });
  const wss = new WebSocketServer({ server, perMessageDeflate: false, maxPayload: 1 << 20 });
  wss.on('connection', (ws) => {
    ws.on('error', () => {});
    ws.on('message', (data, isBinary) => {
      for (const c of wss.clients) {
        if (c !== ws && c.readyState === WebSocket.OPEN) c.send(data, { binary: isBinary });
      }
    });
  });
  server.listen(port, '127.0.0.1', () => ready(`node-ws-tls (ws@${require('ws/package.json').version}, node ${process.version})`));
} else if (kind === 'uws-js') {
  const pkgDir = path.dirname(require.resolve('@trufflesuite/uws-js-unofficial/package.json'));
  const uWS = require(path.join(pkgDir, 'binaries', `uws_${process.platform}_${process.arch}_${process.versions.modules}.node`));
  uWS.SSLApp({ cert_file_name: cert, key_file_name: key }).ws('/*', {
    compression: uWS.DISABLED,
    maxPayloadLength: 1 << 20,
    maxBackpressure: 64 * 1024 * 1024,
    idleTimeout: 960,
    open: (ws) => { ws.subscribe('chat'); },
    message: (ws, message, isBinary) => { ws.publish('chat', message, isBinary); },
  }).listen('127.0.0.1', port, (token) => {
    if (!token) { console.error(`uws-js-tls: failed to listen on ${port}`); process.exit(1); }
    ready(`uws-js-tls (node ${process.version})`);
  });
} else {
  console.error(`unknown peer ${kind}`);
  process.exit(2);
}
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
