/*
 * Interop check: the official Fabric Gateway SDK for Node against the gxd devnet, written
 * the way fabric-samples' asset-transfer-basic/application-gateway-javascript is: a gRPC
 * client with the peer's TLS CA and a host name override, an identity and a signer read
 * from the cryptogen MSP folders, then connect({ client, identity, signer, hash }).
 *
 * Environment:
 *   CRYPTO_PATH    DIR/organizations/peerOrganizations/org1.example.com
 *   PEER_ENDPOINT  host:port of the devnet (default localhost:7051)
 *   CHANNEL_NAME   default gxchannel
 *   CHAINCODE_NAME default gx
 *   RUN_ID         a suffix that keeps ids unique across runs against one ledger
 *   BOOTSTRAPPED_TREASURY  set when the ledger was bootstrapped by an earlier run
 *
 * Prints one "ok <check>" line per check and "INTEROP OK" at the end; exits non-zero on
 * the first failed check.
 */
'use strict';

const grpc = require('@grpc/grpc-js');
const { connect, hash, signers, EndorseError } = require('@hyperledger/fabric-gateway');
const { common, peer } = require('@hyperledger/fabric-protos');
const crypto = require('node:crypto');
const fs = require('node:fs/promises');
const path = require('node:path');

const cryptoPath = process.env.CRYPTO_PATH;
const peerEndpoint = process.env.PEER_ENDPOINT || 'localhost:7051';
const peerHostAlias = 'peer0.org1.example.com';
const channelName = process.env.CHANNEL_NAME || 'gxchannel';
const chaincodeName = process.env.CHAINCODE_NAME || 'gx';
const runId = process.env.RUN_ID || String(Date.now());
const mspId = 'Org1MSP';
const utf8Decoder = new TextDecoder();

function check(condition, message) {
    if (!condition) {
        throw new Error(`check failed: ${message}`);
    }
    console.log(`ok ${message}`);
}

async function firstFile(dir) {
    const files = await fs.readdir(dir);
    if (files.length === 0) {
        throw new Error(`no files in ${dir}`);
    }
    return path.join(dir, files[0]);
}

async function newGrpcConnection() {
    const tlsCertPath = path.join(cryptoPath, 'peers', peerHostAlias, 'tls', 'ca.crt');
    const tlsRootCert = await fs.readFile(tlsCertPath);
    const tlsCredentials = grpc.credentials.createSsl(tlsRootCert);
    return new grpc.Client(peerEndpoint, tlsCredentials, {
        'grpc.ssl_target_name_override': peerHostAlias,
    });
}

async function newIdentity(user) {
    const certPath = await firstFile(path.join(cryptoPath, 'users', `${user}@org1.example.com`, 'msp', 'signcerts'));
    const credentials = await fs.readFile(certPath);
    return { mspId, credentials };
}

async function newSigner(user) {
    const keyPath = await firstFile(path.join(cryptoPath, 'users', `${user}@org1.example.com`, 'msp', 'keystore'));
    const privateKeyPem = await fs.readFile(keyPath);
    const privateKey = crypto.createPrivateKey(privateKeyPem);
    return signers.newPrivateKeySigner(privateKey);
}

async function gatewayFor(client, user) {
    return connect({
        client,
        identity: await newIdentity(user),
        signer: await newSigner(user),
        hash: hash.sha256,
        evaluateOptions: () => ({ deadline: Date.now() + 5000 }),
        endorseOptions: () => ({ deadline: Date.now() + 15000 }),
        submitOptions: () => ({ deadline: Date.now() + 5000 }),
        commitStatusOptions: () => ({ deadline: Date.now() + 60000 }),
    });
}

function json(bytes) {
    return JSON.parse(utf8Decoder.decode(bytes));
}

function txIdsOf(block) {
    const ids = [];
    for (const envelopeBytes of block.getData().getDataList_asU8()) {
        const envelope = common.Envelope.deserializeBinary(envelopeBytes);
        const payload = common.Payload.deserializeBinary(envelope.getPayload_asU8());
        const channelHeader = common.ChannelHeader.deserializeBinary(payload.getHeader().getChannelHeader_asU8());
        ids.push({ txId: channelHeader.getTxId(), type: channelHeader.getType() });
    }
    return ids;
}

async function main() {
    if (!cryptoPath) {
        throw new Error('CRYPTO_PATH is not set');
    }
    const client = await newGrpcConnection();
    const admin = await gatewayFor(client, 'Admin');
    const user = await gatewayFor(client, 'User1');
    try {
        const adminContract = admin.getNetwork(channelName).getContract(chaincodeName);
        const network = user.getNetwork(channelName);
        const contract = network.getContract(chaincodeName);
        let treasury = `treasury-${runId}`;
        const alice = `alice-${runId}`;
        const bob = `bob-${runId}`;
        const submitted = [];

        // Bootstrap is refused for a client identity: an EndorseError carrying the chaincode's message.
        try {
            await contract.submitTransaction('Bootstrap', treasury, '1000');
            check(false, 'Bootstrap as User1 is refused');
        } catch (err) {
            check(err instanceof EndorseError, `Bootstrap as User1 fails with EndorseError (${err.name})`);
            const messages = (err.details || []).map((d) => d.message).join(' | ');
            check(/chaincode response 500, .*admin/.test(messages), `the EndorseError details carry the chaincode message: ${messages}`);
        }

        // submitTransaction: Bootstrap as Admin, then CreateUser and TransferTokens as User1.
        // Against a ledger bootstrapped by an earlier run (BOOTSTRAPPED_TREASURY), Bootstrap
        // must be refused and the existing treasury is used.
        if (process.env.BOOTSTRAPPED_TREASURY) {
            treasury = process.env.BOOTSTRAPPED_TREASURY;
            try {
                await adminContract.submitTransaction('Bootstrap', `again-${runId}`, '1');
                check(false, 'a second Bootstrap is refused');
            } catch (err) {
                const messages = (err.details || []).map((d) => d.message).join(' | ');
                check(err instanceof EndorseError && messages.includes('already bootstrapped'), `a second Bootstrap is refused: ${messages}`);
            }
        } else {
            const bootstrap = adminContract.newProposal('Bootstrap', { arguments: [treasury, '1000000'] });
            const bootstrapTx = await bootstrap.endorse();
            const bootstrapCommit = await bootstrapTx.submit();
            const bootstrapStatus = await bootstrapCommit.getStatus();
            check(bootstrapStatus.successful, `Bootstrap committed VALID in block ${bootstrapStatus.blockNumber}`);
            submitted.push({ txId: bootstrapTx.getTransactionId(), event: 'SystemBootstrapped' });
        }

        for (const [name, args] of [
            ['CreateUser', [alice, JSON.stringify({ country: 'FR', commitment: 'c0ffee' })]],
            ['CreateUser', [bob, JSON.stringify({ country: 'DE', commitment: 'beef' })]],
            ['TransferTokens', [`t1-${runId}`, treasury, alice, '250', 'welcome']],
            ['TransferTokens', [`t2-${runId}`, alice, bob, '100', 'lunch']],
        ]) {
            const proposal = contract.newProposal(name, { arguments: args });
            const transaction = await proposal.endorse();
            const result = json(transaction.getResult());
            const commit = await transaction.submit();
            const status = await commit.getStatus();
            check(status.successful, `${name} ${args[0]} committed VALID (block ${status.blockNumber})`);
            submitted.push({ txId: transaction.getTransactionId(), event: name === 'CreateUser' ? 'UserCreated' : 'TokensTransferred', result });
        }

        // submitTransaction, the one-call form.
        const oneCall = json(await contract.submitTransaction('TransferTokens', `t3-${runId}`, bob, alice, '1', ''));
        check(oneCall.toBalance === '151', `submitTransaction returns the chaincode result (toBalance ${oneCall.toBalance})`);

        // evaluateTransaction: balances.
        const aliceWallet = json(await contract.evaluateTransaction('GetWallet', alice));
        check(aliceWallet.walletId === alice && aliceWallet.balance === '151', `GetWallet ${alice} balance is 151 (${aliceWallet.balance})`);
        const bobWallet = json(await contract.evaluateTransaction('GetWallet', bob));
        check(bobWallet.balance === '99', `GetWallet ${bob} balance is 99 (${bobWallet.balance})`);
        const userRecord = json(await contract.evaluateTransaction('GetUser', alice));
        check(userRecord.profile.country === 'FR', 'GetUser returns the stored profile');

        // A chaincode error at endorsement surfaces as EndorseError; nothing is submitted.
        try {
            await contract.submitTransaction('TransferTokens', `t4-${runId}`, bob, alice, '1000000', '');
            check(false, 'an overdraft is refused');
        } catch (err) {
            check(err instanceof EndorseError, 'an overdraft fails with EndorseError');
            const messages = (err.details || []).map((d) => d.message).join(' | ');
            check(messages.includes('insufficient funds'), `EndorseError details: ${messages}`);
        }
        try {
            await contract.evaluateTransaction('GetWallet', `nobody-${runId}`);
            check(false, 'evaluating a missing wallet fails');
        } catch (err) {
            check(/does not exist/.test(`${err.message} ${(err.details || []).map((d) => d.message).join(' ')}`), 'evaluate errors carry the chaincode message');
        }

        // Chaincode events from block 0: our transactions' events, in submission order.
        const expected = submitted.map((s) => s.txId);
        const events = await network.getChaincodeEvents(chaincodeName, { startBlock: BigInt(0) });
        const seen = [];
        let lastBlock = BigInt(-1);
        try {
            for await (const event of events) {
                check(event.blockNumber >= lastBlock, `event blocks ascend (${event.blockNumber})`);
                lastBlock = event.blockNumber;
                const index = expected.indexOf(event.transactionId);
                if (index >= 0) {
                    const want = submitted[index];
                    check(event.eventName === want.event, `event ${event.eventName} for ${event.transactionId.slice(0, 8)}`);
                    const payload = json(event.payload);
                    check(typeof payload === 'object' && payload !== null, 'event payload is a JSON object');
                    seen.push(event.transactionId);
                }
                if (seen.length === expected.length) {
                    break;
                }
            }
        } finally {
            events.close();
        }
        check(JSON.stringify(seen) === JSON.stringify(expected), 'chaincode events arrive in submission order');

        // Block events from block 0: full blocks, config block first, our transaction ids inside.
        const blocks = await network.getBlockEvents({ startBlock: BigInt(0) });
        const found = new Set();
        let expectedNumber = 0;
        try {
            for await (const block of blocks) {
                const number = Number(block.getHeader().getNumber());
                check(number === expectedNumber, `block ${number} arrives in order`);
                expectedNumber += 1;
                const txs = txIdsOf(block);
                const filter = block.getMetadata().getMetadataList_asU8()[common.BlockMetadataIndex.TRANSACTIONS_FILTER];
                check(filter.length === txs.length, `block ${number} has one validation code per transaction`);
                if (number === 0) {
                    check(txs.length === 1 && txs[0].type === common.HeaderType.CONFIG, 'block 0 is a config block');
                }
                txs.forEach((tx, i) => {
                    if (expected.includes(tx.txId)) {
                        check(filter[i] === peer.TxValidationCode.VALID, `tx ${tx.txId.slice(0, 8)} is VALID in block ${number}`);
                        found.add(tx.txId);
                    }
                });
                if (found.size === expected.length) {
                    break;
                }
            }
        } finally {
            blocks.close();
        }
        check(found.size === expected.length, 'block events contain every submitted transaction id');
        console.log('INTEROP OK');
    } finally {
        admin.close();
        user.close();
        client.close();
    }
}

main().catch((err) => {
    console.error('INTEROP FAILED:', err);
    if (err && err.details) {
        console.error('details:', JSON.stringify(err.details));
    }
    process.exitCode = 1;
});
