/*
 * A small chaincode written with the official fabric-contract-api, served as a chaincode
 * service (`fabric-chaincode-node server --chaincode-address … --chaincode-id …`), so the
 * devnet's peer side of the shim protocol is checked against the official Node shim:
 * state reads and writes, deletes, a range query (paged by the peer), an event, an error.
 */
'use strict';

const { Contract } = require('fabric-contract-api');

class KvContract extends Contract {
    constructor() {
        super('kv');
    }

    /** Writes key = value and emits a `Put` event with both. */
    async Put(ctx, key, value) {
        await ctx.stub.putState(key, Buffer.from(value));
        ctx.stub.setEvent('Put', Buffer.from(JSON.stringify({ key, value })));
        return JSON.stringify({ key, value });
    }

    /** The committed value of key; an error when there is none. */
    async Get(ctx, key) {
        const value = await ctx.stub.getState(key);
        if (!value || value.length === 0) {
            throw new Error(`key ${key} does not exist`);
        }
        return value.toString();
    }

    /** Every (key, value) with start <= key < end, in order, as JSON. */
    async Range(ctx, start, end) {
        const out = [];
        const iterator = await ctx.stub.getStateByRange(start, end);
        let res = await iterator.next();
        while (!res.done) {
            out.push({ key: res.value.key, value: Buffer.from(res.value.value).toString() });
            res = await iterator.next();
        }
        await iterator.close();
        return JSON.stringify(out);
    }

    /** Deletes key (it must exist). */
    async Delete(ctx, key) {
        const value = await ctx.stub.getState(key);
        if (!value || value.length === 0) {
            throw new Error(`key ${key} does not exist`);
        }
        await ctx.stub.deleteState(key);
        return key;
    }

    /** Moves value of `from` to `to` (a read-modify-write). */
    async Move(ctx, from, to) {
        const value = await ctx.stub.getState(from);
        if (!value || value.length === 0) {
            throw new Error(`key ${from} does not exist`);
        }
        await ctx.stub.putState(to, value);
        await ctx.stub.deleteState(from);
        return to;
    }

    /** Always fails with the given message. */
    async Fail(ctx, message) {
        throw new Error(message);
    }

    /** The creator's MSP id, as the shim reads it from the signed proposal. */
    async Whoami(ctx) {
        return ctx.clientIdentity.getMSPID();
    }
}

module.exports.contracts = [KvContract];
