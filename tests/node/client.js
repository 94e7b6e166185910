// A client in another language: Node reaches the Curator service through proto/ alone.
// usage: node client.js HOST:PORT   -> prints one JSON line with what the search returned
"use strict";
const path = require("path");
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");

const definition = loader.loadSync(path.join(__dirname, "..", "..", "proto", "curator", "v1", "curator.proto"), {
  longs: Number, defaults: true,
});
const v1 = grpc.loadPackageDefinition(definition).curator.v1;
const address = process.argv[2];
const credentials = grpc.credentials.createInsecure();
const collections = new v1.Collections(address, credentials);
const vectors = new v1.VectorsService(address, credentials);
const search = new v1.Search(address, credentials);

function call(client, method, request) {
  return new Promise((resolve, reject) => client[method](request, (error, reply) => (error ? reject(error) : resolve(reply))));
}

function pack(rows) {  // float32 little-endian, row-major
  const data = Buffer.alloc(rows.length * rows[0].length * 4);
  rows.flat().forEach((value, i) => data.writeFloatLE(value, 4 * i));
  return { dim: rows[0].length, data };
}

(async () => {
  await call(collections, "Create", { name: "from-node", dim: 3, metric: "l2" });
  const rows = [[0, 0, 0], [1, 0, 0], [0, 2, 0], [5, 5, 5]];
  await call(vectors, "Insert", { collection: "from-node", ids: [10, 11, 12, 13], vectors: pack(rows), tenant: "js", upsert: true });
  const found = await call(search, "Search", { collection: "from-node", query: pack([[0.9, 0.1, 0]]), k: 3, tenant: "js" });
  let code = null;
  try {
    await call(search, "Search", { collection: "from-node", query: pack([[0, 0, 0]]), k: 3, tenant: "nobody" });
  } catch (error) {
    code = error.code;
  }
  console.log(JSON.stringify({ ids: found.ids, distances: found.distances, unknownTenantCode: code }));
})().catch((error) => { console.error(error); process.exit(1); });
