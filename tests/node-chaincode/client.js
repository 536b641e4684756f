/*
 * Drives the Node chaincode (chaincode.js, run as a service) through the gxd devnet with
 * the official Fabric Gateway SDK for Node, as a fabric-samples application would.
 *
 * Environment: CRYPTO_PATH (DIR/organizations/peerOrganizations/org1.example.com),
 * PEER_ENDPOINT (host:port), CHANNEL_NAME (gxchannel), CHAINCODE_NAME (gx).
 * Prints one "ok <check>" line per check and "NODE CHAINCODE OK" at the end; exits
 * non-zero on the first failed check.
 */
'use strict';

const grpc = require('@grpc/grpc-js');
const { connect, hash, signers, EndorseError } = require('@hyperledger/fabric-gateway');
const crypto = require('node:crypto');
const fs = require('node:fs/promises');
const path = require('node:path');

const cryptoPath = process.env.CRYPTO_PATH;
const peerEndpoint = process.env.PEER_ENDPOINT || 'localhost:7051';
const peerHostAlias = 'peer0.org1.example.com';
const channelName = process.env.CHANNEL_NAME || 'gxchannel';
const chaincodeName = process.env.CHAINCODE_NAME || 'gx';
const utf8 = new TextDecoder();

function check(condition, message) {
    if (!condition) {
        throw new Error(`check failed: ${message}`);
    }
    console.log(`ok ${message}`);
}

async function firstFile(dir) {
    const files = await fs.readdir(dir);
    return path.join(dir, files[0]);
}

async function main() {
    const tlsRootCert = await fs.readFile(path.join(cryptoPath, 'peers', peerHostAlias, 'tls', 'ca.crt'));
    const client = new grpc.Client(peerEndpoint, grpc.credentials.createSsl(tlsRootCert), {
        'grpc.ssl_target_name_override': peerHostAlias,
    });
    const userDir = path.join(cryptoPath, 'users', 'User1@org1.example.com', 'msp');
    const credentials = await fs.readFile(await firstFile(path.join(userDir, 'signcerts')));
    const privateKey = crypto.createPrivateKey(await fs.readFile(await firstFile(path.join(userDir, 'keystore'))));
    const gateway = connect({
        client,
        identity: { mspId: 'Org1MSP', credentials },
        signer: signers.newPrivateKeySigner(privateKey),
        hash: hash.sha256,
        evaluateOptions: () => ({ deadline: Date.now() + 10000 }),
        endorseOptions: () => ({ deadline: Date.now() + 20000 }),
        submitOptions: () => ({ deadline: Date.now() + 10000 }),
        commitStatusOptions: () => ({ deadline: Date.now() + 60000 }),
    });
    try {
        const network = gateway.getNetwork(channelName);
        const contract = network.getContract(chaincodeName);

        // Writes, each committed VALID; one event per transaction.
        const results = [];
        for (const [k, v] of [['a1', 'x'], ['a2', 'y'], ['a3', 'z'], ['b1', 'w']]) {
            const commit = await contract.submitAsync('Put', { arguments: [k, v] });
            results.push(utf8.decode(commit.getResult()));
            const status = await commit.getStatus();
            check(status.successful, `Put ${k} committed VALID (code ${status.code})`);
        }
        check(results[0] === '{"key":"a1","value":"x"}', 'Put returns its result');

        // Reads.
        check(utf8.decode(await contract.evaluateTransaction('Get', 'a2')) === 'y', 'Get a2 = y');
        check(utf8.decode(await contract.evaluateTransaction('Whoami')) === 'Org1MSP', 'the chaincode sees the creator Org1MSP');

        // Range query [a, b): a1..a3, in order.
        const range = JSON.parse(utf8.decode(await contract.evaluateTransaction('Range', 'a', 'b')));
        check(JSON.stringify(range.map((e) => e.key)) === '["a1","a2","a3"]', 'Range a..b returns a1 a2 a3 in order');
        check(range[2].value === 'z', 'Range returns the values');

        // A range query that pages: more entries than one batch of the peer (100).
        for (let i = 0; i < 3; i++) {
            const batch = [];
            for (let j = 0; j < 50; j++) {
                const n = String(i * 50 + j).padStart(3, '0');
                batch.push(contract.submitAsync('Put', { arguments: [`p${n}`, n] }));
            }
            const commits = await Promise.all(batch);
            for (const c of commits) {
                const s = await c.getStatus();
                if (!s.successful) {
                    throw new Error(`Put p… failed with code ${s.code}`);
                }
            }
        }
        const paged = JSON.parse(utf8.decode(await contract.evaluateTransaction('Range', 'p', 'q')));
        check(paged.length === 150 && paged[0].key === 'p000' && paged[149].key === 'p149', 'a range of 150 entries pages through QUERY_STATE_NEXT');

        // A range query inside a submitted transaction commits VALID.
        const rangeCommit = await contract.submitAsync('Range', { arguments: ['a', 'b'] });
        check((await rangeCommit.getStatus()).successful, 'a submitted range query commits VALID');

        // Phantom reads: a range query endorsed, then a key inserted into its range commits
        // first: the range's transaction is PHANTOM_READ_CONFLICT (12). A range the insert
        // does not touch stays VALID.
        const inRange = await contract.newProposal('Range', { arguments: ['a', 'b'] }).endorse();
        const outOfRange = await contract.newProposal('Range', { arguments: ['x', 'y'] }).endorse();
        await contract.submitTransaction('Put', 'a5', 'phantom');
        const phantom = await (await inRange.submit()).getStatus();
        check(!phantom.successful && phantom.code === 12, `a range changed before commit is PHANTOM_READ_CONFLICT (code ${phantom.code})`);
        const untouched = await (await outOfRange.submit()).getStatus();
        check(untouched.successful, 'a range nobody wrote into commits VALID');
        // Deleting inside an endorsed range is a phantom too.
        const beforeDelete = await contract.newProposal('Range', { arguments: ['a', 'b'] }).endorse();
        await contract.submitTransaction('Delete', 'a5');
        const deleted = await (await beforeDelete.submit()).getStatus();
        check(deleted.code === 12, `a range whose key was deleted before commit is PHANTOM_READ_CONFLICT (code ${deleted.code})`);

        // Delete, then the key is gone.
        await contract.submitTransaction('Delete', 'a1');
        try {
            await contract.evaluateTransaction('Get', 'a1');
            check(false, 'Get of a deleted key fails');
        } catch (err) {
            check(err instanceof EndorseError || /does not exist/.test(String(err.details?.[0]?.message ?? err.message)), 'Get of a deleted key fails');
        }
        const afterDelete = JSON.parse(utf8.decode(await contract.evaluateTransaction('Range', 'a', 'b')));
        check(JSON.stringify(afterDelete.map((e) => e.key)) === '["a2","a3"]', 'the range no longer holds the deleted key');

        // Read-modify-write.
        await contract.submitTransaction('Move', 'a2', 'c1');
        check(utf8.decode(await contract.evaluateTransaction('Get', 'c1')) === 'y', 'Move wrote c1');

        // An error at endorsement.
        try {
            await contract.submitTransaction('Fail', 'no funds today');
            check(false, 'Fail raises an EndorseError');
        } catch (err) {
            check(err instanceof EndorseError, `Fail raises an EndorseError (${err.constructor.name})`);
            const text = `${err.message} ${JSON.stringify(err.details ?? [])}`;
            check(text.includes('no funds today'), 'the error carries the chaincode\'s message');
        }

        // Events: the Put events from block 0, in order, with their payloads.
        const events = await network.getChaincodeEvents(chaincodeName, { startBlock: BigInt(0) });
        const seen = [];
        try {
            for await (const event of events) {
                seen.push(JSON.parse(utf8.decode(event.payload)));
                if (seen.length === 4) {
                    break;
                }
            }
        } finally {
            events.close();
        }
        check(seen.map((e) => e.key).join(',') === 'a1,a2,a3,b1', 'Put events arrive in order with their payloads');
        console.log('NODE CHAINCODE OK');
    } finally {
        gateway.close();
        client.close();
    }
}

main().catch((err) => {
    console.error(err);
    if (err.details) {
        console.error(JSON.stringify(err.details));
    }
    process.exit(1);
});
