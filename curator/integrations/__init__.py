"""Curator where applications already are: LangChain and LlamaIndex.

- `langchain`: `CuratorVectorStore`, a LangChain `VectorStore` over a collection, and
  `CuratorSemanticCache`, LangChain's LLM cache (`BaseCache`) backed by `db.cache`;
  pip install 'curator-db[langchain]'.
- `llama_index`: `CuratorVectorStore`, a LlamaIndex `BasePydanticVectorStore`, with LlamaIndex's
  metadata filters mapped onto ours (`to_filter`); pip install 'curator-db[llama-index]'.
- `tenant_collection`: what both stores share: one tenant's documents in a collection, string keys
  mapped onto int64 ids, deletes as revokes; `mmr`, maximal marginal relevance over numpy arrays.

Each framework is imported only by its own module. Both work over the public API
(`curator.api.Collection`, `curator.cache.Cache`), so an embedded database (`curator.open`) and a
server (`curator.connect`, with a tenant's key) serve them alike; nothing here knows gRPC.
"""
