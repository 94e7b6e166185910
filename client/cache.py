"""The semantic cache over the wire: `curator.connect(...).cache`, the same methods as the
embedded `db.cache` (`curator/cache/api.py`)."""

from curator.cache.api import Cache, Completion, Lookup

from . import cache_calls


class RemoteCache(Cache):
    def __init__(self, run):
        self._run = run

    def lookup(self, tenant, prompt=None, *, embedding=None, category=None, model_settings=None,
               embedding_model=None) -> Lookup:
        return self._run(cache_calls.lookup(tenant, prompt, embedding, category, model_settings, embedding_model))

    def store(self, tenant, prompt, answer, *, embedding=None, category=None, model_settings=None,
              embedding_model=None) -> int:
        return self._run(cache_calls.store(tenant, prompt, answer, embedding, category, model_settings, embedding_model))

    def complete(self, tenant, messages, *, category=None, params=None, embedding=None,
                 embedding_model=None) -> Completion:
        return self._run(cache_calls.complete(tenant, messages, category, params, embedding, embedding_model))

    def invalidate(self, tenant, category=None) -> int:
        return self._run(cache_calls.invalidate(tenant, category))

    def feedback(self, tenant, entry_id, *, correct) -> None:
        self._run(cache_calls.feedback(tenant, entry_id, correct))

    def set_policy(self, category, tenant=None, **changes) -> dict:
        return self._run(cache_calls.set_policy(category, tenant, changes))

    def policy(self, category, tenant=None) -> dict:
        return self._run(cache_calls.policy(category, tenant))

    def train_classifier(self, examples, *, min_similarity=0.0) -> None:
        self._run(cache_calls.train_classifier(examples, min_similarity))

    def classify(self, prompt=None, *, embedding=None) -> tuple[str, float]:
        return self._run(cache_calls.classify(prompt, embedding))

    def stats(self, tenant=None) -> dict:
        return self._run(cache_calls.stats(tenant))
