"""The embedded semantic cache: lookups, stores and completions over partitioned HNSW graphs.

Data flow of a lookup: embed the prompt (unless the caller brought an embedding) -> choose the
category (caller, classifier, or default) -> resolve the policy (tenant override, category,
default; relaxed by the upstream's load) -> search the one partition of (tenant, category,
embedding model, model settings) for a few nearest entries -> drop expired ones -> the decision
rule (threshold, ambiguity margin) -> fetch the body of the chosen entry -> near-miss guard -> hit.
Only a hit reads the record store.

Entries of one (tenant, category) form a group sharing the quota; a group's lock covers its
partitions. Eviction picks victims by the policy (LRU or LFU) across the group's partitions.
A tenant's budget over every group (`limits.py`: entries, or its `cache_entries` quota from
`curator/quotas.py` where one is set; bytes; categories) and the answer size limit refuse a store
that would pass them, after what the store evicts.

Entry ids are random 63-bit numbers (a draw meeting a stored entry is drawn again), so that an id
says nothing of how many entries other tenants stored; whatever needs an order uses creation times.
One embedding model has one dimension across the cache (the first stored, or held when a data
directory opens); another is refused naming both.
"""

import contextlib
import hashlib
import json
import math
import secrets
import threading
import time

import numpy as np

from .. import validate
from ..errors import InvalidArgumentError, NotFoundError, ResourceExhaustedError
from .api import Cache, ChatPrompt, Completion, Lookup
from .calibrate import decide, fit_policy
from .classifier import CentroidClassifier
from .economics import Economics
from .embedders import MAX_PROMPT_CHARS, LocalModel
from .flight import SingleFlight
from .guard import check as guard_check
from .limits import Limits
from .load import LoadMonitor, relaxed
from .lookuplog import LookupLog
from .partition import Partition
from .policy import DEFAULT_CATEGORY, Policies, Policy, category_name
from .records import ENTRY, SETTING, MemoryRecords, decode_entry, encode_entry, entry_key
from .upstream import STORABLE_FINISH, Upstream

NEIGHBOURS = 10         # entries compared per lookup (the best, and its rivals for the ambiguity rule)
MAX_EXTRA_BYTES = 4096  # what store_chat keeps beside an answer (the upstream's model, usage, ...), as JSON
SAME_PROMPT = 1 - 1e-4  # the same text embeds to the same vector: candidates for replacing an entry
EXPIRY_SWEEP_EVERY = 256  # stores between sweeps of expired entries
COUNTED_CATEGORIES = 4    # x a tenant's category budget: categories counted apart in its stats
OTHER_CATEGORY = "_other"  # the stats row of a tenant's categories past that
_POLICIES_KEY, _CLASSIFIER_KEY = SETTING + b"policies", SETTING + b"classifier"
_COUNTERS = ("lookups", "hits", "misses", "relaxed_hits", "ambiguous", "near_misses", "false_hits",
             "stores", "evictions", "expirations", "bypassed")
_REASON_COUNTERS = {"ambiguous": "ambiguous", "near_miss": "near_misses", "bypassed": "bypassed"}


class Observer:
    """Where the cache reports events (the server turns them into Prometheus metrics); no-ops here."""

    def lookup(self, category: str, lookup: Lookup, seconds: float) -> None: ...

    def removed(self, category: str, why: str, count: int) -> None: ...


class _Group:
    """The partitions of one (tenant, category) and their shared quota."""

    def __init__(self):
        self.lock = threading.Lock()
        self.partitions: dict[tuple[str, str], Partition] = {}  # (embedding model, settings key) -> partition

    @property
    def live(self) -> int:
        return sum(p.live for p in self.partitions.values())

    @property
    def bytes(self) -> int:
        return sum(p.bytes for p in self.partitions.values())


def settings_key(model_settings: dict | None) -> str:
    """A short stable key of the model settings an answer came from ("" for none)."""
    if not model_settings:
        return ""
    if not isinstance(model_settings, dict):
        raise InvalidArgumentError(f"model_settings must be a mapping, got {type(model_settings).__name__}")
    try:
        canonical = json.dumps(model_settings, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as error:
        raise InvalidArgumentError(f"model_settings must be JSON values: {error}") from None
    return hashlib.blake2b(canonical.encode(), digest_size=8).hexdigest()


def answer_key(answer: str) -> int:
    return int.from_bytes(hashlib.blake2b(answer.encode(), digest_size=8).digest(), "little")


class SemanticCache(Cache):
    def __init__(self, records=None, *, policies: Policies | None = None, embedder=None, upstream: Upstream | None = None,
                 load: LoadMonitor | None = None, economics: Economics | None = None, observer: Observer | None = None,
                 clock=time.time, limits: Limits | None = None):
        self._records = records if records is not None else MemoryRecords()
        self._embedder = embedder if embedder is not None else LocalModel()
        self.upstream = upstream
        self.load = load or LoadMonitor()
        self.economics = economics or Economics()
        self.observer = observer or Observer()
        self._clock = clock
        self.quotas = None  # the database's tenant quotas (`curator.quotas.Quotas`), set by the database
        self.limits = limits or Limits()
        self._lock = threading.Lock()       # the maps below; groups have their own locks
        self._groups: dict[tuple[str, str], _Group] = {}
        self._tenant_groups: dict[str, dict[str, _Group]] = {}  # tenant -> category -> its group (the same)
        self._dims: dict[str, int] = {}  # embedding model -> the one dimension its entries have
        self._budget_locks = [threading.Lock() for _ in range(64)]  # tenant budgets, striped by name
        self._labelled: tuple = (None, None, frozenset())  # (named categories, classifier, labels) memo
        self._counters: dict[tuple[str, str], dict[str, int]] = {}
        self._counter_rows: dict[str, int] = {}  # tenant -> its rows in _counters
        self._flight = SingleFlight()
        self._log = LookupLog()  # lookups and feedback, for calibrate()
        self._stores_since_sweep = 0
        stored = self._records.read_record(_POLICIES_KEY)
        self._policies = policies or (Policies.from_dict(json.loads(stored)) if stored else Policies())
        stored = self._records.read_record(_CLASSIFIER_KEY)
        self._classifier = CentroidClassifier.from_dict(json.loads(stored)) if stored else None
        self._reopen()

    # -- the API -------------------------------------------------------------------------------

    def lookup(self, tenant, prompt=None, *, embedding=None, category=None, model_settings=None,
               embedding_model=None) -> Lookup:
        start = time.perf_counter()
        tenant = validate.name(tenant, "tenant")
        prompt, embedding, model = self._prompt_and_embedding(prompt, embedding, embedding_model)
        return self._timed_lookup(start, tenant, prompt, embedding, model, category, settings_key(model_settings))

    def store(self, tenant, prompt, answer, *, embedding=None, category=None, model_settings=None,
              embedding_model=None) -> int:
        tenant = validate.name(tenant, "tenant")
        if not isinstance(answer, str):
            raise InvalidArgumentError(f"answer must be a string, got {type(answer).__name__}")
        if prompt is None:
            raise InvalidArgumentError("store needs the prompt text (it is returned with hits and used by the guard)")
        prompt, embedding, model = self._prompt_and_embedding(prompt, embedding, embedding_model)
        category, _ = self._category(category, embedding)
        policy, _ = self._policy(tenant, category)
        if not policy.cacheable or policy.max_entries == 0:
            return -1
        return self._store(tenant, category, policy, (model, settings_key(model_settings)), prompt, answer, embedding)

    def complete(self, tenant, messages, *, category=None, params=None, embedding=None,
                 embedding_model=None) -> Completion:
        start = time.perf_counter()
        if self.upstream is None:
            raise InvalidArgumentError("this cache fronts no model: configure an upstream chat-completions URL")
        tenant = validate.name(tenant, "tenant")
        params = dict(params or {})
        prompt, settings = _chat_key(messages, params)
        prompt, embedding, model = self._prompt_and_embedding(prompt, embedding, embedding_model)
        lookup = self._timed_lookup(start, tenant, prompt, embedding, model, category, settings)
        if lookup.hit:
            return Completion(lookup.answer, True, lookup, lookup.entry_id)
        policy, _ = self._policy(tenant, lookup.category)

        def ask_upstream():
            self.load.started()
            seconds = None
            try:
                answer = self.upstream.chat(messages, params)
                seconds = answer.seconds
            finally:
                self.load.finished(seconds)
            self.economics.upstream(lookup.category, answer.seconds)
            entry = -1
            if policy.cacheable and policy.max_entries != 0 and answer.finish_reason in STORABLE_FINISH:
                try:
                    entry = self._store(tenant, lookup.category, policy, (model, settings), prompt, answer.text,
                                        embedding)
                except ResourceExhaustedError:
                    pass  # no room for it (a tenant or category budget, the answer's size): answered uncached
            return answer, entry

        (answer, entry), leader = self._flight.run((tenant, lookup.category, model, settings, prompt), ask_upstream)
        return Completion(answer.text, False, lookup, entry, answer.seconds, shared=not leader,
                          finish_reason=answer.finish_reason)

    def invalidate(self, tenant, category=None) -> int:
        tenant = validate.name(tenant, "tenant")
        with self._lock:
            keys = [key for key in self._groups if key[0] == tenant and (category is None or key[1] == category)]
            groups = [self._groups.pop(key) for key in keys]
            mine = self._tenant_groups.get(tenant, {})
            for _, name in keys:
                mine.pop(name, None)
            if not mine:
                self._tenant_groups.pop(tenant, None)
        removed = []
        for group in groups:
            with group.lock:
                for partition in group.partitions.values():
                    removed.append(partition.remove(partition.live_slots()))
        ids = np.concatenate(removed) if removed else np.empty(0, np.int64)
        self._records.write_records([], [entry_key(i) for i in ids.tolist()])
        return int(ids.size)

    def feedback(self, tenant, entry_id, *, correct) -> None:
        tenant = validate.name(tenant, "tenant")
        value = self._records.read_record(entry_key(entry_id)) if isinstance(entry_id, int) and entry_id >= 0 else None
        meta = decode_entry(value)[0] if value is not None else None
        if meta is None or meta["tenant"] != tenant:  # another tenant's entry is as unknown as a missing one
            raise NotFoundError(f"tenant {tenant!r} has no cache entry {entry_id!r}")
        self._log.feedback(tenant, entry_id, bool(correct))
        if correct:
            return
        self._bump(tenant, meta["category"], "false_hits")
        group = self._group(tenant, meta["category"], create=False)
        if group is not None:
            with group.lock:
                partition = group.partitions.get((meta["model"], meta["settings"]))
                if partition is not None:
                    slots = np.flatnonzero(partition.entry_ids == entry_id)
                    partition.remove(slots)
        self._records.write_records([], [entry_key(entry_id)])

    def set_policy(self, category, tenant=None, **changes) -> dict:
        if tenant is not None:
            validate.name(tenant, "tenant")
        policy = self._policies.set(category, changes, tenant=tenant)
        self._records.write_records([(_POLICIES_KEY, json.dumps(self._policies.as_dict()).encode())])
        return policy.as_dict()

    def policy(self, category, tenant=None) -> dict:
        category = category_name(category)
        configured = self._policies.resolve(tenant or "", category)
        pressure = self.load.pressure()
        effective = relaxed(configured, pressure)
        return {"configured": configured.as_dict(), "effective": effective.as_dict(), "pressure": pressure}

    def policies(self) -> dict:
        return self._policies.as_dict()

    def calibrate(self, tenant=None, *, apply=True) -> dict:
        """Fit each category's min_similarity and ambiguity_margin (`calibrate.fit_policy`) from the
        logged hits that got feedback (`lookuplog.py`); with `apply`, set them (for the tenant's
        categories when a tenant is named). A category whose judged hits were all wrong gets a
        threshold above its highest wrong hit (1.0 at most: only the same prompt). Returns, per
        category, the fitted values and the hits they were fitted on."""
        if tenant is not None:
            tenant = validate.name(tenant, "tenant")
        names, category, best, other, correct = self._log.labelled(tenant)
        if not names:
            return {}
        fitted = fit_policy(category, best, correct, correct, len(names), other=other)
        out = {}
        for k, name in enumerate(names):
            sel = category == k
            threshold = float(min(max(fitted.thresholds[k], -1.0), 1.0))
            margin = float(min(max(fitted.margins[k], 0.0), 2.0))
            out[name] = {"min_similarity": threshold, "ambiguity_margin": margin, "hits": int(sel.sum()),
                         "wrong_hits": int((sel & ~correct).sum())}
            if apply:
                self.set_policy(name, tenant=tenant, min_similarity=threshold, ambiguity_margin=margin)
        return out

    def train_classifier(self, examples, *, min_similarity=0.0) -> None:
        if not isinstance(examples, dict) or not examples:
            raise InvalidArgumentError("examples must map each category to a list of example prompts")
        labels, texts = [], []
        for category, prompts in examples.items():
            category_name(category)
            if not prompts or not all(isinstance(p, str) and p for p in prompts):
                raise InvalidArgumentError(f"category {category!r} needs at least one non-empty example prompt")
            labels += [category] * len(prompts)
            texts += list(prompts)
        classifier = CentroidClassifier.fit(labels, self._embedder.embed(texts), min_similarity)
        self._records.write_records([(_CLASSIFIER_KEY, json.dumps(classifier.as_dict()).encode())])
        self._classifier = classifier

    def classify(self, prompt=None, *, embedding=None) -> tuple[str, float]:
        if self._classifier is None:
            raise InvalidArgumentError("no classifier trained: call train_classifier with example prompts first")
        _, embedding, _ = self._prompt_and_embedding(prompt, embedding, None)
        category, score = self._classifier.classify(embedding)
        return category or DEFAULT_CATEGORY, score

    def stats(self, tenant=None) -> dict:
        with self._lock:
            counters = {key: dict(c) for key, c in self._counters.items() if tenant is None or key[0] == tenant}
            groups = {key: g for key, g in self._groups.items() if tenant is None or key[0] == tenant}
        categories: dict[str, dict] = {}

        def row_of(category):
            return categories.setdefault(category, dict.fromkeys(_COUNTERS, 0) | {"entries": 0, "bytes": 0})

        for (_, category), counts in counters.items():
            row = row_of(category)
            for name, value in counts.items():
                row[name] += value
        for (_, category), group in groups.items():
            row = row_of(category)
            with group.lock:
                row["entries"] += group.live
                row["bytes"] += group.bytes
        totals = {"entries": sum(r["entries"] for r in categories.values()),
                  "bytes": sum(r["bytes"] for r in categories.values())}
        if tenant is not None:
            # only what the tenant's own lookups and stores made: the measured costs and the
            # upstream's load are every tenant's doing (an admin's stats() shows them)
            for row in categories.values():
                row["hit_rate"] = row["hits"] / row["lookups"] if row["lookups"] else 0.0
            return {"categories": categories, **totals, "limits": self.tenant_limits(tenant)}
        economics = self.economics.report()
        for category, row in categories.items():
            row.update(economics.get(category, {}))
        return {"categories": categories, "load": self.load.snapshot(), **totals}

    def tenant_limits(self, tenant: str) -> dict:
        """The tenant's budget: entries (its `cache_entries` quota where one is set), bytes,
        categories, and the largest answer stored."""
        quota = self.quotas.of(tenant).cache_entries if self.quotas is not None else None
        return {"entries": quota if quota is not None else self.limits.tenant_entries,
                "bytes": self.limits.tenant_bytes, "categories": self.limits.tenant_categories,
                "answer_bytes": self.limits.answer_bytes}

    def labelled_categories(self) -> frozenset:
        """Categories an admin named (in policies or the classifier's training) and the default:
        the ones metrics give a label of their own (callers cannot add to them)."""
        named, classifier = self._policies.named_categories(), self._classifier
        memo = self._labelled
        if memo[0] is named and memo[1] is classifier:
            return memo[2]
        labels = named | {DEFAULT_CATEGORY} | frozenset(classifier.categories if classifier is not None else ())
        self._labelled = (named, classifier, labels)
        return labels

    def expire(self) -> int:
        """Remove every entry past its category's TTL, or past its own (`store_chat`'s ttl), now;
        returns how many."""
        now = self._clock()
        pressure = self.load.pressure()
        with self._lock:
            groups = list(self._groups.items())
        total = 0
        for (tenant, category), group in groups:
            ttl = relaxed(self._policies.resolve(tenant, category), pressure).ttl
            with group.lock:
                ids = [p.remove(p.expired(now, ttl)) for p in group.partitions.values()]
            ids = np.concatenate(ids) if ids else np.empty(0, np.int64)
            if ids.size:
                self._records.write_records([], [entry_key(i) for i in ids.tolist()])
                self._bump(tenant, category, "expirations", ids.size)
                self.observer.removed(category, "expired", int(ids.size))
                total += ids.size
        return int(total)

    def entries_of(self, tenant: str) -> int:
        """The tenant's live entries, over every category."""
        return sum(group.live for group in self._groups_of(tenant))

    def _groups_of(self, tenant: str) -> list[_Group]:
        with self._lock:
            return list(self._tenant_groups.get(tenant, {}).values())

    # -- front doors that call the model themselves (server/gateway.py) ------------------------------

    def chat_prompt(self, tenant, messages, *, params=None, category=None, embedding=None,
                    embedding_model=None) -> ChatPrompt:
        """Render, embed and classify chat messages once, keyed exactly as complete() keys them
        (params and system messages make the settings key), for `lookup_chat` and `store_chat`."""
        start = time.perf_counter()
        tenant = validate.name(tenant, "tenant")
        text, settings = _chat_key(messages, params)
        text, embedding, model = self._prompt_and_embedding(text, embedding, embedding_model)
        category, source = self._category(category, embedding)
        return ChatPrompt(tenant, text, embedding, model, settings, category, source, time.perf_counter() - start)

    def lookup_chat(self, prompt: ChatPrompt, *, max_age: float | None = None) -> Lookup:
        """A lookup of a chat prompt; with `max_age`, only entries at most that many seconds old
        may answer (older ones stay, for callers without the limit). Counted and observed as
        lookup() is, the prompt's embedding time included."""
        start = time.perf_counter()
        max_age = _seconds(max_age, "max_age", zero_ok=True)
        policy, base = self._policy(prompt.tenant, prompt.category)
        lookup = self._lookup(prompt.tenant, prompt.category, prompt.category_source, policy, base,
                              (prompt.model, prompt.settings), prompt.text, prompt.embedding, max_age)
        self._count(prompt.tenant, prompt.category, lookup)
        self.observer.lookup(prompt.category, lookup, prompt.seconds + time.perf_counter() - start)
        return lookup

    def store_chat(self, prompt: ChatPrompt, answer: str, *, ttl: float | None = None, extra: dict | None = None,
                   replace: bool = False) -> int:
        """Store a whole answer to a chat prompt; its entry id, or -1 when it was not stored (the
        category is not cacheable, or the answer does not fit the category's or tenant's quota).
        `ttl`: this entry expires sooner than its category's ttl (never later). `extra`: a small
        JSON mapping kept beside the answer and returned with hits (`Lookup.extra`). `replace`:
        first drop the entries stored for the very same prompt (a refreshed answer replaces them)."""
        if not isinstance(answer, str):
            raise InvalidArgumentError(f"answer must be a string, got {type(answer).__name__}")
        ttl = _seconds(ttl, "ttl")
        if extra is not None:
            if not isinstance(extra, dict):
                raise InvalidArgumentError(f"extra must be a mapping, got {type(extra).__name__}")
            try:
                size = len(json.dumps(extra, separators=(",", ":")).encode())
            except (TypeError, ValueError) as error:
                raise InvalidArgumentError(f"extra must be JSON values: {error}") from None
            if size > MAX_EXTRA_BYTES:
                raise InvalidArgumentError(f"extra of {size} bytes as JSON; at most {MAX_EXTRA_BYTES} allowed")
        policy, _ = self._policy(prompt.tenant, prompt.category)
        if not policy.cacheable or policy.max_entries == 0:
            return -1
        if replace:
            self._forget_prompt(prompt)
        fields = {"extra": extra} if extra is not None else {}
        if ttl is not None:
            fields["expires"] = self._clock() + ttl
        try:
            return self._store(prompt.tenant, prompt.category, policy, (prompt.model, prompt.settings), prompt.text,
                               answer, prompt.embedding, fields)
        except ResourceExhaustedError:  # the category's bytes or the tenant's entries: the answer stays uncached
            return -1

    def _forget_prompt(self, prompt: ChatPrompt) -> int:
        """Drop the entries of the prompt's partition stored for exactly its text; how many."""
        group = self._group(prompt.tenant, prompt.category, create=False)
        partition = group.partitions.get((prompt.model, prompt.settings)) if group is not None else None
        if partition is None:
            return 0
        with group.lock:
            slots, similarities = partition.nearest(prompt.embedding, NEIGHBOURS)
            slots = slots[similarities >= SAME_PROMPT]
            ids = partition.entry_ids[slots].tolist()
        same = []
        for slot, entry_id in zip(slots.tolist(), ids):
            value = self._records.read_record(entry_key(entry_id))
            if value is not None and decode_entry(value)[0]["prompt"] == prompt.text:
                same.append((slot, entry_id))
        if not same:
            return 0
        with group.lock:  # each slot still holding the entry read (not removed or reused since)
            gone = partition.remove(np.array([s for s, i in same if partition.entry_ids[s] == i], np.int64))
        self._records.write_records([], [entry_key(i) for i in gone.tolist()])
        return int(gone.size)

    # -- per-tenant archives (curator/tenant_archive.py) ------------------------------------------

    def tenant_entries(self, tenant: str) -> list[tuple[dict, np.ndarray]]:
        """The tenant's entries, oldest first (by creation time, which a restore keeps; entry ids are
        random and order nothing): (category, model, settings, created, prompt, answer) and the
        embedding as stored. Each (tenant, category) is read at one moment."""
        tenant = validate.name(tenant, "tenant")
        ids = []
        for group in self._groups_of(tenant):
            with group.lock:
                ids += [p.entry_ids[p.live_slots()] for p in group.partitions.values()]
        entries = []
        for entry_id in np.concatenate(ids).tolist() if ids else []:
            value = self._records.read_record(entry_key(entry_id))
            if value is not None:  # removed since
                meta, embedding = decode_entry(value, with_embedding=True)
                del meta["tenant"]
                entries.append((entry_id, meta, embedding.copy()))
        entries.sort(key=lambda entry: (entry[1]["created"], entry[0]))  # ties: by id, as a directory reopens
        return [(meta, embedding) for _, meta, embedding in entries]

    def restore_entries(self, tenant: str, entries: list[tuple[dict, np.ndarray]]) -> tuple[int, int]:
        """Store archived entries (as `tenant_entries` gives them) for `tenant`, each keeping its
        category, model, settings key, creation time, prompt, answer and embedding, and where it has
        them what `store_chat` kept beside the answer (`extra`) and the end of its own ttl (`expires`);
        returns (added, skipped). Skipped: an entry the tenant holds already (the same six fields), so
        restoring twice adds nothing, answers over `answer_bytes`, entries whose own ttl has run out,
        and entries of a category not cacheable for the tenant. The category's policy evicts as a
        store would (an archive with more than max_entries or max_bytes keeps its newest) and the tenant's budget (`limits.py`, quota)
        refuses a group that would pass it, whole."""
        tenant = validate.name(tenant, "tenant")
        held = {_identity(meta) for meta, _ in self.tenant_entries(tenant)}
        groups: dict[tuple, list] = {}
        skipped = 0
        now = self._clock()
        for meta, embedding in entries:
            meta, embedding = _restorable(meta, embedding, self._embedder)
            if _identity(meta) in held or len(meta["answer"].encode()) > self.limits.answer_bytes or \
                    meta.get("expires", math.inf) < now:
                skipped += 1
                continue
            held.add(_identity(meta))
            groups.setdefault((meta["category"], meta["model"], meta["settings"]), []).append((meta, embedding))
        added = 0
        for (category, model, settings), group_entries in groups.items():
            policy, _ = self._policy(tenant, category)
            kept = _newest_within(group_entries, policy) if policy.cacheable else []
            skipped += len(group_entries) - len(kept)
            if kept:
                added += self._restore_group(tenant, category, policy, (model, settings), kept)
        return added, skipped

    def _restore_group(self, tenant, category, policy: Policy, key, entries) -> int:
        records = [encode_entry({"tenant": tenant, **meta}, embedding) for meta, embedding in entries]
        sizes = np.array([len(r) for r in records], np.int64)
        embeddings = np.stack([embedding for _, embedding in entries])
        self._check_dim(key[0], embeddings.shape[1])
        group = self._category_group(tenant, category)
        with group.lock:
            partition = self._partition(group, key, embeddings.shape[1])
            ids = np.array(self._new_ids(len(entries)), np.int64)
            evicted = self._victims(group, policy, extra_entries=len(entries), extra_bytes=int(sizes.sum()))
            with self._budget(tenant, group, len(entries) - sum(slots.size for _, slots in evicted),
                              int(sizes.sum()) - sum(int(p.nbytes[slots].sum()) for p, slots in evicted)):
                self._register_dim(key[0], embeddings.shape[1])
                evicted_ids = [p.remove(slots) for p, slots in evicted]
                self._records.write_records([(entry_key(i), r) for i, r in zip(ids.tolist(), records)],
                                            [entry_key(i) for removed in evicted_ids for i in removed.tolist()])
                partition.add(ids, embeddings, np.array([meta["created"] for meta, _ in entries], np.float64), sizes,
                              np.array([answer_key(meta["answer"]) for meta, _ in entries], np.uint64),
                              np.array([meta.get("expires", np.inf) for meta, _ in entries], np.float64))
        self._count_evicted(tenant, category, evicted_ids)
        return len(entries)

    @property
    def memory_bytes(self) -> int:
        with self._lock:
            groups = list(self._groups.values())
        return sum(p.memory_bytes for g in groups for p in list(g.partitions.values()))

    # -- steps ---------------------------------------------------------------------------------

    def _timed_lookup(self, start, tenant, prompt, embedding, model, category, settings) -> Lookup:
        category, source = self._category(category, embedding)
        policy, base = self._policy(tenant, category)
        lookup = self._lookup(tenant, category, source, policy, base, (model, settings), prompt, embedding)
        self._count(tenant, category, lookup)
        self.observer.lookup(category, lookup, time.perf_counter() - start)
        return lookup

    def _lookup(self, tenant, category, source, policy: Policy, base: Policy, key, prompt, embedding,
                max_age=None) -> Lookup:
        other = None  # the best similarity of an entry with another answer than the best's

        def miss(reason, similarity=None):
            return Lookup(False, reason, category, source, policy.min_similarity, similarity, other_similarity=other)

        def searched_miss(reason, similarity=None):  # a miss that cost a search: counts toward break-even
            self.economics.lookup(category, False, time.perf_counter() - search_start)
            return miss(reason, similarity)

        if not policy.cacheable:
            return miss("not_cacheable")
        if policy.auto_bypass and self._bypass(tenant, category):
            return miss("bypassed")
        search_start = time.perf_counter()
        group = self._group(tenant, category, create=False)
        partition = group.partitions.get(key) if group is not None else None
        if partition is None:
            return searched_miss("empty")
        now = self._clock()
        with group.lock:
            slots, similarities = partition.nearest(embedding, NEIGHBOURS)
            if slots.size and policy.ttl is not None:
                stale = now - partition.created[slots] > policy.ttl
                if stale.any():
                    self._expire_slots(tenant, category, partition, slots[stale])
                    slots, similarities = slots[~stale], similarities[~stale]
            if slots.size and max_age is not None:  # older entries are not expired, only not wanted now
                young = now - partition.created[slots] <= max_age
                slots, similarities = slots[young], similarities[young]
            if slots.size == 0:
                return searched_miss("empty")
            best_similarity = float(similarities[0])
            answers = partition.answer_keys[slots]
            chosen = decide(similarities, answers, policy.min_similarity, policy.ambiguity_margin)
            rivals = similarities[answers != answers[int(np.argmax(similarities)) if chosen is None else chosen]]
            other = float(rivals.max()) if rivals.size else None
            if chosen is None:
                reason = "below_threshold" if best_similarity < policy.min_similarity else "ambiguous"
                return searched_miss(reason, best_similarity)
            slot = int(slots[chosen])
            entry_id = int(partition.entry_ids[slot])
            created = float(partition.created[slot])
        fetch_start = time.perf_counter()
        value = self._records.read_record(entry_key(entry_id))
        if value is None:  # removed between the search and the fetch
            return searched_miss("empty", best_similarity)
        meta, _ = decode_entry(value)
        similarity = float(similarities[chosen])
        if meta.get("expires") is not None and now > meta["expires"]:  # stored with a ttl of its own
            with group.lock:
                if partition.entry_ids[slot] == entry_id:
                    self._expire_slots(tenant, category, partition, np.array([slot]))
            return searched_miss("expired", similarity)
        if policy.guard and prompt is not None:
            refusal = guard_check(prompt, meta["prompt"])
            if refusal is not None:
                self.economics.lookup(category, False, time.perf_counter() - search_start)
                return Lookup(False, f"near_miss:{refusal.reason}", category, source, policy.min_similarity,
                              similarity, cached_prompt=meta["prompt"], other_similarity=other, why=refusal.detail)
        self.economics.lookup(category, True, fetch_start - search_start, time.perf_counter() - fetch_start)
        with group.lock:
            if partition.entry_ids[slot] == entry_id:
                partition.touch(slot, now)
        return Lookup(True, "hit", category, source, policy.min_similarity, similarity, meta["answer"],
                      meta["prompt"], now - created, entry_id, relaxed=similarity < base.min_similarity,
                      extra=meta.get("extra"), other_similarity=other)

    def _store(self, tenant, category, policy: Policy, key, prompt, answer, embedding, fields=None) -> int:
        answer_bytes = len(answer.encode())
        if answer_bytes > self.limits.answer_bytes:
            raise ResourceExhaustedError(f"answer of {_number(answer_bytes)} bytes (UTF-8); at most "
                                         f"{_number(self.limits.answer_bytes)} are cached (answer_bytes)",
                                         limit="answer_bytes")
        self._check_dim(key[0], embedding.shape[0])
        now = self._clock()
        meta = {"tenant": tenant, "category": category, "model": key[0], "settings": key[1], "created": now,
                "prompt": prompt, "answer": answer, **(fields or {})}
        record = encode_entry(meta, embedding)
        size = len(record)
        if policy.max_bytes is not None and size > policy.max_bytes:
            raise ResourceExhaustedError(f"entry of {size} bytes exceeds category {category!r}'s quota of "
                                         f"{policy.max_bytes} bytes")
        group = self._category_group(tenant, category)
        with group.lock:
            partition = self._partition(group, key, embedding.shape[0])
            (entry_id,) = self._new_ids(1)
            evicted = self._victims(group, policy, extra_entries=1, extra_bytes=size)
            with self._budget(tenant, group, 1 - sum(slots.size for _, slots in evicted),
                              size - sum(int(p.nbytes[slots].sum()) for p, slots in evicted)):
                self._register_dim(key[0], embedding.shape[0])
                evicted_ids = [p.remove(slots) for p, slots in evicted]
                # the record first: a crash between the two leaves a record that reopening restores
                self._records.write_records([(entry_key(entry_id), record)],
                                            [entry_key(i) for ids in evicted_ids for i in ids.tolist()])
                partition.add(np.array([entry_id]), embedding[None, :], np.array([now]), np.array([size]),
                              np.array([answer_key(answer)], np.uint64), np.array([meta.get("expires", np.inf)]))
        self._count_evicted(tenant, category, evicted_ids)
        self._bump(tenant, category, "stores")
        self._stores_since_sweep += 1
        if self._stores_since_sweep >= EXPIRY_SWEEP_EVERY:
            self._stores_since_sweep = 0
            self.expire()
        return entry_id

    @contextlib.contextmanager
    def _budget(self, tenant: str, group: _Group, entries: int, nbytes: int):
        """Refuse a store that would take the tenant past its budget (`limits.py`): `entries` and
        `nbytes` more (after what the store evicts) in `group`, a new category when the group is
        empty. Held while the store adds: two stores of one tenant never pass on the same headroom.
        Counts only the tenant's own groups."""
        with self._budget_locks[hash(tenant) % len(self._budget_locks)]:
            groups = self._groups_of(tenant)
            limits = self.tenant_limits(tenant)
            if group.live == 0:
                held = sum(1 for other in groups if other is not group and other.live > 0)
                if held >= limits["categories"]:
                    self._refuse(f"tenant {tenant!r} holds entries in {held} categories; its quota is "
                                 f"{limits['categories']} (cache_categories)", "cache_categories")
            if entries > 0:
                now = sum(other.live for other in groups)
                if now + entries > limits["entries"]:
                    self._refuse(f"tenant {tenant!r} would hold {_number(now + entries)} cache entries "
                                 f"({_number(now)} now); its quota is {_number(limits['entries'])} (cache_entries)",
                                 "cache_entries")
            if nbytes > 0:
                now = sum(other.bytes for other in groups)
                if now + nbytes > limits["bytes"]:
                    self._refuse(f"tenant {tenant!r} would hold {_number(now + nbytes)} bytes of cache entries "
                                 f"({_number(now)} now); its quota is {_number(limits['bytes'])} (cache_bytes)",
                                 "cache_bytes")
            yield

    def _refuse(self, message: str, limit: str):
        if self.quotas is not None:
            self.quotas.observer.refused(limit)
        raise ResourceExhaustedError(message, limit=limit)

    def _category_group(self, tenant: str, category: str) -> _Group:
        """The (tenant, category) group to store in; a new one only while the tenant holds entries in
        fewer categories than its budget (checked again under the budget's lock as the store adds)."""
        group = self._group(tenant, category, create=False)
        if group is None:
            cap = self.tenant_limits(tenant)["categories"]
            held = sum(1 for other in self._groups_of(tenant) if other.live > 0)
            if held >= cap:
                self._refuse(f"tenant {tenant!r} holds entries in {held} categories; its quota is {cap} "
                             f"(cache_categories)", "cache_categories")
            group = self._group(tenant, category, create=True)
        return group

    def _new_ids(self, n: int) -> list[int]:
        """n random 63-bit entry ids that no stored entry has."""
        ids: list[int] = []
        while len(ids) < n:
            entry_id = secrets.randbits(63)
            if entry_id not in ids and self._records.read_record(entry_key(entry_id)) is None:
                ids.append(entry_id)
        return ids

    @staticmethod
    def _partition(group: _Group, key, dim: int) -> Partition:
        """The group's partition of (model, settings) `key`, made for `dim` if new (the caller holds
        the group's lock). Two first stores of a model with different dimensions can both pass
        `_check_dim`; the one that finds the other's partition is refused here."""
        partition = group.partitions.get(key)
        if partition is None:
            partition = group.partitions[key] = Partition(dim)
        elif partition.dim != dim:
            raise InvalidArgumentError(f"embedding of dimension {dim} given; this cache's entries for model "
                                       f"{key[0]!r} have dimension {partition.dim}")
        return partition

    def _count_evicted(self, tenant: str, category: str, evicted_ids: list) -> None:
        n = sum(ids.size for ids in evicted_ids)
        if n:
            self._bump(tenant, category, "evictions", n)
            self.observer.removed(category, "evicted", n)

    def _check_dim(self, model: str, dim: int) -> None:
        known = self._dims.get(model)
        if known is not None and known != dim:
            raise InvalidArgumentError(f"embedding of dimension {dim} for model {model!r}; this cache's {model!r} "
                                       f"embeddings have dimension {known} (one dimension per embedding model)")

    def _register_dim(self, model: str, dim: int) -> None:
        with self._lock:
            known = self._dims.setdefault(model, dim)
        if known != dim:  # another dimension stored first, since this store checked
            self._check_dim(model, dim)

    @staticmethod
    def _victims(group: _Group, policy: Policy, extra_entries: int, extra_bytes: int) -> list:
        """(partition, slots) to evict so the group fits its quota with one more entry."""
        over_entries = 0 if policy.max_entries is None else group.live + extra_entries - policy.max_entries
        over_bytes = 0 if policy.max_bytes is None else group.bytes + extra_bytes - policy.max_bytes
        if over_entries <= 0 and over_bytes <= 0:
            return []
        partitions = list(group.partitions.values())
        candidates = []  # (ordering keys, slot, bytes, owner) of every live entry
        for owner, partition in enumerate(partitions):
            slots = partition.live_slots()
            primary = partition.uses[slots] if policy.eviction == "lfu" else partition.last_used[slots]
            candidates.append((primary.astype(np.float64), partition.last_used[slots], slots,
                               partition.nbytes[slots], np.full(slots.size, owner)))
        primary, secondary, slots, sizes, owners = (np.concatenate(c) for c in zip(*candidates))
        order = np.lexsort((secondary, primary))
        freed_entries = np.arange(1, order.size + 1)
        freed_bytes = np.cumsum(sizes[order])
        enough = (freed_entries >= over_entries) & (freed_bytes >= over_bytes)
        n = int(np.argmax(enough)) + 1 if enough.any() else order.size
        chosen = order[:n]
        return [(partitions[o], slots[chosen][owners[chosen] == o]) for o in np.unique(owners[chosen]).tolist()]

    def _expire_slots(self, tenant, category, partition: Partition, slots) -> None:
        ids = partition.remove(slots)
        self._records.write_records([], [entry_key(i) for i in ids.tolist()])
        self._bump(tenant, category, "expirations", ids.size)
        self.observer.removed(category, "expired", int(ids.size))

    def _prompt_and_embedding(self, prompt, embedding, embedding_model):
        if prompt is not None:
            if not isinstance(prompt, str) or not prompt.strip():
                raise InvalidArgumentError("prompt must be a non-empty string")
            if len(prompt) > MAX_PROMPT_CHARS:
                raise ResourceExhaustedError(f"prompt of {len(prompt)} characters; at most {MAX_PROMPT_CHARS} allowed")
        if embedding is None:
            if prompt is None:
                raise InvalidArgumentError("give the prompt text, its embedding, or both")
            if embedding_model is not None and embedding_model != self._embedder.name:
                raise InvalidArgumentError(f"this cache embeds text with {self._embedder.name!r}; for "
                                           f"{embedding_model!r} give the embedding")
            return prompt, self._embedder.embed([prompt])[0], self._embedder.name
        vector = np.asarray(embedding, dtype=np.float32)
        if vector.ndim != 1 or vector.size == 0:
            raise InvalidArgumentError(f"embedding must be one vector, got shape {vector.shape}")
        if not np.isfinite(vector).all():
            raise InvalidArgumentError("embedding contains NaN or infinity")
        norm = float(np.linalg.norm(vector))
        if norm == 0.0:
            raise InvalidArgumentError("embedding is all zeros; it has no direction to compare")
        model = embedding_model or self._embedder.name
        if model == self._embedder.name and vector.size != self._embedder.dim:
            raise InvalidArgumentError(f"embedding of dimension {vector.size}; {model} embeddings have "
                                       f"{self._embedder.dim} (name another embedding_model for other models)")
        self._check_dim(model, vector.size)
        return prompt, vector / norm, model

    def _category(self, category, embedding) -> tuple[str, str]:
        if category is not None:
            return category_name(category), "caller"
        if self._classifier is not None:
            chosen, _ = self._classifier.classify(embedding)
            if chosen is not None:
                return chosen, "classifier"
        return DEFAULT_CATEGORY, "default"

    def _policy(self, tenant, category) -> tuple[Policy, Policy]:
        base = self._policies.resolve(tenant, category)
        return relaxed(base, self.load.pressure()), base

    def _group(self, tenant, category, *, create) -> _Group | None:
        with self._lock:
            group = self._groups.get((tenant, category))
            if group is None and create:
                group = self._groups[(tenant, category)] = _Group()
                self._tenant_groups.setdefault(tenant, {})[category] = group
            return group

    def _count(self, tenant, category, lookup: Lookup) -> None:
        self._log.record(tenant, category, lookup.hit, lookup.similarity, lookup.other_similarity, lookup.entry_id)
        reason = lookup.reason.split(":")[0]
        names = ["lookups", "hits" if lookup.hit else "misses"]
        names += ["relaxed_hits"] if lookup.relaxed else []
        names += [_REASON_COUNTERS[reason]] if reason in _REASON_COUNTERS else []
        with self._lock:
            counts = self._row(tenant, category)
            for name in names:
                counts[name] += 1

    def _bump(self, tenant, category, name, by=1) -> None:
        with self._lock:
            self._row(tenant, category)[name] += int(by)

    def _bypass(self, tenant, category) -> bool:
        """Whether the category does not pay for this tenant's lookups, from its own hit rate there
        (another tenant's traffic never bypasses them) and the category's pooled costs."""
        with self._lock:
            counts = self._row(tenant, category)
            searched = counts["lookups"] - counts["bypassed"]
            seen = counts["lookups"]
            hits = counts["hits"]
        return self.economics.should_bypass(category, (searched, hits, seen))

    def _row(self, tenant, category) -> dict[str, int]:
        """The tenant's counters of a category (the caller holds the lock). Lookups may name any
        category, so a tenant gets rows of its own for at most COUNTED_CATEGORIES x its category
        budget; past that, categories no admin named count in its "_other" row."""
        counts = self._counters.get((tenant, category))
        if counts is None:
            rows = self._counter_rows.get(tenant, 0)
            if rows >= COUNTED_CATEGORIES * self.tenant_limits(tenant)["categories"] and \
                    category not in self.labelled_categories():
                category = OTHER_CATEGORY
                counts = self._counters.get((tenant, category))
            if counts is None:
                counts = self._counters[(tenant, category)] = dict.fromkeys(_COUNTERS, 0)
                self._counter_rows[tenant] = rows + 1
        return counts

    def _reopen(self) -> None:
        """Rebuild the partitions from the stored entries (each partition's in creation order, as
        they were stored) and the dimension of each embedding model."""
        rows: dict[tuple, list] = {}
        dims: dict[str, dict[int, int]] = {}  # model -> dimension -> entries
        for key, value in self._records.scan_records(ENTRY):
            meta, embedding = decode_entry(value, with_embedding=True)
            entry_id = int.from_bytes(key[1:], "big")
            by_dim = dims.setdefault(meta["model"], {})
            by_dim[embedding.size] = by_dim.get(embedding.size, 0) + 1
            rows.setdefault((meta["tenant"], meta["category"], meta["model"], meta["settings"]), []).append(
                (entry_id, embedding, meta["created"], len(value), answer_key(meta["answer"]),
                 meta.get("expires", np.inf)))
        # a directory written before the rule may hold one model at two dimensions: the one most of
        # its entries have is the model's; the others stay readable (archives, invalidate)
        self._dims = {model: max(by_dim, key=by_dim.get) for model, by_dim in dims.items()}
        for (tenant, category, model, settings), entries in rows.items():
            entries.sort(key=lambda entry: (entry[2], entry[0]))
            ids, embeddings, created, sizes, answers, expires = zip(*entries)
            group = self._group(tenant, category, create=True)
            partition = group.partitions[(model, settings)] = Partition(len(embeddings[0]), capacity=len(ids))
            partition.add(np.array(ids, np.int64), np.stack(embeddings), np.array(created), np.array(sizes),
                          np.array(answers, np.uint64), np.array(expires, np.float64))


def _number(n: int) -> str:
    return f"{n:,}".replace(",", " ")


def _identity(meta: dict) -> tuple:
    return tuple(meta[name] for name in ("category", "model", "settings", "created", "prompt", "answer"))


def _restorable(meta, embedding, embedder) -> tuple[dict, np.ndarray]:
    """An archived entry checked as a store checks its arguments (an archive may come from anywhere)."""
    if not isinstance(meta, dict):
        raise InvalidArgumentError("a cache entry must be a mapping of its fields")
    texts = ("model", "settings", "prompt", "answer")
    if not all(isinstance(meta.get(name), str) for name in texts) or not meta["model"] or \
            isinstance(meta.get("created"), bool) or not isinstance(meta.get("created"), (int, float)) or \
            not np.isfinite(meta["created"]) or not meta["prompt"].strip() or len(meta["settings"]) > 64:
        raise InvalidArgumentError("a cache entry needs model, settings (<= 64 characters), prompt (non-empty) and "
                                   "answer as strings and created as a finite number")
    if len(meta["prompt"]) > MAX_PROMPT_CHARS:
        raise ResourceExhaustedError(f"prompt of {len(meta['prompt'])} characters; at most {MAX_PROMPT_CHARS} allowed")
    vector = np.asarray(embedding, np.float32)
    if vector.ndim != 1 or not 1 <= vector.size <= validate.MAX_DIM or not np.isfinite(vector).all() or \
            not vector.any():
        raise InvalidArgumentError("a cache entry's embedding must be one finite, non-zero vector")
    if meta["model"] == embedder.name and vector.size != embedder.dim:
        raise InvalidArgumentError(f"embedding of dimension {vector.size}; {embedder.name} embeddings have "
                                   f"{embedder.dim}")
    restored = {"category": category_name(meta.get("category")), "model": meta["model"], "settings": meta["settings"],
                "created": float(meta["created"]), "prompt": meta["prompt"], "answer": meta["answer"]}
    extra, expires = meta.get("extra"), meta.get("expires")
    if extra is not None:  # store_chat's, checked as it checks them
        if not isinstance(extra, dict) or len(json.dumps(extra, separators=(",", ":")).encode()) > MAX_EXTRA_BYTES:
            raise InvalidArgumentError(f"a cache entry's extra must be a JSON object of at most {MAX_EXTRA_BYTES} bytes")
        restored["extra"] = extra
    if expires is not None:
        if isinstance(expires, bool) or not isinstance(expires, (int, float)) or not math.isfinite(expires):
            raise InvalidArgumentError("a cache entry's expires must be a finite number (Unix seconds) or absent")
        restored["expires"] = float(expires)
    return restored, vector


def _newest_within(entries: list, policy: Policy) -> list:
    """The newest of `entries` that fit the policy's max_entries and max_bytes on their own."""
    if policy.max_entries == 0:
        return []
    entries = sorted(entries, key=lambda entry: entry[0]["created"])
    if policy.max_entries is not None:
        entries = entries[-policy.max_entries:]
    if policy.max_bytes is not None:
        sizes = np.array([len(encode_entry(meta, embedding)) for meta, embedding in entries])
        fits = np.cumsum(sizes[::-1])[::-1] <= policy.max_bytes
        entries = [entry for entry, fit in zip(entries, fits.tolist()) if fit]
    return entries


def _seconds(value, name, zero_ok=False) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
            not (value >= 0 if zero_ok else value > 0):
        raise InvalidArgumentError(f"{name} must be a finite number of seconds {'>= 0' if zero_ok else '> 0'} "
                                   f"or None, got {value!r}")
    return float(value)


def _chat_key(messages, params) -> tuple[str, str]:
    """(the prompt matched, the settings key) of chat messages: the params and system messages key the entry."""
    prompt, system = _render(messages)
    params = dict(params or {})
    return prompt, settings_key({**params, "system": system} if system else params)


def _render(messages) -> tuple[str, str]:
    """(the prompt to match: the conversation without system messages, the system messages)."""
    if not isinstance(messages, list) or not messages:
        raise InvalidArgumentError("messages must be a non-empty list of {role, content}")
    prompt, system = [], []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str) or \
                message.get("role") not in ("system", "user", "assistant"):
            raise InvalidArgumentError(f"each message needs a role (system, user or assistant) and text content; "
                                       f"got {message!r:.200}")
        (system if message["role"] == "system" else prompt).append(
            message["content"] if message["role"] == "user" else f"[{message['role']}] {message['content']}")
    if not prompt:
        raise InvalidArgumentError("messages hold no user message to answer")
    return "\n".join(prompt), "\n".join(system)
