"""The load-test harness, shipped with the package as `curator loadtest`: drive a Curator server
over gRPC like production traffic, find where it breaks, and soak it.

- `workload`: the operations (registered with the server methods they are counted under), their
  mix, Zipf-hot tenants, writes to ids each client owns (`ledger`);
- `driver`: worker processes running closed- or open-loop phases, measured with mergeable
  log-bucket histograms (`histogram`);
- `ramp`, `soak`: the two long procedures; `verify`: reading back every acknowledged write;
- `dataset`, `server`: the data loaded and the server started when no --target is given;
  `data`: the real data sets behind them (GloVe vectors, WordNet or Zipf tenants), which the
  tests and benchmarks/ use too;
- `questions`: what cache_complete asks (repeats that hit, new questions that reach the model);
  `upstream`: the stand-in model (`stand_in_llm`) behind the cache of a server the harness
  starts, or the check that a --target server's cache has a model;
- `gateway_client`: the kept-alive HTTP client of gateway_chat, posting chat completions to the
  server's OpenAI-compatible gateway (a server the harness starts gets `--http-port`);
- `server_metrics`: the server's own request counts, checked against the clients';
- `report`: terminal text, JSON and PNG plots; `cli`: `curator loadtest` / `python -m curator_loadtest`
  (and `python -m benchmarks.load` in a checkout).

Running it needs the `loadtest` extra (`pip install 'curator-db[loadtest]'`: GloVe, pyarrow,
matplotlib, psutil); `curator loadtest -h` does not. It never sends traffic anywhere but the
address it is given (loopback when it starts the server, and the stand-in model then listens on
loopback too), and every phase is bounded in time.
"""
