// The second independent S7 server: node-snap7, which builds the original
// Snap7 C++ library (a different implementation from python-snap7's server;
// it negotiates a 960-byte PDU and writes single bits correctly).
//   node snap7_node_server.js PORT
// Same areas as tests/peers/s7_peer.py's server.
const snap7 = require('node-snap7');
const port = parseInt(process.argv[2], 10);
const s = new snap7.S7Server();
const keep = [];
function reg(area, index, size) {
  const buf = Buffer.alloc(size);
  keep.push(buf);
  // Non-DB areas take no index.
  const ok = area === s.srvAreaDB ? s.RegisterArea(area, index, buf) : s.RegisterArea(area, buf);
  if (!ok) throw new Error('RegisterArea failed: ' + s.ErrorText(s.LastError()));
}
reg(s.srvAreaDB, 1, 512);
reg(s.srvAreaDB, 2, 2048);
reg(s.srvAreaDB, 3, 64);
reg(s.srvAreaMK, 0, 256);
reg(s.srvAreaPE, 0, 64);
reg(s.srvAreaPA, 0, 64);
reg(s.srvAreaTM, 0, 64);
reg(s.srvAreaCT, 0, 64);
s.SetParam(s.LocalPort, port);
// The scale benchmark opens up to 1000 connections (Snap7's default allows 1024).
s.SetParam(s.MaxClients, 2048);
if (!s.StartTo('127.0.0.1')) {
  console.error('start failed: ' + s.ErrorText(s.LastError()));
  process.exit(1);
}
console.log(JSON.stringify({ ready: true }));
setInterval(() => {}, 1 << 30);
