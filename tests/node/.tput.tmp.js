'use strict';
const grpc = require('@grpc/grpc-js');
const { connect, hash, signers } = require('@hyperledger/fabric-gateway');
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const cp = process.env.CRYPTO_PATH;
const u = path.join(cp, 'users', 'User1@org1.example.com', 'msp');
const client = new grpc.Client(process.env.PEER_ENDPOINT, grpc.credentials.createSsl(fs.readFileSync(path.join(cp, 'peers/peer0.org1.example.com/tls/ca.crt'))), { 'grpc.ssl_target_name_override': 'peer0.org1.example.com' });
const gw = connect({ client, identity: { mspId: 'Org1MSP', credentials: fs.readFileSync(path.join(u, 'signcerts', fs.readdirSync(path.join(u, 'signcerts'))[0])) }, signer: signers.newPrivateKeySigner(crypto.createPrivateKey(fs.readFileSync(path.join(u, 'keystore/priv_sk')))), hash: hash.sha256 });
const contract = gw.getNetwork('gxchannel').getContract('gx');
(async () => {
  const N = Number(process.env.N || 2000), C = Number(process.env.C || 64);
  let next = 0; const t0 = Date.now();
  await Promise.all(Array.from({ length: C }, async () => { while (next < N) { const i = next++; await contract.submitTransaction('CreateUser', `u${i}`, '{}'); } }));
  const s = (Date.now() - t0) / 1000;
  console.log(`${N} transactions committed in ${s.toFixed(2)} s = ${(N / s).toFixed(0)} tx/s with ${C} concurrent clients`);
  gw.close(); client.close();
})();
