// Node's `ws` (Debian node-ws) as a WebSocket peer for tests/e2e/test_websocket.py.
//   node ws_peer.js server            -> an echo server; prints its port, then serves
//   node ws_peer.js client URL        -> sends text, 1 MiB binary and a ping through URL, checks the echoes,
//                                        closes with 4003; prints "ok" or an error
const WebSocket = require('ws');
const mode = process.argv[2];
if (mode === 'server') {
  const wss = new WebSocket.Server({ host: '127.0.0.1', port: 0, perMessageDeflate: true });
  wss.on('listening', () => console.log(wss.address().port));
  wss.on('connection', (ws) => ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary })));
} else {
  const ws = new WebSocket(process.argv[3], { perMessageDeflate: true });
  const big = Buffer.alloc(1 << 20, 7);
  const fail = (why) => { console.log('error: ' + why); process.exit(1); };
  setTimeout(() => fail('timeout'), 20000);
  let step = 0;
  ws.on('open', () => ws.send('from node'));
  ws.on('pong', (data) => {
    if (data.toString() !== 'pp') fail('pong ' + data);
    ws.close(4003, 'node done');
  });
  ws.on('message', (data, isBinary) => {
    if (step === 0) {
      if (isBinary || data.toString() !== 'from node') fail('text echo');
      step = 1;
      ws.send(big);
    } else if (step === 1) {
      if (!isBinary || !Buffer.from(data).equals(big)) fail('binary echo');
      step = 2;
      ws.ping('pp');
    }
  });
  ws.on('close', (code) => { if (code !== 4003) fail('close ' + code); console.log('ok'); process.exit(0); });
  ws.on('error', (e) => fail(e.message));
}
