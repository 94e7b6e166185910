"""The category-aware semantic cache that fronts LLM serving (see README, "Semantic cache").

`db.cache` (embedded or remote) is a `Cache`: lookup / store / complete / invalidate / feedback,
policies per category and tenant, a category classifier, stats. The engine is `SemanticCache`.
"""

from .api import Cache, ChatPrompt, Completion, Lookup
from .engine import SemanticCache
from .policy import DEFAULT_CATEGORY, Policies, Policy

__all__ = ["Cache", "ChatPrompt", "Completion", "Lookup", "SemanticCache", "Policies", "Policy", "DEFAULT_CATEGORY"]
