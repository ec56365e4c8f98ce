#!/usr/bin/env python3
"""A MongoDB wire-protocol server that acknowledges writes and stores nothing ("null mongod").

For throughput benchmarks: the client (pymongo: BSON encoding, sockets, batching) pays its real
cost, while the server spends next to no CPU on the shared 2-core machine, as a database on
another host would. Inserts are counted per namespace; `count`/`aggregate` with a `$group`/`$count`
answer from those counts; `find` returns nothing; `create`/`listCollections` remember options.

Usage: null_mongo.py [--port P]   (prints "mongodb://127.0.0.1:P/" once listening)
"""

import argparse
import asyncio
import datetime
import struct

import bson

OP_REPLY, OP_QUERY, OP_MSG = 1, 2004, 2013
HELLO = {
    "ismaster": True,
    "isWritablePrimary": True,
    "maxBsonObjectSize": 16 * 1024 * 1024,
    "maxMessageSizeBytes": 48_000_000,
    "maxWriteBatchSize": 100_000,
    "logicalSessionTimeoutMinutes": 30,
    "minWireVersion": 0,
    "maxWireVersion": 21,
    "readOnly": False,
    "ok": 1.0,
}


class State:
    def __init__(self):
        self.counts = {}  # "db.coll" -> inserted documents
        self.options = {}  # "db.coll" -> create options
        self.indexes = {}  # "db.coll" -> list of index specs
        self.request_id = 0


def count_sequence(data, start, end):
    n, pos = 0, start
    while pos < end:
        pos += struct.unpack_from("<i", data, pos)[0]
        n += 1
    return n


def cursor(ns, batch):
    return {"cursor": {"id": bson.Int64(0), "ns": ns, "firstBatch": batch}, "ok": 1.0}


def answer(state, body, sequences):
    name = next(iter(body))
    db = body.get("$db", "admin")
    value = body[name]
    ns = f"{db}.{value}" if isinstance(value, str) else db
    lname = name.lower()
    if lname in ("hello", "ismaster"):
        return dict(HELLO, localTime=datetime.datetime.now(datetime.timezone.utc), connectionId=1)
    if name == "buildInfo" or name == "buildinfo":
        return {"version": "7.0.0", "versionArray": [7, 0, 0, 0], "ok": 1.0}
    if name == "insert":
        n = sequences.get("documents", len(body.get("documents", [])))
        state.counts[ns] = state.counts.get(ns, 0) + n
        return {"n": n, "ok": 1.0}
    if name in ("update", "delete"):  # acknowledged, nothing changes
        key = "updates" if name == "update" else "deletes"
        n = sequences.get(key, len(body.get(key, [])))
        return {"n": n, "nModified": n, "ok": 1.0} if name == "update" else {"n": n, "ok": 1.0}
    if name == "create":
        state.options[ns] = {
            k: v for k, v in body.items() if k not in ("create", "$db", "lsid", "$clusterTime")
        }
        return {"ok": 1.0}
    if name == "listCollections":
        batch = [
            {
                "name": k.split(".", 1)[1],
                "type": "collection",
                "options": v,
                "info": {"readOnly": False},
            }
            for k, v in state.options.items()
            if k.startswith(db + ".")
        ]
        return cursor(f"{db}.$cmd.listCollections", batch)
    if name == "createIndexes":
        state.indexes.setdefault(ns, []).extend(body.get("indexes", []))
        return {"ok": 1.0, "numIndexesBefore": 1, "numIndexesAfter": 1 + len(state.indexes[ns])}
    if name == "listIndexes":
        return cursor(ns, [{"v": 2, "key": {"_id": 1}, "name": "_id_"}, *state.indexes.get(ns, [])])
    if name == "count":
        return {"n": state.counts.get(ns, 0), "ok": 1.0}
    if name == "aggregate":
        pipeline = body.get("pipeline", [])
        if any("$group" in stage or "$count" in stage for stage in pipeline):
            return cursor(ns, [{"_id": 1, "n": state.counts.get(ns, 0)}])
        return cursor(ns, [])
    if name in ("find", "listDatabases"):
        return cursor(ns, []) if name == "find" else {"databases": [], "ok": 1.0}
    if name in ("drop", "dropDatabase"):
        for k in [
            k
            for k in state.counts
            if k == ns or (name == "dropDatabase" and k.startswith(db + "."))
        ]:
            state.counts.pop(k, None)
            state.options.pop(k, None)
        return {"ok": 1.0}
    return {"ok": 1.0}


async def serve_connection(state, reader, writer):
    try:
        while True:
            header = await reader.readexactly(16)
            length, request_id, _, opcode = struct.unpack("<iiii", header)
            data = await reader.readexactly(length - 16)
            state.request_id += 1
            if opcode == OP_QUERY:
                pos = 4
                pos = data.index(b"\x00", pos) + 1 + 8  # fullCollectionName, skip, return
                size = struct.unpack_from("<i", data, pos)[0]
                query = bson.decode(data[pos : pos + size])
                reply = bson.encode(answer(state, query, {}))
                msg = struct.pack("<iqii", 0, 0, 0, 1) + reply
                writer.write(
                    struct.pack("<iiii", 16 + len(msg), state.request_id, request_id, OP_REPLY)
                    + msg
                )
            elif opcode == OP_MSG:
                flags = struct.unpack_from("<I", data, 0)[0]
                end = len(data) - (4 if flags & 1 else 0)
                pos, body, sequences = 4, None, {}
                while pos < end:
                    kind = data[pos]
                    pos += 1
                    size = struct.unpack_from("<i", data, pos)[0]
                    if kind == 0:
                        body = bson.decode(data[pos : pos + size])
                    else:
                        name_end = data.index(b"\x00", pos + 4)
                        ident = data[pos + 4 : name_end].decode()
                        sequences[ident] = count_sequence(data, name_end + 1, pos + size)
                    pos += size
                reply = answer(state, body or {"ping": 1}, sequences)
                if flags & 2:  # moreToCome: unacknowledged, no reply
                    continue
                payload = struct.pack("<I", 0) + b"\x00" + bson.encode(reply)
                writer.write(
                    struct.pack("<iiii", 16 + len(payload), state.request_id, request_id, OP_MSG)
                    + payload
                )
            else:
                break
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port):
    state = State()
    server = await asyncio.start_server(
        lambda r, w: serve_connection(state, r, w), "127.0.0.1", port
    )
    print(f"mongodb://127.0.0.1:{server.sockets[0].getsockname()[1]}/", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    asyncio.run(main(p.parse_args().port))
